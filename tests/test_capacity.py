"""Resources against what the cluster can grow to: the node types an autoscaler may launch
(read from its config), the checks and the default concurrency drawn from them, and the
storage probe of nodes that join while the sweep runs. No Ray started here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import cluster
from orchestrator.cluster import Capacity, NodeWatcher, capacity_problems
from orchestrator.driver import max_concurrent
from orchestrator.sweep import main
from search_spaces import load_spec

ROOT = Path(__file__).resolve().parents[1]
FAKE = {  # the shape of Ray's fake autoscaler config and of ray_bootstrap_config.yaml
    "max_workers": 3,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 2}, "max_workers": 0},
        "gpu_worker": {"resources": {"CPU": 4, "GPU": 1}, "min_workers": 0, "max_workers": 8},
    },
}


def spec_with(tmp_path: Path, resources: str):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: cap\nbase: {data: {dataset: digits}, optim: {epochs: 1}}\n"
        f"tune: {{searcher: random}}\nresources: {resources}\n"
    )
    return load_spec(str(path), [])


def growing(config: dict = FAKE, now: dict | None = None) -> Capacity:
    types, most = cluster._from_file(_write(config))
    return Capacity(now or {"CPU": 2.0}, types, "the test config", most)


def _write(config: dict) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "autoscaler.yaml"
    path.write_text(json.dumps(config))
    return path


def test_the_autoscaler_config_gives_node_types_and_the_largest_cluster():
    cap = growing()
    assert cap.can_grow
    assert {t.name: t.max_count for t in cap.node_types} == {"head": 1, "gpu_worker": 3}
    assert cap.largest() == {"CPU": 2 + 3 * 4, "GPU": 3}  # the global max_workers caps


def test_a_gpu_sweep_starts_on_a_cluster_with_no_gpu_yet(tmp_path):
    spec = spec_with(tmp_path, "{gpus_per_worker: 1, cpus_per_worker: 4}")
    assert capacity_problems(spec, growing(now={"CPU": 2.0})) == []
    assert max_concurrent(spec, growing()) == 3  # the largest cluster's GPUs, not today's 0


def test_a_worker_that_fits_no_node_type_is_refused_naming_the_largest(tmp_path):
    spec = spec_with(tmp_path, "{gpus_per_worker: 1, cpus_per_worker: 6}")
    (msg,) = capacity_problems(spec, growing())
    assert "a worker needs 6 CPU and 1 GPU on one node" in msg
    assert "the largest is gpu_worker (CPU 4, GPU 1)" in msg


def test_a_trial_beyond_the_largest_cluster_is_refused(tmp_path):
    spec = spec_with(tmp_path, "{workers_per_trial: 4, gpus_per_worker: 1, cpus_per_worker: 1}")
    (msg,) = capacity_problems(spec, growing())
    assert "4 GPUs, but the Ray cluster at its largest (from the test config) has 3" in msg


def test_node_types_sized_only_at_launch_leave_the_totals_unchecked(tmp_path):
    config = json.loads(json.dumps(FAKE))
    config["available_node_types"]["gpu_worker"]["resources"] = {}
    spec = spec_with(tmp_path, "{gpus_per_worker: 1}")
    assert capacity_problems(spec, growing(config)) == []  # not refused for "no GPU"


def test_a_fixed_cluster_keeps_its_totals_check(tmp_path):
    spec = spec_with(tmp_path, "{gpus_per_worker: 1}")
    (msg,) = capacity_problems(spec, Capacity({"CPU": 8.0}))
    assert "the Ray cluster has no GPU" in msg
    config = json.loads(json.dumps(FAKE))
    config["available_node_types"]["gpu_worker"]["max_workers"] = 0
    assert cluster._from_file(_write(config)) == ((), {})  # nothing to launch: fixed


def test_the_shipped_cluster_file_reads_as_a_cluster_that_grows():
    import yaml

    types, _ = cluster._from_file(_write(yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())))
    assert [t.name for t in types if t.max_count > 0] == ["head", "gpu_ondemand", "gpu_spot"]


def test_a_named_autoscaler_config_that_is_missing_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CCT_AUTOSCALING_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(OSError, match="CCT_AUTOSCALING_CONFIG=.*nope.yaml"):
        cluster.autoscaling_config_path()


def test_a_node_that_joins_blind_stops_the_sweep(monkeypatch):
    nodes = [{"NodeID": "head", "NodeManagerAddress": "10.0.0.1", "Alive": True}]
    monkeypatch.setattr(cluster, "alive_nodes", lambda: list(nodes))
    asked = []

    def probe(storage, node_ids):
        asked.append(list(node_ids))
        return {n: "cannot see it" for n in node_ids if n == "blind"}

    monkeypatch.setattr(cluster, "nodes_not_seeing", probe)
    stopped = []
    watcher = NodeWatcher("/srv/local", on_blind=lambda: stopped.append(True))
    watcher.check_new_nodes()
    nodes.append({"NodeID": "good", "NodeManagerAddress": "10.0.0.2", "Alive": True})
    watcher.check_new_nodes()
    assert asked == [["good"]] and not stopped  # only the new node is probed
    nodes.append({"NodeID": "blind", "NodeManagerAddress": "10.0.0.3", "Alive": True})
    watcher.check_new_nodes()
    assert asked[-1] == ["blind"] and stopped == [True]
    assert (
        "storage_path=/srv/local: not visible from 1 of 3 nodes (10.0.0.3 (blind): cannot see it)"
        in watcher.problem
    )


@pytest.mark.parametrize(
    "path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_sweep_dry_runs_here_with_the_fit_unchecked(path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resource fit   unchecked: no --address" in out
