"""What the README's commands write into the working folder is ignored by git: the sweep's
store, artifacts, Ray results and Optuna journal (as the shared sweep of tests/conftest.py
left them in its folder), and the default outputs of the committee, the report and the
benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from analysis.committee.cli import build_parser as committee_parser
from analysis.report.cli import build_parser as report_parser

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = {"sweep.yaml", "sweep.log"}  # the test's own, not the product's

pytestmark = pytest.mark.slow  # shares the session's real sweep


def ignored(relative: str) -> bool:
    """Would git ignore this path, written in the repository's root? (a folder by a file in
    it: git reports a folder only when the pattern names the folder itself)"""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", "-q", relative], check=False
    )
    return out.returncode == 0


def test_git_check_ignore_answers_both_ways():
    assert ignored("mlflow.db") and not ignored("README.md")


def test_everything_the_sweep_writes_in_its_folder_is_ignored(sweep):
    created = [p for p in sweep["root"].iterdir() if p.name not in TEST_FILES]
    assert created, "the sweep wrote nothing?"
    paths = [
        str(f.relative_to(sweep["root"]))
        for p in created
        for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()][:20])
    ]
    assert {"mlflow.db", "optuna"} <= {Path(p).parts[0] for p in paths}, paths
    assert [p for p in paths if not ignored(p)] == []


def test_the_other_commands_default_outputs_are_ignored():
    committee = committee_parser().parse_args(["--experiment", "x"]).out
    report = report_parser().parse_args(["--experiment", "x"]).out
    outputs = [
        f"{committee}/committee.json",
        str(report),
        "bench/bench.json",  # the README's benchmark commands write --out bench/
        "runs/train/checkpoint/model.pt",  # python -m cct.train's default --out
    ]
    assert [p for p in outputs if not ignored(p)] == []
