"""The sweep's persisted Optuna study and tune.warm_start, without starting Ray: where the
study lives, the searcher and the random/grid recorder writing it once per trial (across a
save and restore), and a warm start seeding the next sweep or refusing an incompatible one.
The real sweeps of test_sweep_e2e.py and test_sweep_interrupt.py check it after resumes."""

from __future__ import annotations

import pickle
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from analysis import runs
from orchestrator.callbacks import StudyRecorder
from orchestrator.study import (
    WARM_ATTR,
    WarmStartError,
    find_warm_start,
    journal_path,
    new_study_place,
    prepare_study,
)
from orchestrator.tune_objects import TRIAL_ATTR, make_searcher, param_space
from search_spaces import load_spec

SPACE = """
  model.num_heads: {choice: [2, 4]}
  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"""


def _spec(tmp_path: Path, *, name: str = "earlier", search: str = SPACE, tune: str = ""):
    f = tmp_path / f"{name}.yaml"
    f.write_text(
        f"name: {name}\n"
        "base: {model: {variant: cct_2_3x2_32, tokenizer_layers: 1, depth: 2, embed_dim: 32},"
        " data: {dataset: digits}, optim: {epochs: 4}}\n"
        f"search:{search}\n"
        f"tune: {{searcher: optuna-tpe, num_samples: 4{tune}}}\n"
        f"tracking: {{tracking_uri: 'sqlite:///{tmp_path / 'mlflow.db'}'}}\n"
    )
    return load_spec(f)


def _sweep_run(client: MlflowClient, spec) -> str:
    exp = client.get_experiment_by_name(spec.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(spec.experiment)
    tags = {runs.ROLE: runs.SWEEP_ROLE, runs.SWEEP_TAG: spec.name}
    return client.create_run(exp_id, tags=tags).info.run_id


def _searcher(spec, place):
    s = make_searcher(spec, place)
    s.set_search_properties(None, None, param_space(spec))  # as Tune does
    return s


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An earlier TPE sweep's run and study: 2 trials COMPLETE, 1 PRUNED, 1 FAIL."""
    root = tmp_path_factory.mktemp("store")
    spec = _spec(root)
    uri = spec.tracking.tracking_uri
    client = MlflowClient(uri)
    run_id = _sweep_run(client, spec)
    place = new_study_place(client, run_id, spec, uri, root)
    prepare_study(place, spec, None)
    s = _searcher(spec, place)
    for t in "abcd":
        s.suggest(t)
    s.on_trial_complete("a", {"val_accuracy": 0.5, "epoch": 4, "test_accuracy": 0.4})
    s.on_trial_complete("b", {"val_accuracy": 0.7, "epoch": 4, "test_accuracy": 0.6})
    s._full_budget = 4
    s.on_trial_complete("c", {"val_accuracy": 0.2, "epoch": 2})  # stopped early: PRUNED
    s.on_trial_complete("d", error=True)
    return SimpleNamespace(root=root, spec=spec, uri=uri, run_id=run_id, place=place)


# --------------------------------------------------------------------------------------
# where the study is, and who writes it


def test_the_journal_sits_next_to_a_local_store_and_on_the_drivers_disk_for_a_remote_one(
    tmp_path,
):
    assert journal_path(f"sqlite:///{tmp_path}/db/mlflow.db", "e", tmp_path) == (
        tmp_path / "db" / "optuna" / "e.journal"
    )
    assert journal_path(f"file://{tmp_path}/mlruns", "a/b", tmp_path) == (
        tmp_path / "optuna" / "a_b.journal"
    )
    assert journal_path("http://head:5000", "e", tmp_path / "cwd") == (
        tmp_path / "cwd" / "optuna" / "e.journal"
    )


def test_the_sweep_run_names_its_study_and_optuna_loads_it(earlier):
    run = MlflowClient(earlier.uri).get_run(earlier.run_id)
    storage, name = run.data.tags[runs.OPTUNA_STORAGE_TAG], run.data.tags[runs.OPTUNA_STUDY_TAG]
    assert name == f"earlier-{earlier.run_id}" and Path(storage).is_file()
    study = optuna.load_study(
        study_name=name,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    )
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]
    assert [t.user_attrs[TRIAL_ATTR] for t in study.trials] == list("abcd")
    assert study.user_attrs["objectives"] == ["val_accuracy"]


