"""The Docker build context of deploy/docker/Dockerfile, computed as Docker computes it
(BuildKit reads `<Dockerfile>.dockerignore` if there is one, else the context root's
.dockerignore; patterns as moby/patternmatcher v0.6 reads and matches them: comments, `!`
exceptions, `**`, the last matching pattern wins, a match of a parent folder excludes what
is below it). Fails if the image would hold .slurm-cct/, a database, .git, a token or a
virtual environment, or would lack a file `pip install` needs."""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def _clean(path: str) -> str:
    """Go's filepath.Clean for slash paths."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def read_ignore_file(text: str) -> list[str]:
    """ignorefile.ReadAll: the patterns of a .dockerignore."""
    patterns = []
    for line in text.removeprefix("\ufeff").splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def _compile(pattern: str) -> tuple[str, object]:
    """Pattern.compile: (match type, regex or literal)."""
    out, kind, i = "^", "exact", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*" and pattern[i + 1 : i + 2] == "*":
            j = i + 2 + (pattern[i + 2 : i + 3] == "/")
            if j >= len(pattern):
                kind, out = ("prefix", out) if kind == "exact" else ("regexp", out + ".*")
            else:
                kind, out = "regexp", out + "(.*/)?"
            if i == 0:
                kind = "suffix"
            i = j
            continue
        if ch == "*":
            out, kind = out + "[^/]*", "regexp"
        elif ch == "?":
            out, kind = out + "[^/]", "regexp"
        elif ch in ".+()|{}$":
            out += "\\" + ch
        elif ch == "\\" and i + 1 < len(pattern):
            out, kind, i = out + "\\" + pattern[i + 1], "regexp", i + 1
        elif ch in "[]":
            out, kind = out + ch, "regexp"
        else:
            out += ch
        i += 1
    return (kind, re.compile(out + "$")) if kind == "regexp" else (kind, pattern)


def _match(compiled: tuple[str, object], pattern: str, path: str) -> bool:
    kind, value = compiled
    if kind == "exact":
        return path == pattern
    if kind == "prefix":
        return path.startswith(pattern[:-2])
    if kind == "suffix":
        suffix = pattern[2:]
        return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
    return bool(value.match(path))


def excluded(path: str, patterns: list[str]) -> bool:
    """PatternMatcher.MatchesOrParentMatches: is `path` (slash-separated, relative to the
    context) left out of the context?"""
    matched = False
    parents = posixpath.dirname(path).split("/") if "/" in path else []
    for raw in patterns:
        exclusion = raw.startswith("!")
        pattern = _clean(raw[1:] if exclusion else raw)
        if exclusion != matched:
            continue
        compiled = _compile(pattern)
        hit = _match(compiled, pattern, path) or any(
            _match(compiled, pattern, "/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            matched = not exclusion
    return matched


def ignore_file(context: Path, dockerfile: Path) -> Path:
    """The ignore file BuildKit uses: `<Dockerfile>.dockerignore`, else the context's."""
    beside = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return beside if beside.is_file() else context / ".dockerignore"


def _prunable(folder: str, patterns: list[str], exceptions: list[str]) -> bool:
    literal = not any(set(e) & set("*?[\\") for e in exceptions)
    reaches = any(e == folder or e.startswith(folder + "/") for e in exceptions)
    return literal and not reaches and excluded(folder, patterns)


def build_context(context: Path, dockerfile: Path = DOCKERFILE) -> list[str]:
    """Every file Docker would send for `docker build -f <dockerfile> <context>`."""
    ignore = ignore_file(context, dockerfile)
    patterns = read_ignore_file(ignore.read_text()) if ignore.is_file() else []
    exceptions = [p[1:] for p in patterns if p.startswith("!")]
    files = []
    for folder, dirs, names in os.walk(context):
        rel = Path(folder).relative_to(context).as_posix()
        # Skip an excluded folder no exception can reach into (as BuildKit does; .venv)
        dirs[:] = [d for d in dirs if not _prunable(d if rel == "." else f"{rel}/{d}",
                                                    patterns, exceptions)]  # fmt: skip
        for name in names + [d for d in dirs if Path(folder, d).is_symlink()]:
            path = name if rel == "." else f"{rel}/{name}"
            if not excluded(path, patterns):
                files.append(path)
    return sorted(files)


