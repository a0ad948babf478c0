"""SweepSpec -> Tune objects, without starting Ray."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.variant_generator import generate_variants

from orchestrator.tune_objects import (
    BudgetAwareOptunaSearch,
    describe_param_space,
    make_scheduler,
    make_searcher,
    param_space,
)
from search_spaces import count_trials, load_spec

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = (
    'python -c "import json; from orchestrator.tune_objects import *; from search_spaces import'
    " load_spec; print(json.dumps(describe_param_space(param_space(load_spec('{name}'))),"
    ' indent=2))" > tests/golden/param_space_{name}.json  # then review the diff by eye'
)


@pytest.mark.parametrize("name", ["quickstart", "cifar100_lsmha", "flowers102"])
def test_param_space_matches_golden(name: str):
    golden = GOLDEN / f"param_space_{name}.json"
    if not golden.exists():
        pytest.fail(f"{golden} is missing; write it with:\n{REGENERATE.format(name=name)}")
    got = describe_param_space(param_space(load_spec(name)))
    assert got == json.loads(golden.read_text()), (
        f"param space changed; if on purpose, regenerate:\n{REGENERATE.format(name=name)}"
    )


def test_only_searched_leaves_as_flat_dotted_keys():
    spec = load_spec(None)
    assert sorted(param_space(spec)) == [k for k, _ in spec.search]


def test_randint_includes_both_bounds():
    spec = load_spec(None, ["search.model.depth={randint: [2, 4]}"])
    draws = param_space(spec)["model.depth"].sample(size=400)
    assert set(draws) == {2, 3, 4}


@pytest.mark.parametrize("name", ["quickstart", "cifar100_conv_substitution"])
def test_tune_generator_runs_the_planned_number_of_trials(name: str):
    spec = load_spec(name)
    variants = [
        cfg for _ in range(spec.tune.num_samples) for _, cfg in generate_variants(param_space(spec))
    ]
    assert len(variants) == count_trials(spec)


def test_seeds_become_a_grid_over_every_configuration():
    spec = load_spec("cifar100_conv_substitution")
    assert param_space(spec)["seed"] == {"grid_search": [0, 1, 2]}
    configs = [cfg for _, cfg in generate_variants(param_space(spec))]
    pairs = {(c["model.conv_blocks"], c["seed"]) for c in configs}
    assert len(pairs) == len(configs) == 15


def test_no_optuna_searcher_for_random_and_grid():
    assert make_searcher(load_spec(None)) is None
    assert make_searcher(load_spec("cifar100_conv_substitution")) is None


def test_tpe_searcher():
    spec = load_spec("flowers102")
    searcher = make_searcher(spec)
    assert isinstance(searcher, OptunaSearch)
    assert searcher.metric == "val_accuracy" and searcher.mode == "max"
    # Tune hands over the param space (TuneConfig carries no metric/mode)
    assert searcher.set_search_properties(None, None, param_space(spec))
    assert isinstance(searcher._ot_study.sampler, optuna.samplers.TPESampler)
    config = searcher.suggest("t1")
    assert set(config) == set(param_space(spec))  # flat dotted keys come back as they went


def test_nsga2_searcher_keeps_every_objective():
    spec = load_spec("cifar100_lsmha")
    searcher = make_searcher(spec)
    assert searcher.metric == ["val_accuracy", "latency_ms"]
    assert searcher.mode == ["max", "min"]
    searcher.set_search_properties(None, None, param_space(spec))
    study = searcher._ot_study
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"val_accuracy": 0.7, "latency_ms": 3.0})
    assert study.trials[0].values == [0.7, 3.0]


def test_searcher_seed_makes_suggestions_repeatable():
    spec = load_spec("flowers102")

    def first_three():
        s = make_searcher(spec)
        s.set_search_properties(None, None, param_space(spec))
        return [s.suggest(f"t{i}") for i in range(3)]

    assert first_three() == first_three()


def test_schedulers():
    assert isinstance(make_scheduler(load_spec(None)), FIFOScheduler)
    asha = make_scheduler(load_spec("flowers102"))
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "epoch"
    assert (asha._metric, asha._mode, asha._max_t) == ("val_accuracy", "max", 300)
    assert min(milestone for milestone, _ in asha._brackets[0]._rungs) == 30  # grace period


# --------------------------------------------------------------------------------------
# trials stopped early reach Optuna as PRUNED


def _tpe_with_asha() -> BudgetAwareOptunaSearch:
    spec = load_spec("flowers102")  # optuna-tpe, ASHA max_t 300
    searcher = make_searcher(spec)
    searcher.set_search_properties(None, None, param_space(spec))
    return searcher


def _state(searcher: BudgetAwareOptunaSearch, number: int) -> optuna.trial.FrozenTrial:
    return searcher._ot_study.trials[number]


def test_trial_stopped_before_full_budget_is_pruned():
    s = _tpe_with_asha()
    s.suggest("stopped")
    s.on_trial_result("stopped", {"val_accuracy": 0.2, "epoch": 29})
    # ASHA stops it at 30: Tune skips on_trial_result for that result and completes it
    s.on_trial_complete("stopped", {"val_accuracy": 0.3, "epoch": 30})
    trial = _state(s, 0)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {29: 0.2, 30: 0.3}
    assert trial.value == 0.3  # Optuna keeps the last intermediate value


def test_trial_at_full_budget_is_complete():
    s = _tpe_with_asha()
    s.suggest("full")
    s.on_trial_result("full", {"val_accuracy": 0.8, "epoch": 299})
    s.on_trial_complete("full", {"val_accuracy": 0.9, "epoch": 300})
    assert _state(s, 0).state == TrialState.COMPLETE
    assert _state(s, 0).value == 0.9


def test_early_stopped_failed_and_repeated_trials():
    s = _tpe_with_asha()
    for t in ("early", "failed"):
        s.suggest(t)
    # the trainer's own early stop: its final report carries test_accuracy
    s.on_trial_complete("early", {"val_accuracy": 0.6, "epoch": 50, "test_accuracy": 0.61})
    s.on_trial_complete("failed", error=True)
    s.on_trial_complete("early", {"val_accuracy": 0.6, "epoch": 50})  # ignored
    assert [t.state for t in s._ot_study.trials] == [TrialState.COMPLETE, TrialState.FAIL]


def test_pruned_state_survives_save_and_restore(tmp_path):
    s = _tpe_with_asha()
    s.suggest("a")
    s.on_trial_complete("a", {"val_accuracy": 0.3, "epoch": 30})
    s.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(load_spec("flowers102"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert [t.state for t in restored._ot_study.trials] == [TrialState.PRUNED]
    assert restored._full_budget == 300


def test_a_trial_that_failed_for_good_is_told_fail():
    # orchestrator.worker.loop's one report of a diverged trial: objectives NaN, the reason
    s = _tpe_with_asha()
    s.suggest("nan")
    record = {"val_accuracy": float("nan"), "failure_reason": "diverged"}
    s.on_trial_result("nan", record)
    s.on_trial_complete("nan", record)
    trial = _state(s, 0)
    assert trial.state == TrialState.FAIL and trial.intermediate_values == {}


# --------------------------------------------------------------------------------------
# budgets in epochs: a trial Tune restarts counts its iterations from 1 again, while Ray
# Train resumes it at its checkpoint's epoch


def _restarted(epochs_before: int, epochs_after: range) -> list[dict]:
    """The results Tune sees of a trial restarted after `epochs_before` epochs, resumed
    from a checkpoint at epoch epochs_after.start - 1."""
    before = [{"epoch": e, "training_iteration": e} for e in range(1, epochs_before + 1)]
    after = [{"epoch": e, "training_iteration": i} for i, e in enumerate(epochs_after, 1)]
    return before + after


def test_asha_rungs_follow_the_epoch_after_a_tune_restart():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    asha = make_scheduler(load_spec("flowers102"))  # grace 30, max_t 300, val_accuracy max
    good, bad = (
        Trial("__fake", trial_id="good", stub=True),
        Trial("__fake", trial_id="bad", stub=True),
    )
    for t in (good, bad):
        asha.on_trial_add(None, t)
    for r in _restarted(0, range(1, 31)):  # good: 0.9 at epoch 30
        assert asha.on_trial_result(None, good, {**r, "val_accuracy": 0.9}) == "CONTINUE"
    # bad: restarted by Tune at epoch 20 and resumed from its epoch-10 checkpoint.
    decisions = {}
    for r in _restarted(20, range(11, 31)):
        decisions[r["epoch"]] = asha.on_trial_result(None, bad, {**r, "val_accuracy": 0.1})
    # Counted in iterations, the second attempt would reach rung 30 only at epoch 40.
    assert decisions[30] == TrialScheduler.STOP
    assert all(d == TrialScheduler.CONTINUE for e, d in decisions.items() if e < 30)


def test_optuna_steps_are_epochs_once_each_after_a_tune_restart():
    s = _tpe_with_asha()
    s.suggest("t")
    for r in _restarted(12, range(11, 16)):
        s.on_trial_result("t", {**r, "val_accuracy": r["epoch"] / 100})
    assert _state(s, 0).intermediate_values == {e: e / 100 for e in range(1, 16)}


def test_a_restored_status_callback_logs_to_this_drivers_store():
    # Tuner.restore unpickles the callback of the first run; its MLflow server may be gone
    # (a resubmitted SLURM job's server has the new job's port).
    import pickle

    from orchestrator.callbacks import MlflowStatusCallback

    old = pickle.dumps(MlflowStatusCallback("http://10.0.0.1:20201", "1", "parent"))
    MlflowStatusCallback.live_tracking_uri = "http://10.0.0.1:20401"
    try:
        assert pickle.loads(old).uri == "http://10.0.0.1:20401"
    finally:
        MlflowStatusCallback.live_tracking_uri = None
    assert pickle.loads(old).uri == "http://10.0.0.1:20201"
