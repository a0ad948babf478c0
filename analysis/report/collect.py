"""What the sweep report shows, collected from MLflow into plain dataclasses.

    collect(client, experiment=..., sweep_run_id=..., workdir=...) -> SweepData

The sweep's parent run (tag role=sweep: the given one, else the experiment's latest), its
finished trial runs (tag role=trial) with their params, final metrics, tags, per-image
correctness from their logits and optional `shp/summary.json` (refused unless its matrices
came from validation) and `shp_reference/summary.json` (the untrained model's), the split sizes, and every committee run of that sweep (tag
role=committee, see analysis/runs.py): the earliest made with the default settings is the
one judged, with its members' test correctness on the same images.
Everything the user can get wrong (unknown experiment or run, no finished trial) raises
ReportError naming the value; a trial without analysis is kept, with `shp = None`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import runs
from analysis.committee.select import combine
from analysis.shp.summary import ShpSummary, read_summary


class ReportError(Exception):
    """Bad input for the report; the message names the value (CLI: exit 2)."""


@dataclass(frozen=True)
class Trial:
    """One finished trial run: what varied, what it reached, and its SHP summary."""

    run_id: str
    trial_id: str
    arch: dict[str, Any]  # variant, num_heads, head_dim, embed_dim, conv_blocks, depth
    seed: int | None
    metrics: dict[str, float]  # val_accuracy, test_accuracy, macs, params, latency_ms, ...
    tags: dict[str, str]
    shp: ShpSummary | None  # shp/summary.json, None when the trial has no (usable) analysis
    val_correct: np.ndarray | None = field(default=None, compare=False)  # (n_val,) bool
    test_correct: np.ndarray | None = field(default=None, compare=False)  # (n_test,) bool
    shp_refused: str | None = None  # why an existing shp/summary.json was not used
    # shp_reference/summary.json: the same analysis of the untrained model (SNR reference)
    shp_reference: ShpSummary | None = None

    @property
    def name(self) -> str:
        """Short label of the architecture (seeds share it)."""
        return arch_label(self.arch)

    def metric(self, key: str) -> float | None:
        return self.metrics.get(key)


@dataclass(frozen=True)
class Committee:
    """One committee run of the sweep (analysis.committee)."""

    run_id: str
    members: list[dict[str, Any]]  # run_id, architecture, val_accuracy, test_accuracy, ...
    val_accuracy: float
    test_accuracy: float
    gain_over_best: float
    val_accuracy_by_size: list[float]
    tolerance: float | None
    combine: str
    selection: str = "rule"  # "rule" | "hand-picked" | "unknown" (not recorded)
    rule: str = ""
    tolerance_rule: str = ""
    default_settings: bool = False
    judged: bool = False  # the earliest default run: the one the verdict uses
    start_time: int = 0
    val_gain_over_best: float | None = None
    member_test_correct: tuple[np.ndarray, ...] | None = field(default=None, compare=False)
    test_correct: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SweepData:
    experiment: str
    experiment_id: str
    sweep_run_id: str
    sweep_name: str
    trials: list[Trial]  # finished ones, best validation accuracy first
    not_finished: dict[str, int]  # status -> count of trial runs left out
    n_val: int | None
    n_test: int | None
    committee: Committee | None  # the one the verdict reads (see committee_runs)
    committee_runs: tuple[Committee, ...] = ()  # every committee run, earliest first
    # sweep/summary.json, written when the sweep ended (orchestrator.summary); None before
    sweep_summary: dict[str, Any] | None = None
    sweep_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> Trial:
        return self.trials[0]


def arch_label(arch: dict[str, Any]) -> str:
    """Every architectural knob, e.g. "cct_2_3x2_32 4h×16 d64 L2 c1 mlp2 tok1x3 pe:learnable":
    variant, heads × head width, embedding size, depth, conv blocks, MLP ratio, tokenizer
    layers × kernel, positional embedding, and the conv blocks' norm/activation if any."""
    g = arch.get
    label = (
        f"{g('variant')} {g('num_heads')}h×{g('head_dim')} d{g('embed_dim')} L{g('depth')} "
        f"c{g('conv_blocks')} mlp{g('mlp_ratio'):g} tok{g('tokenizer_layers')}x"
        f"{g('tokenizer_kernel')} pe:{g('pos_embedding')}"
        if isinstance(g("mlp_ratio"), (int, float))
        else f"{g('variant')} {g('num_heads')}h×{g('head_dim')} d{g('embed_dim')} "
        f"L{g('depth')} c{g('conv_blocks')}"
    )
    if g("conv_blocks"):
        label += f" {g('conv_block_norm')}/{g('conv_block_act')}"
    return label


