"""System metrics of a trial's workers, sampled in a daemon thread into the trial's MLflow run.

What MLflow's own monitor would log, but only for the GPUs this worker was assigned: MLflow's
reads every GPU NVML sees and ignores CUDA_VISIBLE_DEVICES, so trials packed on one node would
log each other's. Here the worker's GPU is found by its UUID (torch's, matched against NVML's).
Every rank samples (each rank's node and GPU matter); the keys, with <node> the first 8 hex
digits of the Ray node id (a tag `system/<node>/node_id` holds all of it) and r the world rank:

    system/<node>/cpu_percent             the node's CPU use, % of all its cores (psutil)
    system/<node>/memory_used_gib         the node's memory in use (psutil's "used")
    system/<node>/rank<r>/cpu_percent     the worker process's CPU, % of one core (can pass 100)
    system/<node>/rank<r>/rss_gib         resident memory of the worker and its child processes
    system/<node>/gpu<i>/utilization_percent, memory_used_gib, power_watts
                                          the worker's GPU, i its NVML index (nvidia-smi's)

The node's keys come from its local rank 0 alone (two ranks on one node would log them twice).
The step is whole seconds since the trial's run started, so it continues across restarts; the
timestamp is the sample's. A shared (fractional) GPU reports the whole GPU, neighbours included.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

GIB = 1024**3
NODE_ID_CHARS = 8  # of a 56-hex-digit Ray node id: unique enough within one cluster
MIN_LAST_SAMPLE_S = 1.0  # the sample at stop only covers at least this long a stretch

Read = Callable[[], dict[str, float]]
Write = Callable[[list[Metric]], None]


def node_prefix(node_id: str) -> str:
    return f"system/{node_id[:NODE_ID_CHARS]}"


def _plain_uuid(uuid: Any) -> str:
    # NVML spells it "GPU-5c3f...", torch "5c3f..."; older pynvml returns bytes.
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def gpu_uuids(device: torch.device) -> list[str]:
    """The UUIDs of the GPUs a worker trains on: its CUDA device's, none on the CPU."""
    if device.type != "cuda":
        return []
    return [str(torch.cuda.get_device_properties(device).uuid)]


@dataclass
class Gpu:
    index: int  # NVML's (nvidia-smi's) index on the node, not the CUDA ordinal
    handle: Any
    name: str
    power: bool = True  # False once NVML says this GPU cannot report its power


def assigned_gpus(uuids: Sequence[str], nvml: Any) -> list[Gpu]:
    """The NVML devices whose UUIDs are in `uuids`, in NVML order; [] without uuids (NVML is
    not even started). Raises nvml.NVMLError where NVML cannot start (no driver), LookupError
    for a UUID NVML does not list (a MIG slice: NVML lists whole GPUs)."""
    if not uuids:
        return []
    nvml.nvmlInit()
    wanted = {_plain_uuid(u): str(u) for u in uuids}
    found = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        uuid = _plain_uuid(nvml.nvmlDeviceGetUUID(handle))
        if uuid in wanted:
            name = nvml.nvmlDeviceGetName(handle)
            found.append(Gpu(i, handle, name.decode() if isinstance(name, bytes) else name))
            del wanted[uuid]
    if wanted:
        raise LookupError(f"NVML lists no GPU with UUID {', '.join(sorted(wanted.values()))}")
    return found


