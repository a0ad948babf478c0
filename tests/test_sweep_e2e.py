"""A real sweep on local Ray, end to end: 2 trials x 2 gloo workers, TPE, MLflow.

One sweep is shared by every test here. While it runs, one training worker is killed
(the trial must resume from its checkpoint inside Ray Train) and then the whole driver,
Ray included, is killed; re-running the same command must resume the sweep. The tests
then check what MLflow and Ray's files hold.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EPOCHS, assert_study_agrees

pytestmark = pytest.mark.slow


def test_resumed_sweep_reports_its_summary(sweep):
    assert "Resuming sweep 'e2e'" in sweep["log"]
    assert "Best trials of sweep 'e2e' (2 finished, 0 errored)" in sweep["log"]
    assert "python -m analysis.committee --experiment e2e" in sweep["log"]
    # two trials: importance would be noise, and the summary says so instead
    assert "val_accuracy: not enough trials (2 finished, at least 8)" in sweep["log"]


def test_the_console_is_the_sweeps_own_not_rays(sweep):
    log = sweep["log"]
    assert "finished: val_accuracy" in log and "  trial " in log  # the status table
    # worker lines and Tune's boxes stay in Ray's log files (--verbose brings them back)
    for noise in ("(RayTrainWorker", "Reporting training result", "Trial status:",
                  "Configuration for experiment", "Creating initial MLflow database"):  # fmt: skip
        assert noise not in log, noise


def test_one_parent_and_one_child_run_per_trial(mlflow_runs):
    client, runs = mlflow_runs
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1
    assert len(children) == 2
    assert len({r.data.tags["trial_id"] for r in children}) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["spec_hash"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}


def test_the_ui_opens_on_the_training_runs_and_the_sweep_run_says_what_it_is(mlflow_runs):
    client, runs = mlflow_runs
    parent = next(r for r in runs if r.data.tags.get("role") == "sweep")
    experiment = client.get_experiment(parent.info.experiment_id)
    # MLflow 3's UI opens an experiment without this kind on its (empty) GenAI traces view
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = parent.data.tags["mlflow.note.content"]
    assert "**Sweep `e2e`**" in note and "`model.num_heads`" in note
    assert "python -m analysis.report --experiment e2e" in note


def test_every_epoch_logged_exactly_once(mlflow_runs):
    client, runs = mlflow_runs
    for run in (r for r in runs if r.data.tags.get("role") == "trial"):
        assert run.info.status == "FINISHED"
        for name in ("train_loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (name, steps)


def test_child_runs_hold_results_params_and_artifacts(mlflow_runs):
    client, runs = mlflow_runs
    heads = set()
    for run in (r for r in runs if r.data.tags.get("role") == "trial"):
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        for key in ("val_accuracy", "test_accuracy", "latency_ms", "params", "macs"):
            assert key in m, key
        assert 0.5 < m["test_accuracy"] <= 1.0
        heads.add(p["model.num_heads"])
        assert p["data.dataset"] == "digits"
        assert t["split_hash"] and t["device"]
        files = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "logits", "shp", "logs"} <= files
        ckpt = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"checkpoint/model.pt", "checkpoint/model.json"} <= ckpt
        shp = {f.path for f in client.list_artifacts(run.info.run_id, "shp")}
        assert "shp/summary.json" in shp
    assert heads <= {"2", "4"}


def test_each_workers_output_is_logged_on_its_trial_run(mlflow_runs, tmp_path):
    client, runs = mlflow_runs
    for run in (r for r in runs if r.data.tags.get("role") == "trial"):
        logs = [f.path for f in client.list_artifacts(run.info.run_id, "logs")]
        for rank in (0, 1):  # both workers, one file per attempt that ended in Python
            mine = [p for p in logs if p.startswith(f"logs/rank{rank}-")]
            assert mine, (rank, logs)
            reported = 0
            for path in mine:
                local = client.download_artifacts(run.info.run_id, path, str(tmp_path))
                text = Path(local).read_text()
                # Ray Train's report lines, once each (its handler is pointed at the copy)
                lines = [ln for ln in text.splitlines() if "Reporting training result" in ln]
                assert all(ln.endswith(f"from rank {rank}") for ln in lines), (path, lines)
                assert len(lines) == len(set(lines)), (path, lines)
                reported += len(lines)
            assert reported, (rank, mine)


def test_compute_hours_add_up_over_attempts_and_trials(sweep, mlflow_runs):
    client, runs = mlflow_runs
    parent = next(r for r in runs if r.data.tags.get("role") == "sweep")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    restarted = 0
    for run in trials:
        m, run_id = run.data.metrics, run.info.run_id
        assert m["gpu_hours"] == 0
        assert m["cpu_hours"] == pytest.approx(m["wall_hours"] * 2 * 0.45)  # 2 workers held
        # Cumulative over the attempts: a restart carries on from the hours before it.
        points = sorted(client.get_metric_history(run_id, "wall_hours"), key=lambda p: p.step)
        values = [p.value for p in points]
        assert values == sorted(values) and values[-1] > 0, values
        epoch_s = sum(p.value for p in client.get_metric_history(run_id, "epoch_seconds"))
        assert m["wall_hours"] * 3600 >= epoch_s
        restarted += len(client.get_metric_history(run_id, "attempt_first_epoch")) > 1
    assert restarted, "no trial was restarted: the sweep fixture should kill a worker"
    total = sum(r.data.metrics["cpu_hours"] for r in trials)
    assert parent.data.metrics["cpu_hours"] == pytest.approx(total)
    assert parent.data.metrics["gpu_hours"] == 0
    assert parent.data.metrics["cost"] == pytest.approx(total * 0.5)
    assert "Compute held: 0 GPU-hours, " in sweep["log"]
    assert "over 2 trial(s), restarts included; cost " in sweep["log"]
    assert " at 0.5 per CPU-hour" in sweep["log"]


def test_every_rank_logs_system_metrics_under_its_node(mlflow_runs):
    client, runs = mlflow_runs
    for run in (r for r in runs if r.data.tags.get("role") == "trial"):
        m, t = run.data.metrics, run.data.tags
        # the last attempt's node (the resumed sweep runs on a new local Ray instance)
        node = t["ray_node_id"][:8]
        assert t[f"system/{node}/node_id"] == t["ray_node_id"]
        # both ranks share the node: its CPU and memory once, each rank's own process
        for key in ("cpu_percent", "memory_used_gib", "rank0/rss_gib", "rank1/rss_gib"):
            assert f"system/{node}/{key}" in m, sorted(m)
        assert 0 <= m[f"system/{node}/cpu_percent"] <= 100
        assert not [k for k in m if "/gpu" in k]  # gloo workers on the CPU hold no GPU
        history = client.get_metric_history(run.info.run_id, f"system/{node}/rank1/rss_gib")
        assert history and min(h.step for h in history) >= 0  # seconds into the trial


def test_epochs_continue_after_each_crash(sweep):
    root = sweep["root"]
    # trials cut off mid-run (one that had already finished is not run again)
    checkpointed = {t for t, n in sweep["before_resume"].items() if n >= 1} - sweep[
        "finished_before"
    ]
    assert checkpointed, "no trial had a checkpoint when the driver was killed"
    seen = set()
    for result_file in root.glob("ray_results/e2e-*/trial-*/result.json"):
        trial_id = result_file.parent.name.removeprefix("trial-")
        # Tune's result file holds what the trial reported since the driver restarted
        epochs = [json.loads(line)["epoch"] for line in result_file.read_text().splitlines()]
        assert epochs == sorted(set(epochs)), epochs
        assert epochs[-1] == EPOCHS
        if trial_id in checkpointed:
            # resumed from its checkpoint: a restart from 0 would report epoch 1 again
            assert epochs[0] > 1, (trial_id, epochs)
            seen.add(trial_id)
    assert seen == checkpointed


def test_optuna_study_keeps_its_trial_count(sweep):
    from ray.tune.search.optuna import OptunaSearch

    states = sorted(sweep["root"].glob("ray_results/e2e-*/searcher-state-*.pkl"))
    assert states, "no searcher state saved"
    searcher = OptunaSearch()
    searcher.restore(str(states[-1]))
    assert len(searcher._ot_study.trials) == 2


def test_the_link_the_sweep_prints_opens_the_ui_on_its_runs(sweep, tmp_path):
    """In a headless browser with a fresh profile, as a new user opens it: MLflow 3.17 shows
    its GenAI overview unless told otherwise, and the printed link tells it."""
    from tests.test_cluster import serve_mlflow
    from tests.test_report import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    link = re.search(r"then (http://127\.0\.0\.1:5000/\S+)", sweep["log"]).group(1)
    with serve_mlflow(sweep["root"], store="mlflow.db") as url:
        dom = subprocess.run(
            [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=20000", "--dump-dom",
             link.replace("http://127.0.0.1:5000", url)],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    assert "sweep-e2e" in dom, dom[-3000:]  # the sweep run, in the runs table
    assert "Detect Issues" not in dom  # the GenAI overview's button


def test_the_persisted_study_holds_each_trial_once_after_the_crash_and_resume(mlflow_runs):
    # the driver was killed (no state saved by Tune at the end) and resumed: Tune's
    # searcher checkpoint and the journal the study lives in must still agree
    client, runs = mlflow_runs
    parent = next(r for r in runs if r.data.tags.get("role") == "sweep")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert_study_agrees(parent, trials)
