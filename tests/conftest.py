"""Shared fixtures. `sweep` runs one real sweep on local Ray for the whole session (see
tests/test_sweep_e2e.py for what it goes through); tests that need trained sweep output
(MLflow runs with checkpoints, logits and analysis) share it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def small_sweep_yaml(
    *,
    name: str,
    epochs: int,
    resources: str,
    analysis: str,
    checkpoint_every: int = 1,
    system_metrics: str = "auto",
    search: str = "{model.num_heads: {choice: [2, 4]}}",
    tune: str = "{searcher: optuna-tpe, num_samples: 2, objectives: {val_accuracy: max}}",
    extra: str = "",
) -> str:
    """The sweep file the Ray tests share: 2 Optuna trials (2 or 4 heads) of a tiny CCT on
    digits, a checkpoint every `checkpoint_every` epochs; `resources`, `analysis`,
    `system_metrics`, `search` and `tune` are YAML flow mappings (or the system metrics'
    short form: auto, on, off); `extra` is appended (more sections, e.g. a budget)."""
    return f"""
name: {name}
base:
  model: {{variant: cct_2_3x2_32, tokenizer_layers: 1, depth: 2, embed_dim: 32,
          conv_blocks: 0, attn_dropout: 0.0, drop_path: 0.0}}
  data: {{dataset: digits}}
  optim: {{epochs: {epochs}, batch_size: 64, lr: 2.0e-3, warmup_epochs: 1}}
  latency_runs: 10
  checkpoint_every: {{epochs: {checkpoint_every}}}