def _busy_total(times: Any) -> tuple[float, float]:
    # psutil's own rule: busy is everything but idle and waiting for I/O.
    total = sum(times)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class Probe:
    """One sample's readings, keyed as logged (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        rank: int,
        node_keys: bool,
        gpus: Sequence[Gpu] = (),
        nvml: Any = None,
        ps: Any = psutil,
    ) -> None:
        self.node, self.rank, self.node_keys = node_prefix(node_id), rank, node_keys
        self.gpus, self.nvml, self.ps = list(gpus), nvml, ps
        self.proc = ps.Process()
        # CPU percentages measure since the previous reading: these start the clock. The
        # node's from our own baseline: psutil.cpu_percent() keeps one per process, which
        # any other caller in the worker (Ray's, a library's) resets.
        self._cpu = _busy_total(ps.cpu_times())
        self.proc.cpu_percent(None)

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.node_keys:
            out[f"{self.node}/cpu_percent"] = self._node_cpu_percent()
            out[f"{self.node}/memory_used_gib"] = self.ps.virtual_memory().used / GIB
        rank = f"{self.node}/rank{self.rank}"
        out[f"{rank}/cpu_percent"] = self.proc.cpu_percent(None)
        out[f"{rank}/rss_gib"] = self._tree_rss() / GIB
        for gpu in self.gpus:
            key = f"{self.node}/gpu{gpu.index}"
            out[f"{key}/utilization_percent"] = self.nvml.nvmlDeviceGetUtilizationRates(
                gpu.handle
            ).gpu
            out[f"{key}/memory_used_gib"] = self.nvml.nvmlDeviceGetMemoryInfo(gpu.handle).used / GIB
            if gpu.power:
                try:  # milliwatts
                    out[f"{key}/power_watts"] = self.nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1e3
                except self.nvml.NVMLError_NotSupported:
                    gpu.power = False
        return out

    def _node_cpu_percent(self) -> float:
        (busy0, total0), (busy, total) = self._cpu, _busy_total(self.ps.cpu_times())
        self._cpu = (busy, total)
        return 100.0 * (busy - busy0) / (total - total0) if total > total0 else 0.0

    def _tree_rss(self) -> int:
        rss = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except (self.ps.NoSuchProcess, self.ps.AccessDenied):
                pass  # ended between the listing and the reading
        return rss


class Sampler:
    """Calls `read` every `interval_s` seconds in a daemon thread and hands `write` the
    readings as MLflow metrics (step: whole seconds since `origin_s`), plus one last sample
    at `stop`. The first error of either is printed once and ends the sampling: training
    never sees it."""

    def __init__(
        self,
        read: Read,
        write: Write,
        *,
        interval_s: float,
        origin_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.read, self.write, self.interval_s = read, write, interval_s
        self.origin_s, self.clock = origin_s, clock
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._last = clock()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Take the last sample and end the thread (a store that hangs is left behind after
        `timeout_s`: the thread is a daemon)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self._sample()
            if self.clock() - self._last >= MIN_LAST_SAMPLE_S:
                self._sample()
        except Exception as e:  # whatever it is, training goes on without us
            self.error = e
            _warn(f"stopped after {self.samples} sample(s): {type(e).__name__}: {e}")

    def metrics(self) -> list[Metric]:
        """One sample: the readings as MLflow metrics, stamped now."""
        now = self.clock()
        values = self.read()
        self._last = now
        ms, step = int(now * 1000), max(0, int(now - self.origin_s))
        return [Metric(k, float(v), ms, step) for k, v in values.items()]

    def _sample(self) -> None:
        self.write(self.metrics())
        self.samples += 1


def start(
    *,
    tracking_uri: str,
    run_id: str,
    interval_s: float,
    node_id: str,
    rank: int,
    node_keys: bool,
    uuids: Sequence[str],
    nvml: Any = None,
) -> Sampler | None:
    """A running Sampler of this worker into run `run_id`; None (said once) when it cannot
    start. GPUs NVML cannot read (no driver, a MIG slice) leave CPU and memory sampled."""
    try:
        gpus: list[Gpu] = []
        if uuids:
            try:
                if nvml is None:
                    # deferred: optional: NVML only where an NVIDIA driver is
                    import pynvml as nvml  # nvidia-ml-py; imports without a GPU
                gpus = assigned_gpus(uuids, nvml)
            except Exception as e:  # no driver, a MIG slice: CPU and memory still count
                _warn(f"no GPU metrics on rank {rank}: {type(e).__name__}: {e}")
        probe = Probe(node_id=node_id, rank=rank, node_keys=node_keys, gpus=gpus, nvml=nvml)
        client = MlflowClient(tracking_uri)
        node = node_prefix(node_id)
        tags = {f"{node}/gpu{g.index}/name": g.name for g in gpus}
        if node_keys:
            tags |= {f"{node}/node_id": node_id, f"{node}/host": socket.gethostname()}
            tags["system/interval_s"] = f"{interval_s:g}"
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        origin_s = client.get_run(run_id).info.start_time / 1000
        return Sampler(
            probe.read,
            lambda metrics: client.log_batch(run_id, metrics=metrics),
            interval_s=interval_s,
            origin_s=origin_s,
        ).start()
    except Exception as e:  # monitoring must never stop a trial
        _warn(f"not started on rank {rank}: {type(e).__name__}: {e}")
        return None


def _warn(message: str) -> None:
    print(f"system metrics: {message}", file=sys.stderr)
