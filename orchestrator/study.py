"""The sweep's trials as an Optuna study kept on disk: where it lives, how random and grid
sweeps write it, and how an earlier sweep's study seeds a new sweep (`tune.warm_start`).

Where: an Optuna journal file on the driver's filesystem, one per MLflow experiment
(`optuna/<experiment>.journal`), in the folder of a local store (next to mlflow.db or the
file store) or in the driver's working folder for a remote one. Not in the MLflow database:
Optuna's RDB storage and MLflow both keep their schema version in alembic's
`alembic_version` table, so one database would break the other's migrations. Not under
storage_path either, which may be s3://. Only the driver writes it (the searcher and the
callbacks run there), and Optuna locks the file for each write.

One study per sweep run, named `<experiment>-<sweep run id>`; the sweep run's tags
`optuna_storage` and `optuna_study` locate it (`optuna-dashboard <optuna_storage>`).
Each trial of the study carries the Tune trial id (user attr `ray_trial_id`), which is also
the MLflow trial run's `trial_id` tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from pyarrow import fs as pafs

from analysis import runs
from analysis.importance import optuna_distribution
from analysis.runs import RunLookupError, find_sweep, open_store
from orchestrator import moved
from search_spaces.spec import Domain, SweepSpec

# StudyRecorder moved to orchestrator.callbacks; a sweep saved before the move finds it here
# (orchestrator/moved.py).
__getattr__ = moved.moved_names(__name__)

WARM_ATTR = "warm_start_from"  # on trials copied from an earlier sweep: its sweep run id
OBJECTIVES_ATTR = "objectives"  # on the study: the metric names, in the directions' order


class WarmStartError(Exception):
    """tune.warm_start cannot be honoured; the message is one line naming the keys."""


@dataclass(frozen=True)
class StudyPlace:
    """Where a sweep's study is: the journal file and the study's name."""

    storage: str
    name: str

    def open(self) -> JournalStorage:
        return JournalStorage(JournalFileBackend(self.storage))

    def load(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.open())


def journal_path(tracking_uri: str, experiment: str, cwd: Path) -> Path:
    """The journal file of `experiment`'s studies for the store at `tracking_uri`."""
    if tracking_uri.startswith("sqlite:"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    elif tracking_uri.startswith("file:"):
        folder = Path(urlparse(tracking_uri).path).parent
    elif "://" not in tracking_uri:  # a plain path is a file store
        folder = (cwd / tracking_uri).parent
    else:  # a server or a database elsewhere: the driver's own disk
        folder = cwd
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return (folder / "optuna" / f"{safe}.journal").resolve()


def study_of(run: Any) -> StudyPlace | None:
    """The study a sweep run's tags point to (None for a sweep from before studies)."""
    tags = run.data.tags
    if runs.OPTUNA_STORAGE_TAG not in tags or runs.OPTUNA_STUDY_TAG not in tags:
        return None
    return StudyPlace(tags[runs.OPTUNA_STORAGE_TAG], tags[runs.OPTUNA_STUDY_TAG])


def new_study_place(
    client: MlflowClient, run_id: str, spec: SweepSpec, tracking_uri: str, cwd: Path
) -> StudyPlace:
    """A new sweep run's study place, written to the run's tags."""
    path = journal_path(tracking_uri, spec.experiment, cwd)
    path.parent.mkdir(parents=True, exist_ok=True)
    place = StudyPlace(str(path), f"{spec.experiment}-{run_id}")
    client.set_tag(run_id, runs.OPTUNA_STORAGE_TAG, place.storage)
    client.set_tag(run_id, runs.OPTUNA_STUDY_TAG, place.name)
    return place


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """Every key a trial's config holds (the searched keys, and `seed` for tune.seeds)."""
    out = {key: optuna_distribution(d) for key, d in spec.search}
    if spec.tune.seeds:
        out["seed"] = CategoricalDistribution(list(spec.tune.seeds))
    return out


def prepare_study(place: StudyPlace, spec: SweepSpec, warm: WarmStart | None) -> int:
    """Create the sweep's study if new, and copy the warm start's trials into it once;
    returns how many it copied now. Idempotent: a resumed sweep copies nothing again."""
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in spec.objectives]
    study = optuna.create_study(
        storage=place.open(), study_name=place.name, directions=directions, load_if_exists=True
    )
    study.set_user_attr(OBJECTIVES_ATTR, [name for name, _ in spec.objectives])
    if warm is None or any(WARM_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False)):
        return 0
    dists = distributions(spec)
    for t in warm.trials:
        study.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                params=t.params,
                distributions={k: dists[k] for k in t.params},
                values=t.values,  # a PRUNED trial's: its last intermediate value
                intermediate_values=t.intermediate_values,
                user_attrs={WARM_ATTR: warm.sweep_run_id, "warm_start_trial": t.number},
            )
        )
    return len(warm.trials)


# --------------------------------------------------------------------------------------
# tune.warm_start


@dataclass(frozen=True)
class WarmStart:
    """An earlier sweep run's own finished trials (COMPLETE and PRUNED), checked against
    this sweep's search space."""

    sweep_run_id: str
    trials: tuple[FrozenTrial, ...]


