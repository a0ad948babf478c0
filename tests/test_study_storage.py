"""The sweep's Optuna study kept with its checkpoints (orchestrator/study.py, callbacks.JournalSync): copied
to the storage at each Tune save and restored from there when the driver lost its copy. A real
sweep killed and resumed after its driver's optuna/ folder was deleted, the storage on S3, is
tests/test_pg_s3.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from orchestrator.callbacks import JournalSync
from orchestrator.study import StudyPlace, restore_journal, shared_journal


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