def varied_knobs(trials: Sequence[Trial]) -> list[str]:
    """The architecture knobs whose value differs between the trials, in ARCH_KEYS order."""
    keys = dict.fromkeys(k for t in trials for k in t.arch)
    return [k for k in keys if len({repr(t.arch.get(k)) for t in trials}) > 1]


def knob_values(t: Trial, knobs: Sequence[str]) -> tuple:
    """(knob, value) of t for each knob: its place in the sweep's design."""
    return tuple((k, t.arch.get(k)) for k in knobs)


def collect(
    client: MlflowClient,
    *,
    experiment: str | None,
    sweep_run_id: str | None,
    workdir: Path,
) -> SweepData:
    """Everything the report shows except re-measured latency (see report_latency.py)."""
    try:
        exp_id, sweep = runs.find_sweep(client, experiment=experiment, sweep_run_id=sweep_run_id)
    except runs.RunLookupError as e:
        raise ReportError(str(e)) from None
    trial_runs = runs.trial_runs(client, exp_id, sweep.info.run_id)
    finished = [r for r in trial_runs if runs.eligible(r, include_stopped=False)]
    if not finished:
        raise ReportError(
            f"sweep run {sweep.info.run_id} (experiment "
            f"{experiment or client.get_experiment(exp_id).name!r}) has no finished trial "
            f"({len(trial_runs)} trial run(s) in all)"
        )
    not_finished: dict[str, int] = {}
    done = {r.info.run_id for r in finished}
    for r in trial_runs:
        if r.info.run_id not in done:
            not_finished[r.info.status] = not_finished.get(r.info.status, 0) + 1
    trials = [_trial(client, r, workdir) for r in finished]
    trials.sort(key=lambda t: (-(t.metric("val_accuracy") or -1.0), t.run_id))
    best = trials[0]
    n_val, n_test = (
        (len(best.val_correct), len(best.test_correct))
        if best.val_correct is not None and best.test_correct is not None
        else (None, None)
    )
    committees = _committees(client, exp_id, sweep.info.run_id, workdir)
    return SweepData(
        experiment=client.get_experiment(exp_id).name,
        experiment_id=exp_id,
        sweep_run_id=sweep.info.run_id,
        sweep_name=sweep.data.tags.get(runs.SWEEP_TAG, ""),
        trials=trials,
        not_finished=not_finished,
        n_val=n_val,
        n_test=n_test,
        committee=next((c for c in committees if c.judged), None),
        committee_runs=committees,
        sweep_summary=_json_artifact(client, sweep, runs.SWEEP_SUMMARY_ARTIFACT, workdir),
        sweep_metrics=dict(sweep.data.metrics),
    )


def _trial(client: MlflowClient, run: Any, workdir: Path) -> Trial:
    seed = run.data.params.get("seed")
    shp, refused = _shp_summary(client, run, workdir)
    val_correct, test_correct = _correctness(client, run, workdir)
    return Trial(
        run_id=run.info.run_id,
        trial_id=run.data.tags.get(runs.TRIAL_ID_TAG, run.info.run_id[:8]),
        arch=runs.architecture(run.data.params),
        seed=int(seed) if seed not in (None, "None", "") else None,
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        shp=shp,
        val_correct=val_correct,
        test_correct=test_correct,
        shp_refused=refused,
        shp_reference=_reference_summary(client, run, workdir),
    )


