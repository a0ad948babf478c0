"""What a sweep needs from the Ray cluster it runs on, checked before any trial starts.

A cluster that an autoscaler grows is judged by the node types it may launch, not by the
nodes up at the start (a GPU cluster with `min_workers: 0` starts with no GPU at all):
a worker must fit one node type and a trial the cluster at its largest; trials then wait
while nodes boot. On one machine anything goes. On several nodes, trials run far from the driver: their
results and checkpoints must reach storage every node sees (Ray Train restores a trial on
whichever node has room), and MLflow must be a server, since a sqlite file lives on one
disk. Both are checked for real: a marker the driver writes must be visible from every
node, so a path mounted on the head only is refused before it loses a checkpoint.
"""

from __future__ import annotations

import _thread
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs
import ray
import yaml
from ray._private.state import state
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.tracking import is_local_store
from search_spaces import SweepSpec, check_resources

PROBE_TIMEOUT_S = 120.0  # a node that cannot answer in this long is reported as not seeing it
PROBE_RETRY_WAIT_S = 2.0  # between asks of a node that gave no answer yet
# The autoscaler's config where Ray's GCS holds none (Ray 2.60's own autoscaler reports none
# there): `ray up` writes it, node resources filled in, on the head, where the driver runs.
AUTOSCALING_CONFIG_ENV = "CCT_AUTOSCALING_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
WATCH_INTERVAL_S = 5.0  # how often the driver looks for nodes that joined


@dataclass(frozen=True)
class NodeType:
    """One kind of node the autoscaler may launch."""

    name: str
    resources: dict[str, float]  # CPU, GPU, ...; empty when the config leaves them to Ray
    max_count: int  # -1: no limit

    def text(self) -> str:
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(self.resources.items()) if k in UNITS)
        return f"{self.name} ({shown or 'resources detected at launch'})"


UNITS = ("CPU", "GPU")


@dataclass(frozen=True)
class Capacity:
    """What the connected cluster has now and can grow to."""

    now: dict[str, float]  # ray.cluster_resources()
    node_types: tuple[NodeType, ...] = ()  # empty: a fixed cluster
    source: str = "the nodes up now"
    most: dict[str, float] = field(default_factory=dict)  # totals at the largest

    @property
    def can_grow(self) -> bool:
        return bool(self.node_types)

    def largest(self) -> dict[str, float]:
        """The cluster's totals at its largest (today's totals on a fixed cluster)."""
        return {u: max(self.now.get(u, 0), self.most.get(u, 0)) for u in UNITS}


def _from_gcs() -> tuple[tuple[NodeType, ...], dict[str, float]] | None:
    # What Ray Train's own check reads: the cluster config the autoscaler reported to GCS.

    config = state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    types = tuple(
        NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count))
        for g in config.node_group_configs
    )
    most = state.get_max_resources_from_cluster_config() or {}
    return types, {k: float(v) for k, v in most.items()}


def _from_file(path: Path) -> tuple[tuple[NodeType, ...], dict[str, float]]:
    config = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    types, most = [], {}
    for name, t in (config.get("available_node_types") or {}).items():
        count = 1 if name == head else int(t.get("max_workers", cap or 0))
        if cap is not None and name != head:
            count = min(count, int(cap))
        res = {k: float(v) for k, v in (t.get("resources") or {}).items()}
        types.append(NodeType(name, res, count))
        for unit in UNITS:
            most[unit] = most.get(unit, 0.0) + count * res.get(unit, 0.0)
    workers = [t for t in types if t.name != head]
    if not any(t.max_count != 0 for t in workers):
        return (), {}  # nothing it may launch: a fixed cluster
    if cap is not None and workers:  # the global max_workers caps all worker types together
        for unit in UNITS:
            top = max(t.resources.get(unit, 0.0) for t in workers)
            head_part = next((t.resources.get(unit, 0.0) for t in types if t.name == head), 0.0)
            most[unit] = min(most[unit], head_part + int(cap) * top)
    return tuple(types), most


