"""Budgets and the search menu through the Tune objects, without Ray: a constrained search
trains nothing outside its bounds and its sampler sees the infeasible points; the GP sampler's
objective model never fits their placeholder values; CMA-ES, HyperBand and median stopping on
small sweeps. The refusals are in tests/bad_specs (test_sweep_spec.py); the one Ray sweep with a
budget is in test_sweep_e2e.py."""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import optuna._gp.gp as gp
import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Experiment, Trial
from ray.tune.schedulers import HyperBandScheduler, MedianStoppingRule, TrialScheduler

from analysis.runs import FAILURE_MESSAGE_TAG, FAILURE_TAG, OVER_BUDGET, PRICED_OUT_TAG
from cct.config import TrainConfig
from cct.measure import count_macs, count_params, price_config
from cct.models import create_model
from orchestrator import tune_objects
from orchestrator.study import StudyPlace
from orchestrator.tracking import NullTracker
from orchestrator.tune_objects import (
    CONSTRAINT,
    BudgetGate,
    FeasibleGPSampler,
    judge,
    make_scheduler,
    make_searcher,
    param_space,
)
from orchestrator.worker.callbacks import OverBudget, RayCallbacks
from search_spaces import config_for_trial, load_spec
from tests.conftest import local_env, small_sweep_yaml

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_MACS = 1.0e6  # embed_dim 32 and 64 fit (216k, 825k MACs), 128 does not (3.2M)