def _json_artifact(client: MlflowClient, run: Any, path: str, workdir: Path) -> Any:
    """The JSON file at `path` of the run (a Run, or a run id: see runs.download), or None."""
    try:
        return json.loads(runs.download(client, run, path, workdir).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def _shp_summary(
    client: MlflowClient, run: Any, workdir: Path
) -> tuple[ShpSummary | None, str | None]:
    """(summary, None), or (None, why it was refused); (None, None) without one."""
    doc = _json_artifact(client, run, runs.SHP_SUMMARY_ARTIFACT, workdir)
    if doc is None:
        return None, None
    try:
        summary = read_summary(doc)
    except ValueError as e:
        return None, str(e)
    if not summary.on_validation:
        return None, (
            f"{runs.SHP_SUMMARY_ARTIFACT} has held-out split {summary.heldout!r}, not 'val': "
            "refused (rerun python -m analysis.shp --run-id <run id> on validation)"
        )
    return summary, None


def _reference_summary(client: MlflowClient, run: Any, workdir: Path) -> ShpSummary | None:
    """The untrained reference's summary (analysis/shp/reference.py), None without one."""
    doc = _json_artifact(client, run, runs.SHP_REFERENCE_ARTIFACT, workdir)
    try:
        return None if doc is None else read_summary(doc)
    except ValueError:
        return None


def _logits(client: MlflowClient, run: Any, workdir: Path) -> dict[str, np.ndarray] | None:
    try:
        local = runs.download(client, run, runs.LOGITS_ARTIFACT, workdir)
        with np.load(local, allow_pickle=False) as z:
            return {k: z[k] for k in runs.LOGITS_KEYS}
    except (MlflowException, OSError, KeyError, ValueError):
        return None


def _correctness(
    client: MlflowClient, run: Any, workdir: Path
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-image correctness on validation and test (samples in the logged fixed order)."""
    z = _logits(client, run, workdir)
    if z is None:
        return None, None
    return (
        np.argmax(z["val_logits"], axis=1) == z["val_labels"],
        np.argmax(z["test_logits"], axis=1) == z["test_labels"],
    )


def _committees(
    client: MlflowClient, exp_id: str, sweep_run_id: str, workdir: Path
) -> tuple[Committee, ...]:
    """Every finished committee run with a committee.json, earliest first; the earliest
    made with the default settings is marked `judged` and carries the members' and the
    committee's test correctness (same images, the members' logged logits)."""
    out, judged = [], False
    for run in runs.committee_runs(client, exp_id, sweep_run_id):
        c = _committee(client, run, workdir)
        if c is None:
            continue
        if c.default_settings and not judged:
            judged = True
            c = _with_correctness(client, dataclasses.replace(c, judged=True), workdir)
        out.append(c)
    return tuple(out)


def _committee(client: MlflowClient, run: Any, workdir: Path) -> Committee | None:
    run_id = run.info.run_id
    doc = _json_artifact(client, run, runs.COMMITTEE_JSON, workdir)
    if not doc or not doc.get("members"):
        return None
    params = run.data.params
    selection = params.get("selection") or (
        "hand-picked" if params.get("rule") == "members" else "unknown"
    )
    return Committee(
        run_id=run_id,
        members=list(doc["members"]),
        val_accuracy=float(doc["val_accuracy"]),
        test_accuracy=float(doc["test_accuracy"]),
        gain_over_best=float(doc["gain_over_best"]),
        val_accuracy_by_size=[float(x) for x in doc.get("val_accuracy_by_size", [])],
        tolerance=doc.get("tolerance"),
        combine=str(doc.get("combine", "probs")),
        selection=selection,
        rule=params.get("rule", ""),
        tolerance_rule=params.get("tolerance_rule", "not recorded"),
        default_settings=params.get("default_settings") == "true",
        start_time=int(run.info.start_time or 0),
        val_gain_over_best=doc.get("val_gain_over_best"),
    )


def _with_correctness(client: MlflowClient, c: Committee, workdir: Path) -> Committee:
    """The members' test correctness and the committee's own, from the members' logits
    combined as the committee run did; unchanged when a member's logits are missing."""
    logits = [_logits(client, m["run_id"], workdir) for m in c.members]
    if any(z is None for z in logits):
        return c
    labels = logits[0]["test_labels"]
    if any(not np.array_equal(z["test_ids"], logits[0]["test_ids"]) for z in logits):
        return c
    scores = combine(
        [z["test_logits"] for z in logits], "logits" if c.combine == "logits" else "probs"
    )
    return dataclasses.replace(
        c,
        member_test_correct=tuple(np.argmax(z["test_logits"], 1) == labels for z in logits),
        test_correct=np.argmax(scores, 1) == labels,
    )