search: {search}
tune: {tune}
resources: {resources}
analysis: {analysis}
system_metrics: {system_metrics}
{extra}
"""


EPOCHS = 12
SWEEP = small_sweep_yaml(
    name="e2e",
    epochs=EPOCHS,
    resources="{workers_per_trial: 2, cpus_per_worker: 0.45, max_concurrent_trials: 2, "
    "price_per_cpu_hour: 0.5}",
    analysis="{blocks: all}",
    checkpoint_every=2,  # a resume repeats up to one epoch, which MLflow must not log twice
    system_metrics="{enabled: on, interval_s: 5}",  # on CPU: only when asked
)


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny models gain nothing from a second one, and on a shared
    2-core machine every OpenMP barrier can wait a whole time slice for a descheduled
    thread. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _checkpoints(root: Path) -> dict[str, int]:
    """Trial id -> number of checkpoint folders Ray Train has persisted for it."""
    out = {}
    for run in root.glob("ray_results/*-train/train-*"):
        out[run.name.removeprefix("train-")] = len(list(run.glob("checkpoint_*")))
    return out


def _epochs_reported(root: Path) -> int:
    """Results Tune has recorded so far, over all trials (one per epoch)."""
    files = root.glob("ray_results/e2e-*/trial-*/result.json")
    return sum(len(f.read_text().splitlines()) for f in files)


def _finished_trials(root: Path) -> set[str]:
    """Trial ids whose final result Tune has recorded."""
    return {
        f.parent.name.removeprefix("trial-")
        for f in root.glob("ray_results/e2e-*/trial-*/result.json")
        if "test_accuracy" in f.read_text()
    }


def _cut_off_mid_run(root: Path) -> bool:
    """Some trial has a checkpoint and has not finished: killing the driver now cuts it off."""
    done = _finished_trials(root)
    return any(n >= 1 and t not in done for t, n in _checkpoints(root).items())


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll until `predicate()` is truthy and return its value; fail when `proc` exits or
    the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    """A TCP port on loopback nobody listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_env() -> dict[str, str]:
    """This environment without what would point a sweep at a cluster or another store."""
    drop = {"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "CCT_STORAGE_PATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _start(cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"],
        cwd=cwd,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it takes Ray down too
        env=local_env(),
    )


def _train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.yaml").write_text(SWEEP)
    log = root / "sweep.log"
    proc = _start(root, log)
    try:
        # 1. a worker dies after a checkpoint: Ray Train restarts the group from it
        wait_for(lambda: max(_checkpoints(root).values(), default=0) >= 2, 240, "checkpoints", proc)
        pids = _train_worker_pids()
        assert pids, "no RayTrainWorker process found"
        os.kill(pids[0], signal.SIGKILL)
        # 2. later the driver dies, taking its local Ray instance with it
        # (after more epochs, and while a trial with a checkpoint is still running: on a
        # loaded machine the second trial may start late, or the first finish early)
        reported = _epochs_reported(root)
        wait_for(
            lambda: _epochs_reported(root) >= reported + 4 and _cut_off_mid_run(root),
            240,
            "more epochs, with a checkpointed trial running",
            proc,
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    before_resume = _checkpoints(root)
    finished_before = _finished_trials(root)
    # 3. the same command again resumes the sweep
    proc = _start(root, log)
    try:
        assert proc.wait(420) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {
        "root": root,
        "log": log.read_text(),
        "before_resume": before_resume,
        "finished_before": finished_before,
    }


@pytest.fixture(scope="session")
def mlflow_runs(sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, runs


class StepSpy:
    """Every call of the engine's `Trainer.train_step` (fit's step, which the benchmarks
    time), as (trainer, learning rate it ran with, gradient norm it stepped with)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def check(self, n: int, optim):
        """`n` steps of one trainer, each at the learning rate `optim`'s schedule gives its
        step and, when `optim` clips, with its gradients clipped; returns the trainer."""
        from cct.optim import lr_at

        assert len(self.calls) == n
        trainer = self.calls[0][0]
        assert all(t is trainer for t, _, _ in self.calls)
        assert trainer.step == n
        spe = trainer.steps_per_epoch
        assert [lr for _, lr, _ in self.calls] == [
            lr_at(i, steps_per_epoch=spe, cfg=optim) for i in range(n)
        ]
        if optim.grad_clip is not None:
            for _, _, norm in self.calls:  # the tests clip far below the gradients' own norm
                assert norm == pytest.approx(optim.grad_clip, rel=1e-3)
        return trainer


@pytest.fixture
def train_steps(monkeypatch) -> StepSpy:
    import torch

    from cct.engine import Trainer

    spy, real = StepSpy(), Trainer.train_step

    def recorded(self, x, y):
        loss = real(self, x, y)
        grads = [p.grad.flatten() for p in self.model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.cat(grads)).item()
        spy.calls.append((self, self.optimizer.param_groups[0]["lr"], norm))
        return loss

    monkeypatch.setattr(Trainer, "train_step", recorded)
    return spy


def assert_study_agrees(parent, trial_runs, objective: str = "val_accuracy") -> None:
    """The sweep run's persisted Optuna study (its tags locate it) holds each trial of the
    sweep exactly once, finished, with the params, state and value of its MLflow run."""
    from optuna.trial import TrialState

    from orchestrator.study import WARM_ATTR, study_of
    from orchestrator.tune_objects import TRIAL_ATTR

    place = study_of(parent)
    assert place is not None, "the sweep run names no Optuna study"
    trials = [t for t in place.load().trials if WARM_ATTR not in t.user_attrs]
    ids = [t.user_attrs[TRIAL_ATTR] for t in trials]
    assert len(ids) == len(set(ids)), ids  # once each, however often the sweep resumed
    by_id = {t.user_attrs[TRIAL_ATTR]: t for t in trials}
    assert set(by_id) == {r.data.tags["trial_id"] for r in trial_runs}
    states = {"FINISHED": TrialState.COMPLETE, "FAILED": TrialState.FAIL}
    for run in trial_runs:
        t = by_id[run.data.tags["trial_id"]]
        assert {k: str(v) for k, v in t.params.items()} == {k: run.data.params[k] for k in t.params}
        assert t.state == states.get(run.info.status, TrialState.PRUNED), run.info.status
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(run.data.metrics[objective])


@pytest.fixture(scope="session")
def lab_stores(tmp_path_factory):
    """PostgreSQL, moto's S3 server and an MLflow server on both, on loopback, for the whole
    session (tests/servers.py); skips, saying what is missing, where they cannot start."""
    # deferred: tests/servers.py imports this module's helpers
    from tests import servers

    why = servers.missing()
    if why:
        pytest.skip(f"lab stores unavailable: {why}")
    with servers.lab_stores(tmp_path_factory.mktemp("lab-stores")) as stores:
        yield stores