def test_a_restored_searcher_keeps_writing_the_same_study_once_per_trial(earlier, tmp_path):
    spec = _spec(earlier.root, name="restored")
    client = MlflowClient(earlier.uri)
    place = new_study_place(client, _sweep_run(client, spec), spec, earlier.uri, earlier.root)
    prepare_study(place, spec, None)
    s = _searcher(spec, place)
    s.suggest("a")
    s.suggest("b")
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's last save before the driver died
    s.on_trial_complete("a", {"val_accuracy": 0.5, "epoch": 4, "test_accuracy": 0.4})
    s.suggest("lost")  # asked after that save: no Tune trial will finish it
    # the resume: Tune builds the searcher anew, hands it the space, then restores it
    restored = _searcher(spec, place)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a", {"val_accuracy": 0.5, "epoch": 4})  # trial a again
    restored.on_trial_complete("a", {"val_accuracy": 0.5, "epoch": 4, "test_accuracy": 0.4})
    restored.on_trial_complete("b", {"val_accuracy": 0.6, "epoch": 4, "test_accuracy": 0.5})
    study = place.load()
    got = [(t.user_attrs[TRIAL_ATTR], t.state, t.value) for t in study.trials]
    assert got == [
        ("a", TrialState.COMPLETE, 0.5),
        ("b", TrialState.COMPLETE, 0.6),
        ("lost", TrialState.FAIL, None),
    ]


def _tune_trial(trial_id: str, config: dict, last: dict | None):
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last)


def test_random_and_grid_sweeps_record_each_trial_once(earlier, tmp_path):
    spec = load_spec("cifar100_conv_substitution")  # grid over conv_blocks, 3 seeds
    client = MlflowClient(earlier.uri)
    place = new_study_place(client, _sweep_run(client, spec), spec, "http://x", tmp_path)
    prepare_study(place, spec, None)
    rec = pickle.loads(pickle.dumps(StudyRecorder(place, spec)))  # as Tuner.restore does
    done = {"val_accuracy": 0.61, "epoch": 300, "test_accuracy": 0.6}
    rec.on_trial_complete(0, [], _tune_trial("t1", {"model.conv_blocks": 2, "seed": 1}, done))
    rec.on_trial_complete(0, [], _tune_trial("t1", {"model.conv_blocks": 2, "seed": 1}, done))
    stopped = {"val_accuracy": 0.3, "epoch": 30}
    rec.on_trial_complete(0, [], _tune_trial("t2", {"model.conv_blocks": 0, "seed": 0}, stopped))
    diverged = {"val_accuracy": float("nan"), "failure_reason": "diverged"}
    rec.on_trial_complete(0, [], _tune_trial("t3", {"model.conv_blocks": 1, "seed": 2}, diverged))
    rec.on_trial_error(0, [], _tune_trial("t4", {"model.conv_blocks": 3, "seed": 0}, None))
    trials = place.load().trials
    assert [(t.user_attrs[TRIAL_ATTR], t.state) for t in trials] == [
        ("t1", TrialState.COMPLETE),
        ("t2", TrialState.PRUNED),
        ("t3", TrialState.FAIL),
        ("t4", TrialState.FAIL),
    ]
    assert trials[0].params == {"model.conv_blocks": 2, "seed": 1} and trials[0].value == 0.61
    assert trials[1].intermediate_values == {30: 0.3}
    assert trials[0].distributions["seed"] == optuna.distributions.CategoricalDistribution(
        [0, 1, 2]
    )


# --------------------------------------------------------------------------------------
# tune.warm_start


@pytest.mark.parametrize("by", ["experiment", "run id"])
def test_a_warm_start_seeds_the_new_searcher_with_the_finished_trials(earlier, by, tmp_path):
    name = "earlier" if by == "experiment" else earlier.run_id
    spec = _spec(earlier.root, name=f"next-{by.replace(' ', '')}", tune=f", warm_start: {name}")
    warm = find_warm_start(spec, earlier.uri, fresh=False)
    assert warm.sweep_run_id == earlier.run_id
    assert [t.user_attrs[TRIAL_ATTR] for t in warm.trials] == ["a", "b", "c"]  # not FAIL
    client = MlflowClient(earlier.uri)
    run_id = _sweep_run(client, spec)
    place = new_study_place(client, run_id, spec, earlier.uri, earlier.root)
    assert prepare_study(place, spec, warm) == 3
    assert prepare_study(place, spec, warm) == 0  # a resume copies nothing again
    s = _searcher(spec, place)
    seeded = s._ot_study.trials
    assert [(t.state, t.value) for t in seeded] == [
        (TrialState.COMPLETE, 0.5),
        (TrialState.COMPLETE, 0.7),
        (TrialState.PRUNED, 0.2),
    ]
    assert all(t.user_attrs[WARM_ATTR] == earlier.run_id for t in seeded)
    # the very distributions the searcher asks with, so TPE learns from the seeded trials
    assert all(t.distributions == s._space for t in seeded)
    assert [t.params for t in seeded] == [t.params for t in warm.trials]
    s.suggest("new")
    assert len(s._ot_study.trials) == 4


