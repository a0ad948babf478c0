"""The sweep's Optuna study kept where its checkpoints are, so a resume that finds only the
shared storage (a new head after `ray down`/`ray up`, a SLURM job on another node, a pod
rescheduled) continues with the searcher's whole history.

The study is an Optuna journal on the driver's disk (orchestrator/study.py): a journal needs
file locks and appends, which s3:// has not. So the journal is copied to
`<storage_path>/<ray experiment>-optuna/<experiment>.journal` each time Tune saves its own
state there (the searcher's checkpoint says which Tune trial is which study trial: the two
travel together), and copied back before a resume when the driver's copy is missing or an
earlier part of it (a journal only grows). Any storage Tune writes to works: a path, file://, s3://,
gs:// (pyarrow.fs, as Tune itself uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyarrow import fs as pafs
from ray.tune import Callback

from orchestrator.study import StudyPlace, study_of


def shared_journal(storage_path: str, ray_experiment: str, place: StudyPlace) -> str:
    """Where the copy of the study's journal is kept, beside the Tune experiment."""
    return f"{storage_path.rstrip('/')}/{ray_experiment}-optuna/{Path(place.storage).name}"


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def upload_journal(local: str, shared: str) -> None:
    """Copy the driver's journal to the shared storage (whole, through a temporary name)."""
    if not Path(local).is_file():
        return
    filesystem, path = _fs(shared)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as src, filesystem.open_output_stream(path + ".tmp") as out:
        out.write(src.read())
    filesystem.move(path + ".tmp", path)


def restore_journal(local: str, shared: str) -> bool:
    """Copy the shared journal to the driver's disk when the driver has none, or has an
    earlier part of the same journal (its bytes begin the shared copy's); returns whether it
    did. A driver's journal that went another way is left as it is."""
    filesystem, path = _fs(shared)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return False
    with filesystem.open_input_stream(path) as src:
        kept = src.read()
    mine = Path(local).read_bytes() if Path(local).is_file() else b""
    if len(kept) <= len(mine) or not kept.startswith(mine):
        return False
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    Path(local + ".restoring").write_bytes(kept)
    Path(local + ".restoring").replace(local)
    return True


def restore_study(run: Any, storage_path: str, ray_experiment: str) -> None:
    """Before a resumed sweep opens its study: bring the journal back from the storage."""
    place = study_of(run)
    shared = place and shared_journal(storage_path, ray_experiment, place)
    if shared and restore_journal(place.storage, shared):
        print(f"Restored the sweep's Optuna study from {shared}", flush=True)


class JournalSync(Callback):
    """Copies the study's journal to the shared storage at each save of Tune's state (Tune
    asks every callback for its state then) and at the end of the sweep."""

    def __init__(self, local: str, shared: str) -> None:
        self.local, self.shared = local, shared

    def get_state(self) -> dict | None:
        upload_journal(self.local, self.shared)
        return None  # nothing of its own to keep

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        upload_journal(self.local, self.shared)


def journal_sync(place: StudyPlace | None, storage_path: str, ray_experiment: str) -> list:
    """The callback that keeps `place` with the checkpoints ([] for a sweep without a study)."""
    if place is None:
        return []
    return [JournalSync(place.storage, shared_journal(storage_path, ray_experiment, place))]