def autoscaling_config_path() -> Path | None:
    named = os.environ.get(AUTOSCALING_CONFIG_ENV)
    path = Path(named or BOOTSTRAP_CONFIG).expanduser()
    if named and not path.is_file():
        raise OSError(f"{AUTOSCALING_CONFIG_ENV}={named}: no such file")
    return path if path.is_file() else None


def cluster_capacity() -> Capacity:
    """The connected cluster's resources now and, when an autoscaler may add nodes, the node
    types it may launch: from Ray's GCS if the autoscaler reported them there, else from its
    config file (${AUTOSCALING_CONFIG_ENV}, or ~/ray_bootstrap_config.yaml on a `ray up`
    head). Neither: a fixed cluster."""
    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    found = _from_gcs()
    if found is not None:
        return Capacity(now, found[0], "Ray's cluster config (GCS)", found[1])
    path = autoscaling_config_path()
    if path is not None:
        types, most = _from_file(path)
        if types:
            return Capacity(now, types, f"the autoscaler config {path}", most)
    return Capacity(now)


def capacity_problems(spec: SweepSpec, capacity: Capacity) -> list[str]:
    """Resources the cluster can never provide: a fixed cluster's totals as today; on one
    that grows, a worker that fits no node type and a trial beyond the largest cluster."""
    if not capacity.can_grow:
        now = capacity.now
        return check_resources(
            spec, cpus=now.get("CPU", 0), gpus=now.get("GPU", 0), where="the Ray cluster"
        )
    if any(not t.resources and t.max_count != 0 for t in capacity.node_types):
        return []  # a node type's size is known only once one runs: the fit is unchecked
    r = spec.resources
    need = {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}
    types = capacity.node_types
    errors = []
    if not any(all(t.resources.get(u, 0) >= n for u, n in need.items()) for t in types):
        largest = max(types, key=lambda t: (t.resources.get("GPU", 0), t.resources.get("CPU", 0)))
        errors.append(
            f"resources: a worker needs {r.cpus_per_worker:g} CPU and {r.gpus_per_worker:g} GPU"
            f" on one node, but no node type the autoscaler can launch has that (from "
            f"{capacity.source}); the largest is {largest.text()}"
        )
    top = capacity.largest()
    where = f"the Ray cluster at its largest (from {capacity.source})"
    return errors + check_resources(spec, cpus=top["CPU"], gpus=top["GPU"], where=where)


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


