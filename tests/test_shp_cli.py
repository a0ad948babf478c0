"""`python -m analysis.shp` on a real checkpoint from `python -m cct.train`: the files it
writes, one-line errors for bad input, and the --run-id round trip through MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.shp.cli import main
from analysis.shp.summary import read_summary

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny 2-block digits CCT trained for a few epochs by the real trainer."""
    out = tmp_path_factory.mktemp("train")
    sets = [
        "data.dataset=digits",
        "optim.epochs=4",
        "optim.warmup_epochs=0",
        "optim.lr=0.003",
        "optim.batch_size=64",
        "model.variant=cct_2_3x2_32",
        "model.tokenizer_layers=1",
        "model.embed_dim=32",
        "latency_runs=2",
    ]
    cmd = [sys.executable, "-m", "cct.train", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = out / "final" / "checkpoint"
    assert (path / "model.json").is_file()
    return path


def test_cli_writes_summary_arrays_and_pictures(checkpoint, tmp_path):
    out = tmp_path / "shp"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.shp", "--checkpoint", str(checkpoint), "--out", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [b["block"] for b in summary["blocks"]] == [0, 1]
    for b in summary["blocks"]:
        assert b["kind"] == "transformer"
        for key in (
            "readout_accuracy",
            "snr_labels",
            "snr_area",
            "mean_noise",
            "mean_cluster_size",
        ):
            assert key in b
        assert b["readout_accuracy"] > 0.3  # 10 digit classes: well above chance
        z = np.load(out / f"block_{b['block']}.npz")
        assert z["fields"].shape == (2, 10, 10) and z["logits"].shape == (10, 10)
        assert z["binary"].shape == z["normalized"].shape == (2, 10, 10)
        assert z["clusters"].shape == (2, 10)
        for name in ("normalized", "binary"):
            assert (out / f"block_{b['block']}_{name}.png").stat().st_size > 1000
    assert (out / "blocks.png").stat().st_size > 1000

    # the typed reader sees the same file field for field
    typed = read_summary(out / "summary.json")
    assert typed.num_classes == summary["num_classes"] == 10 and typed.units == "heads"
    assert [t.block for t in typed.head_blocks] == [0, 1]
    for t, b in zip(typed.blocks, summary["blocks"]):
        assert (t.readout_accuracy, t.snr_labels, t.noise_free) == (
            b["readout_accuracy"], b["snr_labels"], b["noise_free"]
        )  # fmt: skip
        assert [list(s) for s in t.label_sets] == b["label_sets"]
        assert list(t.unit_noise) == b["unit_noise"] and t.extra["seconds"] == b["seconds"]
        assert typed.label_count(t) == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt: no such file or folder"),
        (["--blocks", "9"], "out of range"),
        (["--blocks", "0,x"], "--blocks"),
        (["--units", "bogus"], "--units"),
        (["--threshold", "0"], "--threshold"),
        ([], "--checkpoint"),
    ],
)
def test_cli_bad_input_is_one_error_line_and_exit_2(checkpoint, tmp_path, capsys, args, message):
    # the checkpoint is added unless the case is about the source itself
    argv = args if "--checkpoint" in args or not args else ["--checkpoint", str(checkpoint), *args]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "x"), "--no-plots"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "summary.json").exists()


def test_run_id_round_trip_through_a_sqlite_store(checkpoint, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("shp-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(checkpoint), artifact_path="checkpoint")
    client.set_terminated(run_id)

    out = tmp_path / "shp"
    rc = main(
        [
            "--run-id",
            run_id,
            "--tracking-uri",
            uri,
            "--out",
            str(out),
            "--blocks",
            "0,1",
            "--no-plots",
        ]
    )
    assert rc == 0
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "shp")}
    assert {"summary.json", "block_0.npz", "block_1.npz"} <= names
    summary = json.loads((out / "summary.json").read_text())
    for key in ("shp_readout_accuracy", "shp_snr_labels", "shp_snr_area"):
        history = client.get_metric_history(run_id, key)
        want = {b["block"]: b[key[4:]] for b in summary["blocks"] if b[key[4:]] is not None}
        assert {m.step: m.value for m in history} == pytest.approx(want)
    assert len(client.get_metric_history(run_id, "shp_readout_accuracy")) == 2

    with pytest.raises(SystemExit) as e:  # an unknown run is a one-line error too
        main(["--run-id", "0" * 32, "--tracking-uri", uri, "--out", str(tmp_path / "y")])
    assert e.value.code == 2


def test_sweep_hook_analyze_checkpoint_then_log_with_a_client(checkpoint, tmp_path):
    # the call the sweep worker makes at the end of a trial (orchestrator/worker/loop.py)
    from mlflow.tracking import MlflowClient

    from analysis.shp import ShpOptions, analyze_checkpoint, log_to_mlflow

    out = tmp_path / "shp"
    summary = analyze_checkpoint(
        checkpoint,
        out_dir=out,
        blocks=(1,),
        options=ShpOptions(units="heads", pooling="mean", fit="fast", threshold=0.3),
    )
    assert [b["block"] for b in summary["blocks"]] == [1]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("hook", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    assert log_to_mlflow(summary, out, run_id=run_id, client=client) == run_id
    (m,) = client.get_metric_history(run_id, "shp_readout_accuracy")
    assert (m.step, m.value) == (1, pytest.approx(summary["blocks"][0]["readout_accuracy"]))
    assert "shp/blocks.png" in {f.path for f in client.list_artifacts(run_id, "shp")}
    with pytest.raises(ValueError, match="no active MLflow run"):
        log_to_mlflow(summary, out, client=client)


def test_analysis_never_imports_ray():
    code = (
        "import sys, analysis, analysis.shp, analysis.shp.pipeline, analysis.shp.mlflow_io, analysis.shp.plots;"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'orchestrator')));"
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_missing_checkpoint_is_named_as_missing(tmp_path, capsys):
    from analysis.shp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(tmp_path / "nope.pth")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --checkpoint {tmp_path / 'nope.pth'}: no such file or folder", err
