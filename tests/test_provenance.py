"""Which code ran (cct/provenance.py): from git in a checkout, else from the provenance file
deploy/up.sh writes before `ray up` syncs the code without .git; the sweep run's tags."""

from __future__ import annotations

import json
import subprocess

import pytest

from cct import provenance
from orchestrator.tracking import provenance_tags


@pytest.fixture
def no_git(monkeypatch):
    monkeypatch.setattr(provenance, "from_git", lambda: None)
    provenance.source_provenance.cache_clear()
    yield
    provenance.source_provenance.cache_clear()


def test_a_checkout_names_its_commit_from_git():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.ROOT, capture_output=True,
                          text=True)  # fmt: skip
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    found = provenance.source_provenance()
    assert found["commit"] == head.stdout.strip() and found["source"] == "git"
    assert isinstance(found["dirty"], bool)


def test_without_git_the_synced_file_names_it(no_git, tmp_path):
    path = tmp_path / "provenance.json"
    path.write_text(json.dumps({"commit": "abc123", "dirty": True}))
    found = provenance.source_provenance(path)
    assert found == {"commit": "abc123", "dirty": True, "source": "file"}


def test_without_git_or_file_it_is_unknown_and_the_tags_say_so(no_git, tmp_path, monkeypatch):
    missing = tmp_path / "none.json"
    assert provenance.source_provenance(missing)["source"] == "unknown"
    import orchestrator.tracking as tracking

    read = provenance.source_provenance.__wrapped__  # uncached, reading no file
    monkeypatch.setattr(tracking, "source_provenance", lambda: read(missing))
    assert provenance_tags() == {
        "git_commit": "unknown", "git_dirty": "unknown", "git_provenance": "unknown",
    }  # fmt: skip


def test_write_refuses_outside_a_checkout(no_git, tmp_path):
    with pytest.raises(SystemExit, match="not a git checkout"):
        provenance.write_provenance(tmp_path / "p.json")
