"""The sweep command's front door: bad input exits 2 with one line per error and writes
nothing; --dry-run prints the plan without starting Ray."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import local_env

GOOD = """
name: cli
base:
  model: {variant: cct_2_3x2_32, tokenizer_layers: 1}
  data: {dataset: digits}
  optim: {epochs: 2}
search:
  model.num_heads: {grid: [2, 4]}
tune: {searcher: grid}
"""


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**local_env(), **(env or {})},
    )


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("text", "sets", "expected"),
    [
        (GOOD.replace("epochs: 2", "epochs: 0"), [], "optim.epochs"),
        (GOOD, ["optim.lr=5e-4"], "write 5.0e-4"),
        (GOOD, ["model.conv_blocks=9"], "model.conv_blocks"),
        (GOOD, ["resources.gpus_per_worker=1"], "resources.gpus_per_worker=0"),
        (GOOD.replace("tune: {searcher: grid}", "tune: {searcher: optuna-tpe}"), [], "grid"),
        (GOOD + "\nbogus: 1\n", [], "bogus"),
        ("name: [unclosed\n", [], "line"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_error_and_writes_nothing(tmp_path, text, sets, expected):
    (tmp_path / "sweep.yaml").write_text(text)
    before = files_in(tmp_path)
    args = ["--config", "sweep.yaml"] + [a for s in sets for a in ("--set", s)]
    proc = run(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    assert expected in proc.stderr
    assert files_in(tmp_path) == before  # no mlflow.db, no ray_results


def test_missing_file_is_named(tmp_path):
    proc = run(tmp_path, "--config", "nope.yaml")
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    (tmp_path / "sweep.yaml").write_text(GOOD)
    proc = run(tmp_path, "--config", "sweep.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "Sweep 'cli'" in proc.stdout
    assert "model.num_heads=2" in proc.stdout and "model.num_heads=4" in proc.stdout
    assert files_in(tmp_path) == {"sweep.yaml"}


def test_quickstart_is_the_default(tmp_path):
    proc = run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "Sweep 'quickstart'" in proc.stdout
    assert "Trials (4)" in proc.stdout


def test_cluster_environment_sets_store_and_storage_unless_the_file_does(tmp_path):
    # ray_cluster.yaml exports both on the head; the sweep file still wins when it names them.
    cluster = {"MLFLOW_TRACKING_URI": "http://10.0.0.5:5000", "CCT_STORAGE_PATH": "s3://b/rr"}
    proc = run(tmp_path, "--dry-run", env=cluster)
    assert proc.returncode == 0, proc.stderr
    assert "in http://10.0.0.5:5000" in proc.stdout and "Ray results    s3://b/rr" in proc.stdout
    (tmp_path / "sweep.yaml").write_text(
        GOOD + "storage_path: /srv/results\ntracking: {tracking_uri: 'http://10.0.0.9:5000'}\n"
    )
    proc = run(tmp_path, "--config", "sweep.yaml", "--dry-run", env=cluster)
    assert proc.returncode == 0, proc.stderr
    assert "in http://10.0.0.9:5000" in proc.stdout and "Ray results    /srv/results" in proc.stdout


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A Ray head with token authentication, as deploy/slurm starts one: its own temp dir
    and ports, stopped by its process id (never `ray stop`, which stops every instance)."""
    import os
    import secrets
    import signal
    import socket

    root = tmp_path_factory.mktemp("token")
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**local_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    ray = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         f"--temp-dir={root / 'ray'}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats"],
        env=env, stdout=(root / "head.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}", token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: only this head's processes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # its graceful stop can take half a minute
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["run", "dry-run"])
def test_joining_a_token_cluster_without_the_token_is_one_line(tmp_path, token_cluster, mode):
    address, _ = token_cluster
    (tmp_path / "sweep.yaml").write_text(GOOD)
    args = ["--config", "sweep.yaml", "--address", address]
    # Ray retries a refused connection for 20 s by default; 3 are enough to be refused.
    # No RAY_AUTH_MODE: a ray.init in this process may have set it (~/.ray/auth_token).
    env = {k: v for k, v in local_env().items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *args,
         *(["--dry-run"] if mode == "dry-run" else [])],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**env, "RAY_gcs_server_port_wait_time_s": "3"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert f"--address {address}" in lines[0] and "RAY_AUTH_MODE=token" in lines[0]
    assert files_in(tmp_path) == {"sweep.yaml"}