@pytest.mark.parametrize(
    "search, tune, message",
    [
        (
            "\n  model.num_heads: {choice: [2, 4]}",
            "",
            "searched other keys (not searched here: optim.lr)",
        ),
        (
            SPACE + "\n  optim.weight_decay: {uniform: [0.0, 0.1]}",
            "",
            "searched other keys (not searched there: optim.weight_decay)",
        ),
        (
            "\n  model.num_heads: {choice: [4, 8]}\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}",
            "",
            "lie outside this search space: model.num_heads=2 outside {'choice': [4, 8]}",
        ),
        (
            SPACE,
            ", searcher: optuna-nsga2, objectives: {val_accuracy: max, latency_ms: min}",
            "optimised val_accuracy max, this sweep val_accuracy max, latency_ms min",
        ),
    ],
    ids=["missing", "extra", "outside", "objectives"],
)
def test_an_incompatible_warm_start_is_refused_naming_the_keys(earlier, search, tune, message):
    spec = _spec(earlier.root, name="next", search=search, tune=f"{tune}, warm_start: earlier")
    with pytest.raises(WarmStartError, match=f"^tune.warm_start: .*{re.escape(message)}") as e:
        find_warm_start(spec, earlier.uri, fresh=False)
    assert "\n" not in str(e.value) and earlier.run_id in str(e.value)


def test_a_warm_start_from_nowhere_is_refused_without_creating_a_store(tmp_path):
    spec = _spec(tmp_path, tune=", warm_start: nothing")
    with pytest.raises(WarmStartError, match="^tune.warm_start: 'nothing': no MLflow store"):
        find_warm_start(spec, spec.tracking.tracking_uri, fresh=False)
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unknown_warm_start_is_refused(earlier):
    spec = _spec(earlier.root, name="next", tune=", warm_start: nosuch")
    with pytest.raises(WarmStartError, match="'nosuch' is neither an MLflow experiment nor"):
        find_warm_start(spec, earlier.uri, fresh=False)


def test_the_sweep_command_refuses_before_ray_starts_or_mlflow_is_written(
    earlier, capsys, monkeypatch
):
    import ray

    from orchestrator import sweep

    f = earlier.root / "bad.yaml"
    f.write_text(_bad_yaml(earlier.root))
    client = MlflowClient(earlier.uri)
    before = len(client.search_experiments())
    monkeypatch.chdir(earlier.root)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as e:
            sweep.main(["--config", str(f)])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: tune.warm_start: ") and "optim.lr" in err[0]
    assert not ray.is_initialized()
    assert len(client.search_experiments()) == before  # no experiment for 'bad'


def _bad_yaml(root: Path) -> str:
    spec_file = (root / "earlier.yaml").read_text()
    return (
        spec_file.replace("name: earlier", "name: bad")
        .replace("  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", "")
        .replace("num_samples: 4", "num_samples: 4, warm_start: earlier")
    )


def test_the_dry_run_checks_the_warm_start_too(earlier, capsys):
    from orchestrator import sweep

    ok = earlier.root / "dry.yaml"
    ok.write_text(
        (earlier.root / "earlier.yaml")
        .read_text()
        .replace("name: earlier", "name: dry")
        .replace("num_samples: 4", "num_samples: 4, warm_start: earlier")
    )
    assert sweep.main(["--config", str(ok), "--dry-run"]) == 0
    assert f"warm start     3 trial(s) of sweep run {earlier.run_id}" in capsys.readouterr().out
    bad = earlier.root / "dry_bad.yaml"
    bad.write_text(_bad_yaml(earlier.root))
    with pytest.raises(SystemExit) as e:
        sweep.main(["--config", str(bad), "--dry-run"])
    assert e.value.code == 2 and "optim.lr" in capsys.readouterr().err


def test_the_driver_seeds_a_new_sweep_run_once_and_tags_where_from(earlier, capsys):
    from orchestrator.driver import sweep_study

    spec = _spec(earlier.root, name="driven", tune=", warm_start: earlier")
    warm = find_warm_start(spec, earlier.uri, fresh=False)
    client = MlflowClient(earlier.uri)
    run_id = _sweep_run(client, spec)
    place = sweep_study(client, run_id, spec, earlier.uri, resumed=False, warm=warm)
    assert f"Warm start: 3 trial(s) of sweep run {earlier.run_id}" in capsys.readouterr().out
    again = sweep_study(client, run_id, spec, earlier.uri, resumed=True, warm=warm)  # resume
    assert again == place and len(place.load().trials) == 3
    tags = client.get_run(run_id).data.tags
    assert tags[runs.WARM_START_TAG] == earlier.run_id
    assert tags[runs.OPTUNA_STORAGE_TAG] == str(earlier.root / "optuna" / "driven.journal")