def find_warm_start(spec: SweepSpec, tracking_uri: str, *, fresh: bool) -> WarmStart:
    """The trials that seed `spec`'s sweep, read from the earlier sweep's study; raises
    WarmStartError when they cannot (no such sweep, no study, another search space).
    Reads MLflow and the journal only: nothing is written.

    Read from the study, not from MLflow's trial runs: MLflow keeps params as strings
    (a choice of 2 and "2" look the same), while the study keeps the typed values and the
    state the searcher gave each trial (a PRUNED trial's value at its epoch)."""
    name = spec.tune.warm_start or ""
    where = "tune.warm_start"
    try:
        client = open_store(tracking_uri)
    except RunLookupError as e:
        raise WarmStartError(f"{where}: {name!r}: {e}") from None
    run = _earlier_sweep_run(client, spec, name, fresh=fresh)
    place = study_of(run)
    rid = run.info.run_id
    if place is None:
        raise WarmStartError(
            f"{where}: sweep run {rid} has no Optuna study (tag {runs.OPTUNA_STORAGE_TAG};"
            " it ran before sweeps kept one)"
        )
    if not Path(place.storage).is_file():
        raise WarmStartError(
            f"{where}: sweep run {rid} keeps its study in {place.storage}, which is not on"
            " this machine (run the sweep on the machine that drove that one)"
        )
    study = place.load()
    _check_objectives(spec, study, rid)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    trials = tuple(t for t in study.get_trials(states=finished) if WARM_ATTR not in t.user_attrs)
    if not trials:
        raise WarmStartError(f"{where}: sweep run {rid} has no finished trial to seed from")
    _check_space(spec, trials, rid)
    return WarmStart(rid, trials)


def _earlier_sweep_run(client: MlflowClient, spec: SweepSpec, name: str, *, fresh: bool) -> Any:
    # An experiment name: its latest sweep run, other than the one this command resumes.
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage != "deleted":
        resumed = None if fresh else runs.latest_sweep_run(client, exp.experiment_id, spec.name)
        skip = resumed.info.run_id if resumed is not None and name == spec.experiment else None
        candidates = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.{runs.ROLE} = '{runs.SWEEP_ROLE}'",
            order_by=["attributes.start_time DESC"],
            max_results=2,
        )
        for run in candidates:
            if run.info.run_id != skip:
                return run
        raise WarmStartError(f"tune.warm_start: experiment {name!r} has no earlier sweep run")
    try:
        return find_sweep(client, experiment=None, sweep_run_id=name)[1]
    except RunLookupError:
        raise WarmStartError(
            f"tune.warm_start: {name!r} is neither an MLflow experiment nor a sweep run id"
            " in this store"
        ) from None


def _check_objectives(spec: SweepSpec, study: optuna.Study, rid: str) -> None:
    maximize = optuna.study.StudyDirection.MAXIMIZE
    modes = ["max" if d == maximize else "min" for d in study.directions]
    theirs = list(zip(study.user_attrs.get(OBJECTIVES_ATTR, []), modes, strict=False))
    ours = [tuple(o) for o in spec.objectives]
    if theirs != ours:
        raise WarmStartError(
            f"tune.warm_start: sweep run {rid} optimised {_objectives(theirs)},"
            f" this sweep {_objectives(ours)}"
        )


def _objectives(pairs: list) -> str:
    return ", ".join(f"{name} {mode}" for name, mode in pairs) or "nothing it recorded"


def _check_space(spec: SweepSpec, trials: tuple[FrozenTrial, ...], rid: str) -> None:
    ours = spec.search_dict
    theirs = set().union(*(t.params for t in trials))
    missing, extra = sorted(set(ours) - theirs), sorted(theirs - set(ours))
    if missing or extra:
        parts = ([f"not searched there: {', '.join(missing)}"] if missing else []) + (
            [f"not searched here: {', '.join(extra)}"] if extra else []
        )
        raise WarmStartError(
            f"tune.warm_start: sweep run {rid} searched other keys ({'; '.join(parts)})"
        )
    outside: dict[str, list[Any]] = {}
    for t in trials:
        for key, value in t.params.items():
            if not _within(ours[key], value) and value not in outside.setdefault(key, []):
                outside[key].append(value)
    outside = {k: v for k, v in outside.items() if v}
    if outside:
        told = "; ".join(
            f"{k}={', '.join(map(repr, v))} outside {ours[k].to_dict()}"
            for k, v in sorted(outside.items())
        )
        raise WarmStartError(
            f"tune.warm_start: trials of sweep run {rid} lie outside this search space: {told}"
        )


def _within(d: Domain, value: Any) -> bool:
    if d.kind in ("choice", "grid"):
        # True == 1 in Python; a flag is not a count
        return any(
            value == v and isinstance(value, bool) == isinstance(v, bool) for v in d.values or ()
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if d.kind == "randint" and not isinstance(value, int):
        return False
    return d.low <= value <= d.high


# --------------------------------------------------------------------------------------
# kept with the checkpoints: the journal is copied to `<storage_path>/<ray experiment>-optuna/`
# each time Tune saves its state there (callbacks.JournalSync), and copied back before a
# resume that finds the driver's copy missing or behind (a new head after `ray down`/`ray
# up`, a SLURM job on another node, a rescheduled pod). A journal needs file locks and
# appends, which s3:// has not, so it lives on the driver's disk and travels as a copy; any
# storage Tune writes to works (pyarrow.fs, as Tune itself uses).


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
