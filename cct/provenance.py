"""Which code ran: the git commit and whether the tree was dirty, from git where the code is
a checkout, else from the provenance file written where the code was synced or built.

`ray up` (rsync_exclude drops `.git`) and images (no `.git` copied) leave no repository
behind, so `deploy/up.sh` writes `deploy/provenance/provenance.json` before the sync:

    python -m cct.provenance --write deploy/provenance/provenance.json
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE_FILE = ROOT / "deploy" / "provenance" / "provenance.json"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def from_git() -> dict[str, object] | None:
    """{"commit", "dirty"} of the checkout this code is in, or None outside one."""
    commit = (_git("rev-parse", "HEAD") or "").strip()
    if not commit:
        return None
    status = _git("status", "--porcelain")  # new files count; ignored ones do not
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


@functools.cache  # the code does not change while a process runs
def source_provenance(path: Path = PROVENANCE_FILE) -> dict[str, object]:
    """{"commit": str | None, "dirty": bool | None, "source": "git" | "file" | "unknown"}."""
    found = from_git()
    if found is not None:
        return {**found, "source": "git"}
    try:
        data = json.loads(Path(path).read_text())
        return {"commit": str(data["commit"]), "dirty": data.get("dirty"), "source": "file"}
    except (OSError, ValueError, KeyError, TypeError):
        return {"commit": None, "dirty": None, "source": "unknown"}


def write_provenance(path: Path) -> dict[str, object]:
    """Write this checkout's commit and dirty flag to `path`; raises when this is no checkout."""
    found = from_git()
    if found is None:
        raise SystemExit(f"error: {ROOT} is not a git checkout: no provenance to write")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(found) + "\n")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cct.provenance", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the provenance file")
    args = parser.parse_args(argv)
    print(json.dumps(write_provenance(args.write) if args.write else source_provenance()))


if __name__ == "__main__":
    main()
