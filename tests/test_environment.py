"""The environment on every run (cct/environment.py, orchestrator/tracking.py): captured with
packages and the uncommitted diff, recorded again at each start, and a resume under another
environment told in one line."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from analysis import runs
from cct import environment
from orchestrator import tracking
from orchestrator.driver import announce_start
from search_spaces import load_spec


def test_a_capture_names_the_runtime_the_hardware_and_every_package():
    env = environment.capture()
    assert env["torch"].startswith("2.") and env["python"].count(".") == 2
    assert env["packages"]["torch"] == env["torch"] and "mlflow" in env["packages"]
    assert env["hardware"]["cpu_count"] >= 1 and isinstance(env["hardware"]["gpus"], list)
    json.dumps(env)  # recordable as it is


def test_changes_name_the_runtime_first_then_each_package():
    before = {"torch": "2.13.0", "packages": {"numpy": "1.26.4", "old": "1"}}
    now = {"torch": "2.14.1", "packages": {"numpy": "2.0.0", "new": "3"}}
    assert environment.changes(before, now) == [
        "torch 2.13.0 -> 2.14.1",
        "new (none) -> 3",
        "numpy 1.26.4 -> 2.0.0",
        "old 1 -> (none)",
    ]
    assert environment.changes(now, now) == []


def test_a_resume_under_another_package_version_says_so_and_keeps_both(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("env", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    spec = load_spec(None, [])
    real = environment.capture()
    monkeypatch.setattr(environment, "capture", lambda: real)
    announce_start(client, spec, run_id, client.tracking_uri, resumed=False)
    assert "environment changed" not in capsys.readouterr().out

    bumped = {**real, "packages": {**real["packages"], "numpy": "0.0.1"}}
    monkeypatch.setattr(environment, "capture", lambda: bumped)
    announce_start(client, spec, run_id, client.tracking_uri, resumed=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "environment changed" in line]
    assert len(lines) == 1 and f"numpy {real['packages']['numpy']} -> 0.0.1" in lines[0], out

    recorded = [
        json.loads(
            Path(client.download_artifacts(run_id, f"{folder}/{runs.ENV_FILE}", d)).read_text()
        )
        for folder, d in (
            (runs.ENV_DIR, tmp_path / "a"),
            (f"{runs.ENV_DIR}/start-2", tmp_path / "b"),
        )
    ]
    assert [r["packages"]["numpy"] for r in recorded] == [real["packages"]["numpy"], "0.0.1"]
    assert client.get_run(run_id).data.tags[runs.ENV_STARTS_TAG] == "2"


def test_the_uncommitted_diff_is_recorded_when_there_is_one(tmp_path, monkeypatch):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("env", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    monkeypatch.setattr(environment, "uncommitted_diff", lambda: "diff --git a/x b/x\n+1\n")
    assert tracking.record_environment(client, run_id) is None
    diff = client.download_artifacts(run_id, f"{runs.ENV_DIR}/{runs.ENV_DIFF}", tmp_path)
    assert Path(diff).read_text().startswith("diff --git")
