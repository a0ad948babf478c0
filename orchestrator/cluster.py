"""What a sweep needs from the Ray cluster it runs on, checked before any trial starts.

On one machine anything goes. On several nodes, trials run far from the driver: their
results and checkpoints must reach storage every node sees (Ray Train restores a trial on
whichever node has room), and MLflow must be a server, since a sqlite file lives on one
disk. Both are checked for real: a marker the driver writes must be visible from every
node, so a path mounted on the head only is refused before it loses a checkpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pyarrow.fs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.tracking import is_local_store
from search_spaces import SweepSpec, check_resources

PROBE_TIMEOUT_S = 120.0  # a node that cannot answer in this long is reported as not seeing it


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _storage(storage_path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and in-filesystem path of a local path, file:// or object-store URI."""
    return pyarrow.fs.FileSystem.from_uri(storage_path)


def _sees(storage_path: str, relative: str) -> bool:
    fs, root = _storage(storage_path)
    return fs.get_file_info(f"{root}/{relative}").type != pyarrow.fs.FileType.NotFound


@ray.remote(num_cpus=0, max_retries=0)
def _sees_remote(storage_path: str, relative: str) -> bool:
    return _sees(storage_path, relative)


def _ask_every_node(storage_path: str, relative: str, node_ids: list[str]) -> dict[str, bool]:
    refs = {
        node: _sees_remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(storage_path, relative)
        for node in node_ids
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    answers = {}
    for node, ref in refs.items():
        try:
            answers[node] = ref in ready and bool(ray.get(ref))
        except ray.exceptions.RayError:
            answers[node] = False
    return answers


def nodes_not_seeing(
    storage_path: str,
    node_ids: list[str],
    ask: Callable[[str, str, list[str]], dict[str, bool]] = _ask_every_node,
) -> list[str]:
    """Nodes that cannot see a marker written to `storage_path` from here (the driver).
    Raises OSError when the driver itself cannot write there."""
    fs, root = _storage(storage_path)
    relative = f".cct-shared-{uuid.uuid4().hex[:12]}"
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{relative}") as f:
        f.write(b"written by the sweep driver to check that every node sees this storage\n")
    try:
        answers = ask(storage_path, relative, node_ids)
    finally:
        fs.delete_file(f"{root}/{relative}")
    return [node for node in node_ids if not answers.get(node, False)]


def cluster_problems(spec: SweepSpec, tracking_uri: str) -> list[str]:
    """Everything that keeps this sweep from running on the connected cluster, one line each."""
    res = ray.cluster_resources()
    nodes = alive_nodes()
    errors = check_resources(
        spec, cpus=res.get("CPU", 0), gpus=res.get("GPU", 0), where="the Ray cluster"
    )
    if len(nodes) < 2:
        return errors
    if is_local_store(tracking_uri):
        errors.append(
            f"tracking.tracking_uri={tracking_uri}: a local MLflow store cannot be shared by "
            f"{len(nodes)} nodes; use the MLflow server on the head (export "
            "MLFLOW_TRACKING_URI=http://<head private ip>:5000, as ray_cluster.yaml does)"
        )
    try:
        blind = nodes_not_seeing(spec.storage_path, [n["NodeID"] for n in nodes])
    except OSError as e:
        errors.append(f"storage_path={spec.storage_path}: the driver cannot write there ({e})")
        return errors
    if blind:
        names = ", ".join(
            f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in nodes if n["NodeID"] in blind
        )
        errors.append(
            f"storage_path={spec.storage_path}: not visible from {len(blind)} of {len(nodes)} "
            f"nodes ({names}); on a multi-node cluster use an object-store URI (s3://, gs://) "
            "or a path mounted on every node (export CCT_STORAGE_PATH=..., as ray_cluster.yaml "
            "does)"
        )
    return errors


def this_node_id() -> str:
    """The Ray node this process runs on (tagged on each trial's run, per attempt)."""
    return ray.get_runtime_context().get_node_id()


__all__ = ["cluster_problems", "nodes_not_seeing", "this_node_id", "alive_nodes"]
