"""A SweepSpec becomes Tune objects: the param space, the searcher and the scheduler.

Only the searched leaves enter the param space, as flat dotted keys ("model.num_heads"),
so MLflow params show exactly what varied; search_spaces.config_for_trial merges them back
into the fixed base. Metric and mode go to the searcher and the scheduler only: set on
TuneConfig as well they overwrite OptunaSearch's list and NSGA-II quietly becomes
single-objective.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import optuna._gp.gp as gp
import optuna._gp.search_space as gp_search_space
import optuna.samplers._gp.sampler as gp_sampler
from mlflow.tracking import MlflowClient
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer
from ray.tune.search.sample import Domain as TuneDomain

from analysis.runs import FAILURE_MESSAGE_TAG, FAILURE_TAG, OVER_BUDGET
from cct.measure import price_config
from orchestrator.tracking import priced_out_run
from search_spaces.spec import (
    AshaSpec,
    Domain,
    HyperBandSpec,
    MedianStopSpec,
    SweepSpec,
    config_for_trial,
)

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


# --------------------------------------------------------------------------------------
# budgets: bounds on params, MACs and latency (README, "Budgets")

CONSTRAINT = "budget"  # the Optuna constraint of every trial of a sweep with a budget
PRICED_OUT_IN_A_ROW = 200  # an Optuna searcher that prices out this many stops the search
# What a searcher is told for an objective a configuration outside the budget never
# measured: the worst value it could have. The constraint-aware samplers never read it
# (TPE and NSGA-II rank infeasible trials by their overrun; FeasibleGPSampler leaves them
# out of the objective's model); it is there because Optuna keeps no COMPLETE trial
# without values.
WORST = {"val_accuracy": 0.0, "latency_ms": math.inf, "macs": math.inf, "params": math.inf}


@dataclass(frozen=True)
class Verdict:
    """A configuration against the budget: `overrun` is the largest relative excess
    (value - bound) / bound over the bounds whose values are known (<= 0: within);
    `message` names each bound broken."""

    values: dict[str, float]
    overrun: float
    message: str

    @property
    def within(self) -> bool:
        return self.overrun <= 0


def judge(bounds: dict[str, float], values: dict[str, Any]) -> Verdict:
    """`values` (params, macs, latency_ms; any subset) against `bounds`."""
    known = {k: float(values[k]) for k in bounds if _finite(values.get(k))}
    overruns = {k: (known[k] - bounds[k]) / bounds[k] for k in known}
    broken = [
        f"{k} {known[k]:.4g} above budget.max_{k} {bounds[k]:.4g}"
        for k, o in overruns.items()
        if o > 0
    ]
    return Verdict(known, max(overruns.values(), default=0.0), "; ".join(broken))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_PRICES: dict[tuple, dict[str, float]] = {}  # (spec hash, params) -> price, per driver


@dataclass(frozen=True)
class BudgetGate:
    """The driver's check of a configuration before it becomes a trial: params and MACs
    priced on the meta device, and a FAILED MLflow run for one priced out. Small and
    picklable: Tune saves the searcher holding it."""

    spec: SweepSpec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    @property
    def bounds(self) -> dict[str, float]:
        return self.spec.budget.bounds()

    def price(self, params: dict[str, Any]) -> dict[str, float]:
        """Params and MACs of the configuration `params` (Tune's flat keys) makes."""
        key = (self.spec.hash, tuple(sorted((k, repr(v)) for k, v in params.items())))
        if key not in _PRICES:
            p = price_config(config_for_trial(self.spec, params))
            _PRICES[key] = {"params": float(p.params), "macs": float(p.macs)}
        return _PRICES[key]

    def judge(self, params: dict[str, Any]) -> Verdict:
        """The configuration against the bounds the driver can price (latency is
        measured in the trial)."""
        if not {"params", "macs"} & set(self.bounds):
            return Verdict({}, 0.0, "")
        return judge(self.bounds, self.price(params))

    def record(self, label: str, params: dict[str, Any], verdict: Verdict) -> None:
        """The MLflow run of a configuration priced out: why, and its price."""
        priced_out_run(
            MlflowClient(self.tracking_uri),
            self.experiment_id,
            parent_run_id=self.parent_run_id,
            trial_id=label,
            params={"searched": dict(params)},
            price=verdict.values,
            message=f"priced out before training: {verdict.message}",
        )
        logger.warning("configuration %s priced out: %s", dict(params), verdict.message)


def placeholder_values(metrics: list[str], measured: dict[str, Any]) -> list[float]:
    """The values told for a trial outside the budget: what was measured, else WORST."""
    return [float(measured[m]) if _finite(measured.get(m)) else WORST[m] for m in metrics]


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

    def __init__(
        self,
        *args: Any,
        full_budget: int | None = None,
        gate: BudgetGate | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._full_budget = full_budget
        self._reported_steps: dict[str, set[int]] = {}
        # With a budget: every trial this searcher tells carries the constraint CONSTRAINT,
        # and a configuration priced out is told at once (never becomes a Tune trial).
        self._gate = gate

    def suggest(self, trial_id: str) -> dict | str | None:
        """A configuration within the budget: one the driver prices out is told to the
        study as infeasible and another is asked for, under the same Tune trial id (so a
        priced-out configuration does not count toward num_samples)."""
        for _ in range(PRICED_OUT_IN_A_ROW):
            new = trial_id not in self._ot_trials
            config = super().suggest(trial_id)
            if not new:
                return config
            # the study's trial names its Tune trial, as the MLflow run does
            self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, trial_id)
            verdict = self._gate.judge(config) if self._gate else None
            if verdict is None or verdict.within:
                return config
            self._price_out(trial_id, config, verdict)
        logger.warning(
            "the last %d configurations asked were all outside the budget: search stopped",
            PRICED_OUT_IN_A_ROW,
        )
        return Searcher.FINISHED

    def _price_out(self, trial_id: str, config: dict, verdict: Verdict) -> None:
        ot_trial = self._ot_trials.pop(trial_id)
        label = f"{trial_id}-priced-{ot_trial.number}"  # the MLflow run's trial_id
        ot_trial.set_user_attr(TRIAL_ATTR, label)
        self._tell_infeasible(ot_trial, verdict)
        self._gate.record(label, config, verdict)

    def _tell_infeasible(self, ot_trial: optuna.Trial, verdict: Verdict) -> None:
        ot_trial.set_constraint(CONSTRAINT, verdict.overrun)
        ot_trial.set_user_attr(OVER_BUDGET, verdict.message)
        values = placeholder_values(self._metrics(), verdict.values)
        self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0])

    def _metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def _constrain(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """Before a trial that ran is told: its constraint, from what it measured."""
        if self._gate is None or trial_id not in self._ot_trials:
            return
        verdict = judge(self._gate.bounds, result or {})
        try:
            self._ot_trials[trial_id].set_constraint(CONSTRAINT, verdict.overrun)
        except UpdateFinishedTrialError:  # told before a crash: the study wins
            pass

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
        if result and result.get(FAILED_KEY) == OVER_BUDGET and self._gate is not None:
            self._over_budget(trial_id, result)  # its latency, measured before training
            return
        if result and FAILED_KEY in result:  # diverged, unbuildable, out of memory
            super().on_trial_complete(trial_id, result=None, error=True)  # told FAIL
            return
        if not error:
            self._constrain(trial_id, result)
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

    def _over_budget(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        verdict = judge(self._gate.bounds, result)
        if verdict.within:  # the trial's own check and ours disagree: it is not trained
            verdict = Verdict(verdict.values, 1e-9, result.get(FAILURE_MESSAGE_TAG, ""))
        try:
            self._tell_infeasible(self._ot_trials[trial_id], verdict)
        except UpdateFinishedTrialError:
            pass
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
    """Epochs a trial runs when nothing stops it: ASHA's or HyperBand's max_t, else
    optim.epochs."""
    if isinstance(spec.tune.scheduler, (AshaSpec, HyperBandSpec)):
        return spec.tune.scheduler.max_t
    return spec.base.optim.epochs


class FeasibleGPSampler(optuna.samplers.GPSampler):
    """Optuna's GP sampler, whose objective model is fitted on the feasible trials only.

    Optuna 5's GPSampler fits the objective's Gaussian process on every COMPLETE trial,
    infeasible ones included: the value told for a configuration never trained (WORST)
    would pull the model down around it. Here the objective's GP sees the feasible trials
    alone, the constraint's GP sees all of them, and the acquisition (log constrained EI,
    or EHVI for several objectives) is Optuna's own. Without a constrained trial, it is
    GPSampler unchanged. Overrides a private method of optuna 5.x (pinned <6; the
    sampler's test fails if it moves)."""

    def _sample_relative_impl(
        self,
        study: optuna.Study,
        completed_trials: list,
        running_trials: list,
        search_space: dict,
    ) -> dict[str, Any]:
        feasible = [all(v <= 0 for v in t.constraints.values()) for t in completed_trials]
        if not any(t.constraints for t in completed_trials) or all(feasible):
            return super()._sample_relative_impl(
                study, completed_trials, running_trials, search_space
            )
        space = gp_search_space.SearchSpace(search_space)
        x = space.get_normalized_params(completed_trials)
        x_running = (
            space.get_normalized_params(running_trials, [t.params for t in running_trials])
            if running_trials
            else None
        )
        sign = np.array(
            [-1.0 if d == optuna.study.StudyDirection.MINIMIZE else 1.0 for d in study.directions]
        )
        mask = np.array(feasible)
        y = np.zeros((len(completed_trials), len(study.directions)))  # infeasible rows: unread
        if mask.any():
            values = sign * np.array(
                [t.values for t in completed_trials if all(v <= 0 for v in t.constraints.values())]
            )
            y[mask] = gp_sampler._standardize_values(values)[0]
        fit_x, fit_y = (x[mask], y[mask]) if mask.any() else (x[:1], y[:1])
        self._gprs_cache_list = None  # the fitted points change with feasibility
        gprs = [
            gp.fit_kernel_params(
                X=fit_x,
                Y=fit_y[:, i],
                is_categorical=space.is_categorical,
                log_prior=self._log_prior,
                minimum_noise=self._minimum_noise,
                gpr_cache=None,
                deterministic_objective=self._deterministic,
            )
            for i in range(y.shape[1])
        ]
        acqf, best = self._get_acqf_and_best_params(completed_trials, gprs, space, x, x_running, y)
        return space.get_unnormalized_param(self._optimize_acqf(acqf, best))


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the sweep file names, seeded. Every trial of a sweep with a
    budget carries its constraint (Optuna 5's Trial.set_constraint), which TPE, NSGA-II
    and the GP sampler read; CMA-ES takes no constraint (refused by the validator)."""
    seed = spec.tune.searcher_seed
    name = spec.tune.searcher
    if name == "optuna-tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "optuna-nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "optuna-gp":
        return FeasibleGPSampler(seed=seed)
    if name == "optuna-cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise ValueError(f"tune.searcher {name!r} is not an Optuna searcher")


class BudgetedVariantGenerator(BasicVariantGenerator):
    """Tune's random and grid generator, skipping the configurations the driver prices out
    of the budget: they are drawn (and count toward num_samples, or use up their grid
    point) but never become trials; each gets its FAILED MLflow run."""

    def __init__(self, gate: BudgetGate, *, max_concurrent: int) -> None:
        super().__init__(max_concurrent=max_concurrent)
        self._gate = gate
        self.priced_out = 0

    def next_trial(self) -> Any:
        while True:
            trial = super().next_trial()
            if trial is None:
                return None
            verdict = self._gate.judge(trial.config)
            if verdict.within:
                return trial
            self._live_trials.discard(trial.trial_id)
            self.priced_out += 1
            self._gate.record(f"{trial.trial_id}-priced", dict(trial.config), verdict)


def make_searcher(
    spec: SweepSpec, study: StudyPlace | None = None, gate: BudgetGate | None = None
) -> BudgetAwareOptunaSearch | None:
    """OptunaSearch (TPE, NSGA-II, GP or CMA-ES, seeded) for the Optuna searchers; None for
    `random` and `grid`, so Tune's own BasicVariantGenerator runs them (grids, repeats,
    seeds).

    With `study`, the searcher's study is that persisted one (created, and warm-started,
    by orchestrator.study.prepare_study); else it lives in memory and in Tune's state.
    With `gate` (a sweep with a budget), configurations are priced before they run.
    The space is left out here: Tune hands the param space to the searcher."""
    if spec.tune.searcher in ("random", "grid"):
        return None
    metrics = [name for name, _ in spec.objectives]
    modes = [mode for _, mode in spec.objectives]
    several = len(metrics) > 1
    return BudgetAwareOptunaSearch(
        metric=metrics if several else metrics[0],
        mode=modes if several else modes[0],
        sampler=make_sampler(spec),
        full_budget=full_budget(spec),
        gate=gate if spec.budget.active else None,
        **({"storage": study.open(), "study_name": study.name} if study else {}),
    )


def make_scheduler(spec: SweepSpec) -> TrialScheduler:
    """FIFO, or ASHA, HyperBand or median stopping on the (single) objective, with one
    report per epoch (the validator refuses them with several objectives)."""
    s = spec.tune.scheduler
    if isinstance(s, str):
        return FIFOScheduler()
    metric, mode = spec.objectives[0]
    common = {"time_attr": BUDGET_ATTR, "metric": metric, "mode": mode}
    if isinstance(s, AshaSpec):
        return ASHAScheduler(**common, grace_period=s.grace_period, max_t=s.max_t)
    if isinstance(s, HyperBandSpec):
        return HyperBandScheduler(**common, max_t=s.max_t, reduction_factor=s.reduction_factor)
    if isinstance(s, MedianStopSpec):
        # hard_stop: a stopped trial ends (its run KILLED, stopped_early=true), as ASHA's do
        return MedianStoppingRule(
            **common,
            grace_period=s.grace_period,
            min_samples_required=s.min_samples_required,
            hard_stop=True,
        )
    raise ValueError(f"tune.scheduler: unknown scheduler {s!r}")
