"""The sweep's Optuna study kept with its checkpoints (orchestrator/study.py, callbacks.JournalSync): copied
to the storage at each Tune save, restored from there when the driver lost its copy, and a
real sweep, interrupted, resumed after its driver's optuna/ folder was deleted, continues
with the searcher's whole history."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from orchestrator.callbacks import JournalSync
from orchestrator.study import StudyPlace, restore_journal, shared_journal
from tests.conftest import local_env, wait_for


def _study_with(place: StudyPlace, n: int) -> None:
    study = optuna.create_study(storage=place.open(), study_name=place.name, load_if_exists=True)
    for i in range(n):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": float(i)},
                distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
                values=[float(i)],
            )
        )


@pytest.mark.parametrize("uri", ["path", "file"])
def test_the_journal_goes_to_the_storage_at_each_save_and_comes_back(tmp_path, uri):
    place = StudyPlace(str(tmp_path / "driver/optuna/exp.journal"), "exp-run")
    Path(place.storage).parent.mkdir(parents=True)
    store = f"file://{tmp_path}/store" if uri == "file" else str(tmp_path / "store")
    shared = shared_journal(store, "sweep-1234", place)
    assert shared == f"{store}/sweep-1234-optuna/exp.journal"
    sync = JournalSync(place.storage, shared)
    _study_with(place, 2)
    assert sync.get_state() is None  # Tune's save: nothing of its own, the journal copied
    kept = tmp_path / "store/sweep-1234-optuna/exp.journal"
    assert kept.read_bytes() == Path(place.storage).read_bytes()
    _study_with(place, 1)
    sync.on_experiment_end(trials=[])
    assert kept.read_bytes() == Path(place.storage).read_bytes()

    shutil.rmtree(tmp_path / "driver")  # a new head: the driver's disk is gone
    assert restore_journal(place.storage, shared)
    assert len(place.load().trials) == 3
    assert not restore_journal(place.storage, shared)  # the same: nothing to do


def test_a_driver_journal_ahead_or_another_is_kept(tmp_path):
    place = StudyPlace(str(tmp_path / "optuna/exp.journal"), "exp-run")
    Path(place.storage).parent.mkdir(parents=True)
    shared = str(tmp_path / "store/s-optuna/exp.journal")
    _study_with(place, 1)
    JournalSync(place.storage, shared).get_state()
    _study_with(place, 1)  # the driver is ahead of the last save
    assert not restore_journal(place.storage, shared)
    assert len(place.load().trials) == 2
    Path(place.storage).write_bytes(b"")  # an earlier part (here: nothing yet)
    assert restore_journal(place.storage, shared)
    assert len(place.load().trials) == 1
    assert not restore_journal(place.storage, str(tmp_path / "nowhere/exp.journal"))


SWEEP = """
name: kept
base:
  model: {variant: cct_2_3x2_32, tokenizer_layers: 1, depth: 2, embed_dim: 32,
          conv_blocks: 0, num_heads: 2, attn_dropout: 0.0, drop_path: 0.0}
  data: {dataset: digits}
  optim: {epochs: 2, batch_size: 64, warmup_epochs: 1}
  latency_runs: 5
search:
  optim.lr: {loguniform: [1.0e-3, 5.0e-3]}
tune: {searcher: optuna-tpe, num_samples: 2, objectives: {val_accuracy: max}}
resources: {workers_per_trial: 1, cpus_per_worker: 0.9, max_concurrent_trials: 1}
analysis: {blocks: none}
"""


@pytest.mark.slow
def test_a_resume_with_only_the_storage_continues_the_whole_study(tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    command = [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"]
    env = local_env()
    journal = tmp_path / "optuna/kept.journal"

    def finished() -> int:
        if not journal.is_file():
            return 0
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        studies = optuna.get_all_study_summaries(storage)
        return sum(
            t.state == optuna.trial.TrialState.COMPLETE
            for s in studies
            for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
        )

    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: finished() >= 1, timeout=480, what="the first trial in the study")
        time.sleep(3)  # Tune saves its state (and the journal) after the trial's result
        os.killpg(first.pid, signal.SIGINT)
        out = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, out[-3000:]
    kept = list((tmp_path / "ray_results").glob("*-optuna/kept.journal"))
    assert len(kept) == 1
    shutil.rmtree(tmp_path / "optuna")  # the driver's disk lost the study

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Restored the sweep's Optuna study from" in again.stdout
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    ids = [t.user_attrs.get("ray_trial_id") for t in trials]
    finished_ids = [i for t, i in zip(trials, ids) if t.state.name == "COMPLETE"]
    assert len(finished_ids) == 2 and len(set(finished_ids)) == 2, [
        (t.state, i) for t, i in zip(trials, ids)
    ]