def secrets_in(files: list[str], context: Path) -> list[str]:
    """What must never be in an image: .slurm-cct/, databases, .git, tokens, venvs."""
    bad = []
    for path in files:
        parts = path.split("/")
        name = parts[-1]
        if ".slurm-cct" in parts or ".git" in parts or name == ".git":
            bad.append(path)
        elif name == "pyvenv.cfg" or {".venv", "venv"} & set(parts):
            bad.append(path)
        elif "token" in name.lower() or name in (".env", ".netrc"):
            bad.append(path)
        elif re.search(r"\.(db|sqlite3?)(-\w+)?$", name) or {"ray_results", "mlruns"} & set(parts):
            bad.append(path)
        elif (context / path).is_file() and (context / path).open("rb").read(
            16
        ) == b"SQLite format 3\0":
            bad.append(path)
    return bad


# --- the matcher itself, against moby/patternmatcher's documented cases --------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.db", "mlflow.db", True),
        ("*.db", "sub/mlflow.db", False),  # anchored at the root
        ("**/*.db", "sub/deeper/mlflow.db", True),
        ("**/.venv", ".venv/bin/python", True),
        ("**/.venv", "a/.venv/pyvenv.cfg", True),
        (".git", ".git/config", True),  # a parent folder's match excludes its files
        ("docs/**", "docs/a/b.md", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[a-c]x", "bx", True),
        ("/abs/path", "abs/path", True),  # a leading slash is dropped
    ],
)
def test_the_matcher_reads_patterns_as_docker_does(pattern, path, expected):
    assert excluded(path, read_ignore_file(pattern)) is expected


def test_exceptions_and_the_last_match_win():
    patterns = read_ignore_file("# comment\n*\n!cct\n**/__pycache__\n!cct/__pycache__/keep\n")
    assert excluded("secret.txt", patterns)
    assert not excluded("cct/models.py", patterns)
    assert excluded("cct/__pycache__/models.pyc", patterns)
    assert not excluded("cct/__pycache__/keep", patterns)


# --- the project's context ---------------------------------------------------------------


PLANTED = [
    ".slurm-cct/mlflow_credentials", ".slurm-cct/1234/ray_auth_token", ".slurm-cct/1234/basic_auth.ini",
    "mlflow.db", "mlflow_auth.db", "mlflow.db-journal", "cct/stray.db", "ray_results/x/checkpoint",
    "mlartifacts/1/a.pt", "mlruns/0/meta.yaml", ".venv/pyvenv.cfg", ".venv/bin/python",
    "venv/pyvenv.cfg", "cct/.venv/pyvenv.cfg", ".git/config", ".git/objects/ab/cdef",
    "cct/__pycache__/x.pyc", "slurm-cct-sweep-1.out", "data/cifar-100-python/train",
    ".env", "orchestrator/ray_auth_token",
]  # fmt: skip


def test_no_secret_reaches_the_image_from_a_used_project_folder(tmp_path):
    # A project folder after SLURM jobs, local sweeps and a venv, with the real ignore file.
    for path in PLANTED + [
        "pyproject.toml",
        "README.md",
        "cct/__init__.py",
        "deploy/docker/Dockerfile",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text())
    files = build_context(tmp_path, tmp_path / "deploy" / "docker" / "Dockerfile")
    assert secrets_in(files, tmp_path) == [] and not set(PLANTED) & set(files), files
    assert {"pyproject.toml", "README.md", "cct/__init__.py"} <= set(files)
    # ...and the check is not vacuous: without the ignore file all of it would go in.
    (tmp_path / ".dockerignore").unlink()
    assert len(secrets_in(build_context(tmp_path), tmp_path)) >= 15


def test_this_checkouts_context_holds_what_pip_needs_and_no_secret():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    files = set(build_context(ROOT))
    assert secrets_in(sorted(files), ROOT) == [], sorted(files)
    assert ignore_file(ROOT, DOCKERFILE) == ROOT / ".dockerignore"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"pyproject.toml", project["project"]["readme"]} <= files
    # every tracked file of every package pip installs (a new package, a new file type)
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    needed = [f for f in tracked.stdout.split() if "/" in f
              and any(re.fullmatch(p.replace("*", ".*"), f.split("/")[0]) for p in include)]  # fmt: skip
    assert needed and [f for f in needed if f not in files] == []
