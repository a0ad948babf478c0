"""A sweep file by path or packaged name -> a validated, frozen SweepSpec (the one entry
point: `load_spec`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from search_spaces.spec import SweepSpec, spec_hash
from search_spaces.validate import apply_overrides, build_spec, read_yaml


def packaged_spec(name: str) -> Path:
    """Path of a sweep file shipped with the package, e.g. packaged_spec("quickstart")."""
    return Path(str(resources.files("search_spaces") / f"{name}.yaml"))


def load_spec(
    path: str | Path | None, overrides: Sequence[str] = (), *, default_storage: str | None = None
) -> SweepSpec:
    """Read, override (`--set dotted.key=value`) and validate a sweep file.

    None means the packaged quickstart; a bare name such as "cifar100_lsmha" that is not a
    file means the packaged file of that name. Raises SpecError listing every problem.
    `default_storage` replaces <cwd>/ray_results when the file names no storage_path.
    Writes nothing.
    """
    path = _locate(path)
    raw = read_yaml(path)  # raises SpecError for a missing, empty or unparsable file
    raw = apply_overrides(raw, overrides)  # raises SpecError for malformed --set
    spec = build_spec(raw, source=str(path), cwd=Path.cwd(), default_storage=default_storage)
    return dataclasses.replace(spec, hash=spec_hash(spec))


def _locate(path: str | Path | None) -> Path:
    if path is None:
        return packaged_spec("quickstart")
    p = Path(path).expanduser()
    if not p.exists() and p.suffix == "" and len(p.parts) == 1 and packaged_spec(p.name).exists():
        return packaged_spec(p.name)
    return p.resolve() if p.exists() else p
