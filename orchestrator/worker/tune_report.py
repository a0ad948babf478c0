"""What the Train controller runs of ours: the callback that passes Ray Train's reports on
to Tune, holding back the one marked HELD. A module of its own that imports nothing but
Tune's callback: the controller (a fresh process per trial) imports the module of every
callback it is given, and orchestrator.trial would cost it mlflow, cct and the spec code
(about a second of CPU per trial on a 2-core machine)."""

from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback

# A report carrying HELD reaches Ray Train (its checkpoint is kept) but not Tune: the last
# epoch's, until the analysis is done, as ASHA stops a trial at its max_t report and the
# analysis would die with it.
HELD = "held_from_tune"


class HoldingTuneReport(TuneReportCallback):
    """TuneReportCallback that keeps back from Tune the reports marked HELD: the last
    epoch's, checkpointed by Ray Train at once, reaches Tune after the analysis (reported
    again without the mark)."""

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not metrics[0].get(HELD):
            super().after_report(run_context, metrics, checkpoint)