def _ask_every_node(
    storage_path: str, relative: str, node_ids: list[str], timeout_s: float
) -> dict[str, bool]:
    """Each node's answer; a node that gave none (it timed out, died, or the scheduler here
    does not know it yet) is left out."""
    refs = {
        node: _sees_remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(storage_path, relative)
        for node in node_ids
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    answers = {}
    for node, ref in refs.items():
        if ref not in ready:
            continue  # still on its way when the time ran out: no answer
        try:
            answers[node] = bool(ray.get(ref))
        except ray.exceptions.RayError:
            continue  # the task failed (the node died, or is unknown here yet): no answer
    return answers


def alive_node_ids() -> set[str]:
    return {n["NodeID"] for n in alive_nodes()}


def nodes_not_seeing(
    storage_path: str,
    node_ids: list[str],
    ask: Callable[[str, str, list[str], float], dict[str, bool]] = _ask_every_node,
    alive: Callable[[], set[str]] = alive_node_ids,
    timeout_s: float = PROBE_TIMEOUT_S,
    retry_wait_s: float = PROBE_RETRY_WAIT_S,
) -> dict[str, str]:
    """Nodes that cannot see a marker written to `storage_path` from here (the driver), or
    that gave no answer in `timeout_s` while they stayed in the cluster, each with which.
    A node that gives no answer is asked again until then: one that joined a moment ago may
    not be known to the scheduler here yet. A node that leaves the cluster meanwhile holds
    no trial and is not counted. Raises OSError when the driver itself cannot write there."""
    fs, root = _storage(storage_path)
    relative = f".cct-shared-{uuid.uuid4().hex[:12]}"
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{relative}") as f:
        f.write(b"written by the sweep driver to check that every node sees this storage\n")
    deadline = time.monotonic() + timeout_s
    answers: dict[str, bool] = {}
    silent = list(node_ids)  # no answer yet, and still in the cluster
    try:
        while True:
            answers.update(
                ask(storage_path, relative, silent, max(0.0, deadline - time.monotonic()))
            )
            silent = [n for n in silent if n not in answers]
            if silent:
                here = alive()
                silent = [n for n in silent if n in here]  # one that left holds no trial
            if not silent or time.monotonic() + retry_wait_s >= deadline:
                break
            time.sleep(retry_wait_s)
    finally:
        fs.delete_file(f"{root}/{relative}")
    no_answer = f"no answer in {timeout_s:g} s"
    return {
        n: "cannot see it" if n in answers else no_answer
        for n in node_ids
        if answers.get(n) is False or n in silent
    }


def cluster_problems(spec: SweepSpec, tracking_uri: str, capacity: Capacity) -> list[str]:
    """Everything that keeps this sweep from running on the connected cluster, one line each."""
    nodes = alive_nodes()
    errors = capacity_problems(spec, capacity)
    if len(nodes) < 2 and not capacity.can_grow:
        return errors
    many = "nodes the cluster may grow to" if capacity.can_grow else f"{len(nodes)} nodes"
    if is_local_store(tracking_uri):
        errors.append(
            f"tracking.tracking_uri={tracking_uri}: a local MLflow store cannot be shared by "
            f"the {many}; use the MLflow server on the head (export "
            "MLFLOW_TRACKING_URI=http://<head private ip>:5000, as ray_cluster.yaml does)"
        )
    try:
        blind = nodes_not_seeing(spec.storage_path, [n["NodeID"] for n in nodes])
    except OSError as e:
        errors.append(f"storage_path={spec.storage_path}: the driver cannot write there ({e})")
        return errors
    if blind:
        errors.append(blind_message(spec.storage_path, nodes, blind))
    return errors


def blind_message(storage_path: str, nodes: list[dict], blind: dict[str, str]) -> str:
    names = ", ".join(
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]}): {blind[n['NodeID']]}"
        for n in nodes
        if n["NodeID"] in blind
    )
    return (
        f"storage_path={storage_path}: not visible from {len(blind)} of {len(nodes)} "
        f"nodes ({names}); on a multi-node cluster use an object-store URI (s3://, gs://) "
        "or a path mounted on every node (export CCT_STORAGE_PATH=..., as ray_cluster.yaml "
        "does)"
    )


class NodeWatcher:
    """Probes the storage path from each node that joins while the sweep runs (nodes an
    autoscaler adds were not there for the checks at the start). The first node that
    cannot see it stops the sweep (`on_blind`, by default a Ctrl-C to the main thread,
    which Tune turns into a clean, resumable stop) and `problem` says why."""

    def __init__(
        self,
        storage_path: str,
        on_blind: Callable[[], None] | None = None,
        interval_s: float = WATCH_INTERVAL_S,
    ) -> None:

        self.storage_path, self.interval_s = storage_path, interval_s
        self.on_blind = on_blind or _thread.interrupt_main
        self.seen = {n["NodeID"] for n in alive_nodes()}
        self.problem: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cct-node-watcher", daemon=True)

    def __enter__(self) -> NodeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + PROBE_TIMEOUT_S)

    def check_new_nodes(self) -> None:
        nodes = alive_nodes()
        new = [n["NodeID"] for n in nodes if n["NodeID"] not in self.seen]
        if not new:
            return
        self.seen.update(new)
        blind = nodes_not_seeing(self.storage_path, new)
        if blind and self.problem is None:
            self.problem = blind_message(self.storage_path, nodes, blind) + " (a node that joined)"
            self.on_blind()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_new_nodes()
            except (OSError, ray.exceptions.RayError) as e:  # keep watching; say so
                print(f"warning: storage probe of new nodes failed: {e}", flush=True)


def this_node_id() -> str:
    """The Ray node this process runs on (tagged on each trial's run, per attempt)."""
    return ray.get_runtime_context().get_node_id()


__all__ = [
    "Capacity",
    "NodeType",
    "NodeWatcher",
    "alive_node_ids",
    "alive_nodes",
    "capacity_problems",
    "cluster_capacity",
    "cluster_problems",
    "nodes_not_seeing",
    "this_node_id",
]
