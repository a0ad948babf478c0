"""A SweepSpec becomes Tune objects: the param space, the searcher and the scheduler.

Only the searched leaves enter the param space, as flat dotted keys ("model.num_heads"),
so MLflow params show exactly what varied; search_spaces.config_for_trial merges them back
into the fixed base. Metric and mode go to the searcher and the scheduler only: set on
TuneConfig as well they overwrite OptunaSearch's list and NSGA-II quietly becomes
single-objective.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer
from ray.tune.search.sample import Domain as TuneDomain

from analysis.runs import FAILURE_TAG
from search_spaces.spec import AshaSpec, Domain, SweepSpec

if TYPE_CHECKING:
    from orchestrator.study import StudyPlace

logger = logging.getLogger(__name__)
# The epoch each report carries, not Tune's training_iteration: that counter restarts at 1
# when Tune restarts a trial, while Ray Train resumes it at its checkpoint's epoch.
BUDGET_ATTR = "epoch"
FINISHED_KEY = "test_accuracy"  # only the trainer's final report carries it
FAILED_KEY = FAILURE_TAG  # in the one report of a trial that failed for good
TRIAL_ATTR = "ray_trial_id"  # on each trial of a sweep's study: its Tune (and MLflow) trial id


def tune_domain(d: Domain) -> Any:
    """One spec domain as a Tune domain (a grid is Tune's {"grid_search": [...]} dict)."""
    if d.kind == "choice":
        return tune.choice(list(d.values))
    if d.kind == "grid":
        return tune.grid_search(list(d.values))
    if d.kind == "uniform":
        return tune.uniform(d.low, d.high)
    if d.kind == "loguniform":
        return tune.loguniform(d.low, d.high)
    # Our randint includes `high`; Tune's excludes it.
    return tune.randint(d.low, d.high + 1)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Flat dotted key -> Tune domain; tune.seeds becomes a `seed` grid, so every
    configuration is repeated once per seed."""
    space = {key: tune_domain(d) for key, d in spec.search}
    if spec.tune.seeds:
        space["seed"] = tune.grid_search(list(spec.tune.seeds))
    return space


def describe_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """JSON-able description of a param space (domain class, bounds or categories)."""
    out: dict[str, Any] = {}
    for key, d in sorted(space.items()):
        if isinstance(d, dict) and set(d) == {"grid_search"}:
            out[key] = {"type": "grid_search", "values": list(d["grid_search"])}
        elif isinstance(d, Categorical):
            out[key] = {"type": "Categorical", "categories": list(d.categories)}
        elif isinstance(d, (Float, Integer)):
            out[key] = {
                "type": type(d).__name__,
                "sampler": type(d.get_sampler()).__name__,
                "lower": d.lower,
                "upper": d.upper,
            }
        elif isinstance(d, TuneDomain):
            out[key] = {"type": type(d).__name__}
        else:
            out[key] = {"type": "constant", "value": d}
    return out


class BudgetAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED, not COMPLETE, for a trial stopped before its
    full budget (by ASHA or the sweep's time budget).

    Ray's OptunaSearch tells COMPLETE with the last value for any trial that has a result,
    so an accuracy after 30 of 300 epochs would count as a finished trial and mislead TPE.
    Single objective only: multi-objective studies get no intermediate values and no
    pruning (and ASHA is single-objective anyway). A result carrying `test_accuracy` is
    the trainer's own last report (cct.engine.fit evaluates on test only when it finishes,
    at its last epoch or when max_epochs_without_gain stops it) and counts as complete.
    """

    def __init__(self, *args: Any, full_budget: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._full_budget = full_budget
        self._reported_steps: dict[str, set[int]] = {}

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new:  # the study's trial names its Tune trial, as the MLflow run does
            self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Tune's searcher state on a resume, over a persisted study (orchestrator/study.py).

        Tune's checkpoint wins for which Tune trial is which Optuna trial; the study wins
        for what was told: the pickled storage reopens the journal, which holds every tell
        up to the crash, and a trial told there is never told again (Optuna refuses to
        change a finished trial; Ray logs that and goes on). A trial the study holds as
        RUNNING that the checkpoint does not know was asked after Tune last saved: no Tune
        trial will ever finish it, so it is told FAIL, as Optuna's heartbeat would."""
        super().restore(checkpoint_path)
        if self._storage is None:
            return
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in known:
                self._ot_study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Ray's version reports at training_iteration; ours at the epoch, once per epoch
        # (a restarted trial repeats the epochs since its checkpoint).
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        step = result.get(BUDGET_ATTR)
        if step is None or FAILED_KEY in result:
            return
        if step not in self._reported_steps.setdefault(trial_id, set()):
            try:
                self._ot_trials[trial_id].report(result[self.metric], step)
            except UpdateFinishedTrialError:  # told before a crash Tune's state predates
                self._completed_trials.add(trial_id)  # the study wins
                return
            self._reported_steps[trial_id].add(step)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result and FAILED_KEY in result:  # diverged, unbuildable, out of memory
            super().on_trial_complete(trial_id, result=None, error=True)  # told FAIL
            return
        if not self._cut_short(trial_id, result, error):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        # Tune does not pass the result that made ASHA stop a trial to on_trial_result:
        # report it here, so Optuna keeps it as the pruned trial's value at that step.
        value, step = result.get(self.metric), result[BUDGET_ATTR]
        try:
            if value is not None and step not in self._reported_steps.get(trial_id, ()):
                ot_trial.report(value, step)
            self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)
        except Exception as exc:  # as Ray does: a bad value must not stop the sweep
            logger.warning("could not tell Optuna that trial %s was pruned: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _cut_short(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> bool:
        return (
            self._full_budget is not None
            and not error
            and bool(result)
            and not isinstance(self.metric, list)
            and trial_id in self._ot_trials
            and trial_id not in self._completed_trials
            and FINISHED_KEY not in result
            and result.get(BUDGET_ATTR, self._full_budget) < self._full_budget
        )


def full_budget(spec: SweepSpec) -> int:
    """Epochs a trial runs when nothing stops it: ASHA's max_t, else optim.epochs."""
    if isinstance(spec.tune.scheduler, AshaSpec):
        return spec.tune.scheduler.max_t
    return spec.base.optim.epochs


def make_searcher(
    spec: SweepSpec, study: StudyPlace | None = None
) -> BudgetAwareOptunaSearch | None:
    """OptunaSearch (TPE or NSGA-II, seeded) for the Optuna searchers; None for `random`
    and `grid`, so Tune's own BasicVariantGenerator runs them (grids, repeats, seeds).

    With `study`, the searcher's study is that persisted one (created, and warm-started,
    by orchestrator.study.prepare_study); else it lives in memory and in Tune's state.
    The space is left out here: Tune hands the param space to the searcher."""
    if spec.tune.searcher not in ("optuna-tpe", "optuna-nsga2"):
        return None
    metrics = [name for name, _ in spec.objectives]
    modes = [mode for _, mode in spec.objectives]
    seed = spec.tune.searcher_seed
    if spec.tune.searcher == "optuna-tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    several = len(metrics) > 1
    return BudgetAwareOptunaSearch(
        metric=metrics if several else metrics[0],
        mode=modes if several else modes[0],
        sampler=sampler,
        full_budget=full_budget(spec),
        **({"storage": study.open(), "study_name": study.name} if study else {}),
    )


def make_scheduler(spec: SweepSpec) -> TrialScheduler:
    """FIFO, or ASHA on the (single) objective with one report per epoch."""
    s = spec.tune.scheduler
    if not isinstance(s, AshaSpec):
        return FIFOScheduler()
    metric, mode = spec.objectives[0]
    return ASHAScheduler(
        time_attr=BUDGET_ATTR,
        metric=metric,
        mode=mode,
        grace_period=s.grace_period,
        max_t=s.max_t,
    )
