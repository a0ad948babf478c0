"""`ruff format` and `ruff check` keep style out of debate: the tree must pass both."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["cct", "search_spaces", "orchestrator", "analysis", "tests"]


def ruff() -> list[str]:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists():
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    return [exe]


def test_ruff_check_is_clean():
    out = subprocess.run([*ruff(), "check", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    out = subprocess.run(
        [*ruff(), "format", "--check", *PACKAGES], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
