"""A trial's MLflow run through the worker's callbacks, without Ray: a crash in the final
analysis, then the resume (nothing trained or logged twice); the interruption marks and
their removal on resume; the command an interrupted sweep prints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis import runs as contract
from cct.config import TrainConfig
from cct.data import load_dataset
from cct.engine import fit
from orchestrator.sweep import resume_command
from orchestrator.tracking import (
    RunTracker,
    child_run,
    create_parent_run,
    ensure_experiment,
    mark_interrupted,
    reopen,
)
from orchestrator.worker import callbacks as worker

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "data.dataset": "digits",
    "model.variant": "cct_2_3x2_32",
    "model.tokenizer_layers": 1,
    "model.embed_dim": 32,
    "model.depth": 2,
    "optim.epochs": 2,
    "optim.batch_size": 64,
    "device": "cpu",
    "latency_runs": 1,
}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """One store for the module: creating a sqlite store takes seconds."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client, ensure_experiment(client, "t", root / "mlartifacts")


@pytest.fixture
def store(db):
    """(client, experiment id, a new sweep run, its trial run "a")."""
    client, exp = db
    parent = create_parent_run(client, exp, sweep="t", tags={}, params={})
    trial = child_run(client, exp, parent_run_id=parent, trial_id="a", params={}, tags={})
    return client, exp, parent, trial


class FakeRay:
    """ray.train.report and this node's id, as the worker calls them; keeps a copy of each
    checkpoint (Ray Train's storage)."""

    def __init__(self, keep: Path) -> None:
        self.keep, self.reports, self.checkpoints = keep, [], []

    def report(self, metrics, checkpoint=None):
        self.reports.append(metrics)
        if checkpoint is not None:
            dst = self.keep / f"ckpt{len(self.checkpoints)}"
            shutil.copytree(checkpoint.path, dst)
            self.checkpoints.append(dst)


def test_a_crash_in_the_final_analysis_resumes_without_training_or_logging_twice(
    tmp_path, store, monkeypatch, train_steps
):
    import analysis.shp

    client, _, _, run_id = store
    ray = FakeRay(tmp_path)
    monkeypatch.setattr(worker.ray.train, "report", ray.report)
    monkeypatch.setattr(worker, "this_node_id", lambda: "node")
    real = analysis.shp.analyze_checkpoint
    calls = []

    def analyze(*args, **kwargs):
        calls.append(kwargs["data"])
        if len(calls) == 1:
            raise RuntimeError("spot reclaim during the analysis")
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis.shp, "analyze_checkpoint", analyze)
    cfg = TrainConfig().replace(**TINY)
    options = {"blocks": "all", "units": "heads", "pooling": "mean", "fit": "fast"}
    data = load_dataset(cfg.data)

    def attempt(resume_from=None):
        callbacks = worker.RayCallbacks(RunTracker(client.tracking_uri, run_id), options, data)
        fit(cfg, callbacks=callbacks, resume_from=resume_from, data=data)

    with pytest.raises(RuntimeError, match="spot reclaim"):
        attempt()
    steps = len(train_steps.calls)
    # The last epoch reached Ray Train (checkpointed) but not yet Tune.
    assert ray.reports[-1]["epoch"] == 2 and ray.reports[-1][worker.HELD] == 1
    assert client.get_run(run_id).data.tags[contract.FINAL_LOGGED_TAG] == "true"

    attempt(resume_from=ray.checkpoints[-1])
    assert len(train_steps.calls) == steps  # nothing trained again
    assert calls[0] is data and calls[1] is data  # the training run's own data
    for name in ("train_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2], name
    for name in ("test_accuracy", "final_epochs"):
        assert len(client.get_metric_history(run_id, name)) == 1, name
    assert client.get_run(run_id).data.tags[contract.ANALYSIS_LOGGED_TAG] == "true"
    shp = {f.path for f in client.list_artifacts(run_id, contract.SHP_DIR)}
    assert contract.SHP_SUMMARY_ARTIFACT in shp
    # Tune heard the last epoch once, after the analysis, with its test accuracy.
    to_tune = [r for r in ray.reports if not r.get(worker.HELD)]
    assert [r["epoch"] for r in to_tune] == [1, 2] and "test_accuracy" in to_tune[-1]


def test_interrupted_runs_are_marked_and_reopened_on_resume(store):
    client, exp, parent, trial = store
    done = child_run(client, exp, parent_run_id=parent, trial_id="b", params={}, tags={})
    client.set_terminated(done, status="FINISHED")
    assert mark_interrupted(client, exp, parent) == 1
    for run_id, status in ((parent, "KILLED"), (trial, "KILLED"), (done, "FINISHED")):
        run = client.get_run(run_id)
        assert run.info.status == status
        assert (run.data.tags.get(contract.INTERRUPTED_TAG) == "true") == (run_id != done)
    reopen(client, client.get_run(parent))
    again = child_run(client, exp, parent_run_id=parent, trial_id="a", params={}, tags={})
    assert again == trial
    for run_id in (parent, trial):
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING"
        assert contract.INTERRUPTED_TAG not in run.data.tags


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "python -m orchestrator.sweep --resume"),
        (
            ["--config", "my sweep.yaml", "--fresh", "--set", "optim.epochs=3"],
            "python -m orchestrator.sweep --config 'my sweep.yaml' --set optim.epochs=3 --resume",
        ),
        (["--resume"], "python -m orchestrator.sweep --resume"),
    ],
)
def test_resume_command_is_ours_and_never_fresh(argv, expected):
    assert resume_command(argv) == expected


def test_an_experiment_gets_the_training_kind_once_also_from_a_store_made_before_it(db):
    client, exp = db
    assert client.get_experiment(exp).tags[contract.EXPERIMENT_KIND_TAG] == contract.TRAINING_KIND
    old = client.create_experiment("made-before-the-kind")  # as an older version left it
    assert contract.EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert ensure_experiment(client, "made-before-the-kind", None) == old
    assert client.get_experiment(old).tags[contract.EXPERIMENT_KIND_TAG] == contract.TRAINING_KIND
