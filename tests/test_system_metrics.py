"""The per-worker system-metrics sampler on fake psutil and NVML layers: only the assigned GPUs
(by UUID), the key names, the interval, a clean stop, and errors that never reach training."""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from types import SimpleNamespace

import pytest

from orchestrator.worker import system_metrics as sm
from search_spaces import SpecError, SystemMetricsSpec, load_spec

NODE = "a1b2c3d4" + "e" * 48  # a 56-hex-digit Ray node id


class FakeNvml:
    """Four GPUs; NVML's order is not CUDA's, and UUIDs carry NVML's "GPU-" prefix."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
        pass

    def __init__(self, *, no_power: tuple[int, ...] = (), driver: bool = True) -> None:
        self.uuids = [f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd" for i in range(4)]
        self.no_power, self.driver = no_power, driver

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        if not self.driver:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:  # noqa: N802
        return self.uuids[h]

    def nvmlDeviceGetName(self, h: int) -> bytes:  # noqa: N802
        return b"Fake H200"  # older pynvml returns bytes

    def nvmlDeviceGetUtilizationRates(self, h: int):  # noqa: N802
        return SimpleNamespace(gpu=10 * h)

    def nvmlDeviceGetMemoryInfo(self, h: int):  # noqa: N802
        return SimpleNamespace(used=h * sm.GIB)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:  # noqa: N802
        if h in self.no_power:
            raise self.NVMLError_NotSupported("Not Supported")
        return 100_000 + h  # milliwatts


CpuTimes = namedtuple("CpuTimes", "user system idle iowait")


class FakePsutil:
    NoSuchProcess = ProcessLookupError
    AccessDenied = PermissionError

    class Process:
        def cpu_percent(self, interval):
            return 150.0

        def memory_info(self):
            return SimpleNamespace(rss=sm.GIB // 2)

        def children(self, recursive):
            gone = SimpleNamespace(memory_info=lambda: (_ for _ in ()).throw(ProcessLookupError))
            return [SimpleNamespace(memory_info=lambda: SimpleNamespace(rss=sm.GIB // 4)), gone]

    def __init__(self) -> None:
        self.ticks = 0

    def cpu_times(self):
        # between two readings: 100 more ticks, 42 busy, 50 idle, 8 waiting for I/O
        self.ticks += 1
        return CpuTimes(40.0 * self.ticks, 2.0 * self.ticks, 50.0 * self.ticks, 8.0 * self.ticks)

    @staticmethod
    def virtual_memory():
        return SimpleNamespace(used=3 * sm.GIB)


def test_only_the_gpus_whose_uuid_torch_reports_are_read():
    nvml = FakeNvml()
    # torch spells a UUID without NVML's prefix; this worker holds NVML's GPUs 1 and 3
    gpus = sm.assigned_gpus(["00000003-aaaa-bbbb-cccc-dddddddddddd", nvml.uuids[1]], nvml)
    assert [g.index for g in gpus] == [1, 3]
    assert gpus[0].name == "Fake H200"
    probe = sm.Probe(node_id=NODE, rank=1, node_keys=False, gpus=gpus, nvml=nvml, ps=FakePsutil())
    values = probe.read()
    assert values == {
        "system/a1b2c3d4/rank1/cpu_percent": 150.0,
        "system/a1b2c3d4/rank1/rss_gib": 0.75,  # the worker and its live child
        "system/a1b2c3d4/gpu1/utilization_percent": 10,
        "system/a1b2c3d4/gpu1/memory_used_gib": 1.0,
        "system/a1b2c3d4/gpu1/power_watts": 100.001,
        "system/a1b2c3d4/gpu3/utilization_percent": 30,
        "system/a1b2c3d4/gpu3/memory_used_gib": 3.0,
        "system/a1b2c3d4/gpu3/power_watts": 100.003,
    }


def test_node_keys_only_from_the_nodes_first_rank_and_no_gpu_on_cpu():
    assert sm.assigned_gpus([], FakeNvml(driver=False)) == []  # NVML not even started
    probe = sm.Probe(node_id=NODE, rank=0, node_keys=True, ps=FakePsutil())
    assert probe.read() == {
        "system/a1b2c3d4/cpu_percent": 42.0,
        "system/a1b2c3d4/memory_used_gib": 3.0,
        "system/a1b2c3d4/rank0/cpu_percent": 150.0,
        "system/a1b2c3d4/rank0/rss_gib": 0.75,
    }


def test_a_gpu_without_power_readings_logs_the_rest():
    nvml = FakeNvml(no_power=(2,))
    probe = sm.Probe(
        node_id=NODE,
        rank=0,
        node_keys=False,
        gpus=sm.assigned_gpus([nvml.uuids[2]], nvml),
        nvml=nvml,
        ps=FakePsutil(),
    )
    for _ in range(2):
        keys = set(probe.read())
        assert "system/a1b2c3d4/gpu2/utilization_percent" in keys
        assert "system/a1b2c3d4/gpu2/power_watts" not in keys


def test_a_uuid_nvml_does_not_list_is_an_error():
    with pytest.raises(LookupError, match="MIG-1"):
        sm.assigned_gpus(["MIG-1"], FakeNvml())


def test_samples_at_the_interval_with_step_in_seconds_and_a_last_one_at_stop():
    written, now = [], [1000.0]
    ticked = threading.Event()

    def write(metrics):
        written.append(metrics)
        ticked.set()

    s = sm.Sampler(
        lambda: {"system/x/cpu_percent": 5},
        write,
        interval_s=0.05,
        origin_s=990.0,
        clock=lambda: now[0],
    )
    s.start()
    assert ticked.wait(5)
    now[0] = 1002.5  # the last stretch is longer than MIN_LAST_SAMPLE_S: sampled at stop
    s.stop()
    assert not s._thread.is_alive() and s.error is None
    assert len(written) == s.samples >= 2
    first, last = written[0][0], written[-1][0]
    assert (first.key, first.value, first.step, first.timestamp) == (
        "system/x/cpu_percent",
        5.0,
        10,
        1_000_000,
    )
    assert (last.step, last.timestamp) == (12, 1_002_500)


def test_waits_the_interval_between_samples():
    s = sm.Sampler(lambda: {"k": 1}, lambda m: None, interval_s=60, origin_s=0).start()
    time.sleep(0.2)
    t0 = time.monotonic()
    s.stop()  # wakes the thread at once; under a second since the start: no last sample
    assert time.monotonic() - t0 < 2 and s.samples == 0 and not s._thread.is_alive()


@pytest.mark.parametrize("where", ["read", "write"])
def test_an_error_is_said_once_and_ends_sampling(where, capsys):
    calls = []

    def fail(*_):
        calls.append(1)
        raise OSError("store gone")

    read = fail if where == "read" else (lambda: {"k": 1})
    write = fail if where == "write" else (lambda m: None)
    s = sm.Sampler(read, write, interval_s=0.01, origin_s=0).start()
    s._thread.join(5)  # the thread ended by itself
    s.stop()
    assert len(calls) == 1 and isinstance(s.error, OSError)
    err = capsys.readouterr().err
    assert err.count("system metrics: stopped after 0 sample(s): OSError: store gone") == 1


def test_start_never_raises_and_keeps_cpu_metrics_without_a_driver(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    sampler = sm.start(
        tracking_uri=uri,
        run_id=run_id,
        interval_s=60,
        node_id=NODE,
        rank=0,
        node_keys=True,
        uuids=["GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"],
        nvml=FakeNvml(driver=False),
    )
    assert sampler is not None
    sampler._last -= 2  # as if two seconds had passed: stop takes a sample
    sampler.stop()
    run = client.get_run(run_id)
    assert run.data.metrics["system/a1b2c3d4/rank0/rss_gib"] > 0
    assert 0 <= run.data.metrics["system/a1b2c3d4/cpu_percent"] <= 100
    assert not any("gpu" in k for k in run.data.metrics)
    assert run.data.tags["system/a1b2c3d4/node_id"] == NODE
    assert run.data.tags["system/interval_s"] == "60"
    assert "no GPU metrics on rank 0: NVMLError" in capsys.readouterr().err
    # a store that cannot be reached: said, not raised
    assert (
        sm.start(
            tracking_uri=uri,
            run_id="nope",
            interval_s=60,
            node_id=NODE,
            rank=0,
            node_keys=True,
            uuids=[],
        )
        is None
    )
    assert "system metrics: not started on rank 0" in capsys.readouterr().err


def test_the_sweep_file_switch():
    assert load_spec(None).system_metrics.enabled is True  # the quickstart shows them
    auto = load_spec(None, ["system_metrics.enabled=auto"]).system_metrics
    assert (auto.active(0), auto.active(0.5), auto.interval_s) == (False, True, 5.0)
    assert SystemMetricsSpec() == SystemMetricsSpec(enabled="auto", interval_s=10.0)
    off = load_spec(None, ["system_metrics=off"]).system_metrics
    assert not off.active(1)
    with pytest.raises(SpecError) as e:
        load_spec(None, ["system_metrics.enabled=sometimes", "system_metrics.interval_s=0.1"])
    assert sorted(e.value.errors) == [
        "system_metrics.enabled: expected auto, on or off, got 'sometimes'"
        " (auto: on when resources.gpus_per_worker > 0)",
        "system_metrics.interval_s: must be at least 1, got 0.1",
    ]


def test_the_overhead_benchmark_runs_and_writes_its_row(tmp_path, capsys):
    from orchestrator.bench.system_metrics import main

    argv = ["--interval-s", "1", "--block-s", "0.2", "--repeats", "1", "--samples", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CPU time: " in out and "one sample (read + log_batch" in out
    assert "system_metrics_overhead" in (tmp_path / "bench.json").read_text()