def _spec(tmp_path, *, search: str, tune: str, extra: str = "", epochs: int = 4):
    text = small_sweep_yaml(
        name="budget",
        epochs=epochs,
        resources="{workers_per_trial: 1}",
        analysis="{blocks: none}",
        search=search,
        tune=tune,
        extra=extra,
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return load_spec(path)


@pytest.fixture
def recorded(monkeypatch):
    """The priced-out runs the gate would log to MLflow: (trial label, message)."""
    runs: list[tuple[str, str]] = []

    def record(client, experiment_id, *, parent_run_id, trial_id, params, price, message):
        runs.append((trial_id, message))
        return trial_id

    monkeypatch.setattr(tune_objects, "priced_out_run", record)
    monkeypatch.setattr(tune_objects, "MlflowClient", lambda uri: None)
    return runs


def _result(spec, config: dict, epochs: int) -> dict:
    """What a finished trial reports: an accuracy that grows with the width, its size."""
    price = price_config(config_for_trial(spec, config))
    acc = 0.5 + config["model.embed_dim"] / 400 - 0.01 * config.get("model.num_heads", 2)
    return {
        "val_accuracy": acc,
        "test_accuracy": acc,
        "epoch": epochs,
        "params": price.params,
        "macs": price.macs,
        "latency_ms": 1.0,
    }


def _run(searcher, spec, gate, n: int, epochs: int = 4) -> list[dict]:
    """n trials, asked and told as Tune would; every configuration asked must be within."""
    searcher.set_search_properties(None, None, param_space(spec))
    trained = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        assert gate.judge(config).within, config  # never trained outside the bounds
        trained.append(config)
        searcher.on_trial_complete(f"t{i}", _result(spec, config, epochs))
    return trained


BUDGET = f"budget: {{max_macs: {MAX_MACS:.1f}}}"
WIDTHS = "{model.embed_dim: {choice: [32, 64, 128]}, model.num_heads: {choice: [2, 4]}}"


@pytest.mark.parametrize(
    "searcher,objectives",
    [("optuna-tpe", "{val_accuracy: max}"), ("optuna-nsga2", "{val_accuracy: max, macs: min}")],
)
def test_constrained_search_trains_nothing_outside_and_its_sampler_sees_why(
    tmp_path, recorded, searcher, objectives
):
    spec = _spec(
        tmp_path,
        search=WIDTHS,
        tune=f"{{searcher: {searcher}, num_samples: 8, objectives: {objectives}}}",
        extra=BUDGET,
    )
    gate = BudgetGate(spec, "sqlite:///unused", "1", "parent")
    s = make_searcher(spec, None, gate)
    trained = _run(s, spec, gate, 8)
    assert {c["model.embed_dim"] for c in trained} <= {32, 64}
    study = s._ot_study
    infeasible = [t for t in study.trials if t.constraints[CONSTRAINT] > 0]
    assert infeasible and len(infeasible) == len(recorded)  # each priced out has its run
    assert all(t.params["model.embed_dim"] == 128 for t in infeasible)
    assert all("macs" in m and "budget.max_macs" in m for _, m in recorded)
    # every trial told carries the constraint (TPE, NSGA-II and GP read it from each one)
    assert all(CONSTRAINT in t.constraints for t in study.trials)
    assert len(study.trials) == 8 + len(infeasible)  # priced out: not counted in num_samples
    if searcher == "optuna-nsga2":  # its real MACs, the placeholder accuracy
        assert infeasible[0].values == [0.0, pytest.approx(3222784)]


def test_gp_objective_model_never_fits_the_infeasible_points(tmp_path, recorded, monkeypatch):
    spec = _spec(
        tmp_path,
        search=WIDTHS,
        tune="{searcher: optuna-gp, num_samples: 13, objectives: {val_accuracy: max}}",
        extra=BUDGET,
    )
    gate = BudgetGate(spec, "sqlite:///unused", "1", "parent")
    s = make_searcher(spec, None, gate)
    assert isinstance(s._sampler, FeasibleGPSampler)
    fits: list[int] = []  # rows of each GP fitted: the objective's first, then the constraint's
    real_fit = gp.fit_kernel_params

    def counting_fit(**kw):
        fits.append(len(kw["X"]))
        return real_fit(**kw)

    monkeypatch.setattr(gp, "fit_kernel_params", counting_fit)
    _run(s, spec, gate, 13)
    study = s._ot_study
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    infeasible = [t for t in complete if t.constraints[CONSTRAINT] > 0]
    assert infeasible, "the GP never saw an infeasible point"
    assert fits, "the GP never fitted a model (fewer than its 10 startup trials?)"
    # each GP round fits the objective on the feasible trials and the constraint on all
    pairs = list(zip(fits[::2], fits[1::2]))
    assert pairs and all(objective < constraint for objective, constraint in pairs)


def test_judge_names_each_bound_broken_and_ignores_unknown_values():
    bounds = {"params": 100.0, "macs": 1000.0, "latency_ms": 2.0}
    v = judge(bounds, {"params": 150, "macs": 900, "latency_ms": math.nan})
    assert v.overrun == pytest.approx(0.5) and not v.within
    assert v.message == "params 150 above budget.max_params 100"
    assert judge(bounds, {"params": 100, "macs": 1000}).within


def test_driver_price_on_the_meta_device_matches_the_built_model():
    cfg = TrainConfig().replace(**{"data.dataset": "cifar10", "model.variant": "cct_7_3x1_32"})
    price = price_config(cfg)
    model = create_model("cct_7_3x1_32", num_classes=10, in_channels=3, img_size=32)
    assert price.params == count_params(model) == 3_760_139  # SPEC's golden number
    assert price.macs == count_macs(model, (3, 32, 32)).without_attn_matmuls


def test_latency_over_the_bound_stops_the_trial_before_its_first_step():
    class Data:
        class train_x:
            device = "cpu"

    info = {"params": 10, "macs": 100, "latency_ms": 7.5, "first_epoch": 1}
    slow = RayCallbacks(NullTracker(), None, Data(), max_latency_ms=5.0)
    with pytest.raises(OverBudget, match="latency_ms 7.5 above budget.max_latency_ms 5"):
        slow.check_budget(info)
    assert slow.measured == {"params": 10.0, "macs": 100.0, "latency_ms": 7.5}
    RayCallbacks(NullTracker(), None, Data(), max_latency_ms=10.0).check_budget(info)
    # a resumed attempt passed the check when it started: noise must not stop it now
    RayCallbacks(NullTracker(), None, Data(), max_latency_ms=5.0).check_budget(
        {**info, "first_epoch": 3}
    )


def test_random_and_grid_skip_what_the_driver_prices_out(tmp_path, recorded):
    spec = _spec(
        tmp_path,
        search="{model.embed_dim: {grid: [32, 64, 128]}, model.num_heads: {grid: [2, 4]}}",
        tune="{searcher: grid, objectives: {val_accuracy: max}}",
        extra=BUDGET,
    )
    gate = BudgetGate(spec, "sqlite:///unused", "1", "parent")
    gen = tune_objects.BudgetedVariantGenerator(gate, max_concurrent=0)
    gen.add_configurations([Experiment("budget", lambda c: None, config=param_space(spec))])
    trials = []
    while (t := gen.next_trial()) is not None:
        trials.append(t)
    assert sorted((t.config["model.embed_dim"], t.config["model.num_heads"]) for t in trials) == [
        (32, 2), (32, 4), (64, 2), (64, 4)
    ]  # fmt: skip
    assert gen.priced_out == len(recorded) == 2


def test_cmaes_searches_a_small_real_space(tmp_path):
    spec = _spec(
        tmp_path,
        search="{optim.lr: {loguniform: [1.0e-4, 1.0e-2]}, optim.weight_decay: "
        "{uniform: [0.0, 0.1]}}",
        tune="{searcher: optuna-cmaes, num_samples: 8, objectives: {val_accuracy: max}}",
    )
    s = make_searcher(spec)
    assert isinstance(s._sampler, optuna.samplers.CmaEsSampler)
    s.set_search_properties(None, None, param_space(spec))
    for i in range(8):
        c = s.suggest(f"t{i}")
        assert 1e-4 <= c["optim.lr"] <= 1e-2 and 0 <= c["optim.weight_decay"] <= 0.1
        acc = 1 - abs(math.log10(c["optim.lr"]) + 3) / 4 - c["optim.weight_decay"]
        s.on_trial_complete(f"t{i}", {"val_accuracy": acc, "test_accuracy": acc, "epoch": 4})
    # the later trials came from the CMA-ES model, not its independent fallback
    assert any(k.startswith("cma:") for t in s._ot_study.trials for k in t.system_attrs)


class _Controller:
    """What the median stopping rule asks of Tune's controller: the trials waiting."""

    def get_live_trials(self) -> list:
        return []


def _trial(i: int) -> Trial:
    return Trial("__fake", config={"i": i}, stub=True, trial_id=f"t{i}")


def test_median_stopping_stops_the_trial_below_the_others_median(tmp_path):
    spec = _spec(
        tmp_path,
        search=WIDTHS,
        tune="{searcher: random, num_samples: 4, objectives: {val_accuracy: max},"
        " scheduler: {median_stopping: {grace_period: 1, min_samples_required: 2}}}",
    )
    rule = make_scheduler(spec)
    assert isinstance(rule, MedianStoppingRule)
    trials = [_trial(i) for i in range(3)]
    decisions = {}
    for epoch in (1, 2, 3):
        for t, acc in zip(trials, (0.9, 0.8, 0.1), strict=True):
            if decisions.get(t.trial_id) == TrialScheduler.STOP:
                continue  # Tune stops it: no more results
            t.status = Trial.RUNNING
            result = {"epoch": epoch, "val_accuracy": acc, "time_total_s": epoch}
            decisions[t.trial_id] = rule.on_trial_result(_Controller(), t, result)
    assert decisions["t2"] == TrialScheduler.STOP
    assert decisions["t0"] == TrialScheduler.CONTINUE


def test_hyperband_brackets_trials_on_the_epoch(tmp_path):
    spec = _spec(
        tmp_path,
        search="{model.embed_dim: {grid: [32, 64]}}",
        tune="{searcher: grid, num_samples: 3, objectives: {val_accuracy: max},"
        " scheduler: {hyperband: {max_t: 9, reduction_factor: 3}}}",
        epochs=9,
    )
    hb = make_scheduler(spec)
    assert isinstance(hb, HyperBandScheduler)
    assert (hb._time_attr, hb._metric, hb._max_t_attr) == ("epoch", "val_accuracy", 9)
    for i in range(6):
        hb.on_trial_add(None, _trial(i))
    assert len(hb._trial_info) == 6  # every trial in a bracket
    assert tune_objects.full_budget(spec) == 9


# --------------------------------------------------------------------------------------
# the one Ray sweep with a budget: TPE under a MAC and a latency bound, median stopping

RAY_SWEEP = small_sweep_yaml(
    name="budget_e2e",
    epochs=2,
    resources="{workers_per_trial: 1, cpus_per_worker: 0.45, max_concurrent_trials: 2}",
    analysis="{blocks: none}",
    search=WIDTHS,
    tune="{searcher: optuna-tpe, num_samples: 2, objectives: {val_accuracy: max},"
    " scheduler: {median_stopping: {grace_period: 1, min_samples_required: 2}}}",
    extra="budget: {max_macs: 5.0e+5, max_latency_ms: 1000.0}",  # only embed_dim 32 fits
)


@pytest.mark.slow
def test_a_budgeted_sweep_trains_only_within_it_and_its_study_holds_the_rest(tmp_path):
    (tmp_path / "sweep.yaml").write_text(RAY_SWEEP)
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
        env=local_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("budget_e2e")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'")
    priced = [r for r in runs if r.data.tags.get(PRICED_OUT_TAG) == "true"]
    trained = [r for r in runs if r.data.tags.get(PRICED_OUT_TAG) != "true"]
    assert priced, "nothing priced out: the test's budget no longer bites"
    for r in priced:  # never trained: no epoch, FAILED with why
        assert r.info.status == "FAILED" and r.data.tags[FAILURE_TAG] == OVER_BUDGET
        assert "budget.max_macs" in r.data.tags[FAILURE_MESSAGE_TAG]
        assert "val_accuracy" not in r.data.metrics and r.data.metrics["macs"] > 5.0e5
    assert len(trained) == 2  # priced-out configurations do not count toward num_samples
    assert all(r.data.metrics["macs"] <= 5.0e5 for r in trained)
    assert all(r.data.metrics["latency_ms"] <= 1000 for r in trained)
    assert f"Budget: {len(priced)} configuration(s) priced out" in out.stdout
    sweep_run = client.search_runs([exp.experiment_id], "tags.role = 'sweep'")[0]
    study = StudyPlace(
        sweep_run.data.tags["optuna_storage"], sweep_run.data.tags["optuna_study"]
    ).load()
    infeasible = [t for t in study.trials if t.constraints[CONSTRAINT] > 0]
    assert len(infeasible) == len(priced)  # the searcher saw every one
