"""What sampling system metrics costs a CPU training step:
`python -m orchestrator.bench.system_metrics [--out DIR]`.

Times the engine's training step (cct/perf's one trial of a small sweep, `cct_2_3x2_32` on
32 px random images, batch 64, on one torch thread as Ray gives a 1-CPU worker) in blocks of
about `--block-s` seconds, alternately with a worker's sampler running at `--interval-s` (the
sweep file's default; a node-keys rank, writing to a temporary sqlite MLflow store as a trial's
does) and without one, AB BA ... so slow phases of a shared machine hit both. Separately it
times one sample (the readings plus their `log_batch`), the cost the interval spreads out.
Prints the median CPU time per step both ways (this process's, the sampler's thread included:
on a shared machine other processes stretch the wall time, printed too, but not this), and the
sample's cost as a share of the interval; with --out the row is merged into DIR/bench.json
and DIR/bench.md (cct/perf/report.py).
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from cct.cli import OneLineParser, fail
from cct.perf.report import JSON_NAME, make_row, merge_rows, run_info
from cct.perf.suite.cases import SMALL_TRIAL, model_pair, our_training_step, random_data
from cct.perf.suite.steps import Step
from cct.perf.timing import interleaved, load_average, seconds_per_call
from orchestrator.worker.system_metrics import Probe, Sampler
from search_spaces import SystemMetricsSpec

BATCH, IMG_SIZE = 64, 32
NODE_ID = "bench000" + "0" * 48
CPU = torch.device("cpu")


class Store:
    """A trial's run in a temporary sqlite store, and the probe a node's first rank uses."""

    def __init__(self, folder: Path) -> None:
        self.client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        experiment = self.client.create_experiment("system-metrics-bench")
        self.run_id = self.client.create_run(experiment).info.run_id
        self.probe = Probe(node_id=NODE_ID, rank=0, node_keys=True)

    def write(self, metrics: list) -> None:
        self.client.log_batch(self.run_id, metrics=metrics)

    def sampler(self, interval_s: float) -> Sampler:
        return Sampler(self.probe.read, self.write, interval_s=interval_s, origin_s=time.time())


def sample_seconds(store: Store, samples: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one sample (read + log_batch), on this thread. The CPU
    time is what a sample can take from training; the wall time adds sqlite's disk waits and,
    on a busy machine, other processes' turns."""
    sampler, wall, cpu = store.sampler(1.0), [], []  # not started: sampled here, by hand
    for _ in range(samples):
        t0, c0 = time.perf_counter(), time.thread_time()
        store.write(sampler.metrics())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def step_ms(step: Step, calls: int, sampler: Sampler | None, walls: list[float]) -> float:
    """CPU milliseconds of this process per step over `calls` steps (the sampler's thread
    included), its wall milliseconds appended to `walls`; `sampler` runs through the steps
    (its start and its last sample at stop stay outside the timing). The CPU time is the
    figure: other processes on a shared machine stretch the wall time, not it."""
    if sampler is not None:
        sampler.start()
    try:
        c0 = time.process_time()
        walls.append(1e3 * seconds_per_call(step, calls, CPU))
        return 1e3 * (time.process_time() - c0) / calls
    finally:
        if sampler is not None:
            sampler.stop()
            if sampler.error is not None:
                raise RuntimeError(f"the sampler failed: {sampler.error}")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m orchestrator.bench.system_metrics", description=__doc__.split("\n")[0]
    )
    p.add_argument("--interval-s", type=float, default=SystemMetricsSpec().interval_s)
    p.add_argument("--block-s", type=float, default=None, help="default: 2 intervals")
    p.add_argument("--repeats", type=int, default=3, help="blocks per side")
    p.add_argument("--samples", type=int, default=30, help="samples timed alone")
    p.add_argument("--out", type=Path, default=None, help="report folder (bench.json/bench.md)")
    args = p.parse_args(argv)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out}: not a folder")
    block_s = args.block_s or 2 * args.interval_s
    torch.set_num_threads(1)
    start = load_average()
    model, _ = model_pair(SMALL_TRIAL, img_size=IMG_SIZE, quick=False, device=CPU)
    step = our_training_step(model, random_data(1024, IMG_SIZE, CPU), batch_size=BATCH, bf16=False)
    warm = seconds_per_call(step, 5, CPU)
    calls = max(1, math.ceil(block_s / seconds_per_call(step, max(1, int(2 / warm)), CPU)))
    print(f"{SMALL_TRIAL.variant} step on CPU, batch {BATCH}: {calls} steps per block of"
          f" ~{block_s:g} s, sampler every {args.interval_s:g} s (load average {start})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cct-sysmetrics-") as tmp:
        store = Store(Path(tmp))
        one, one_cpu = sample_seconds(store, args.samples)
        wall_on: list[float] = []
        wall_off: list[float] = []
        paired = interleaved(
            lambda: step_ms(step, calls, store.sampler(args.interval_s), wall_on),
            lambda: step_ms(step, calls, None, wall_off),
            args.repeats,
            label="step CPU time",
            unit="ms",
        )
    on, off = paired.ours_median, paired.reference_median
    share = one_cpu / args.interval_s
    print(f"training step, CPU time: {off:.2f} ms without the sampler, {on:.2f} ms with it"
          f" ({100 * (on / off - 1):+.2f} %, medians of {args.repeats} blocks each)")  # fmt: skip
    print(f"training step, wall time: {statistics.median(wall_off):.2f} ms without,"
          f" {statistics.median(wall_on):.2f} ms with (blocks: {_ms(wall_off)} / {_ms(wall_on)})")  # fmt: skip
    print(f"one sample (read + log_batch to sqlite): {1e3 * one:.1f} ms wall, {1e3 * one_cpu:.1f}"
          f" ms CPU, every {args.interval_s:g} s = {100 * share:.3f} % of one core")  # fmt: skip
    if args.out is not None:
        row = make_row(
            "system_metrics_overhead",
            figure="training step's CPU time with the system-metrics sampler, ms",
            config=f"{SMALL_TRIAL.variant} 32 px, batch {BATCH}, 1 CPU thread,"
            f" sample every {args.interval_s:g} s",
            unit="ms",
            higher_is_better=False,
            ours=paired.ours,
            reference=paired.reference,
            notes=f"ours: sampler on; reference: off; one sample {1e3 * one:.1f} ms wall,"
            f" {1e3 * one_cpu:.1f} ms CPU",
            sample_ms=1e3 * one,
            sample_cpu_ms=1e3 * one_cpu,
            wall_ms_on=wall_on,
            wall_ms_off=wall_off,
        )
        run = run_info("orchestrator.bench.system_metrics", "cpu (1 thread)", start)
        merge_rows(args.out / JSON_NAME, [row], run=run)
        print(f"wrote {args.out / JSON_NAME} and {args.out / 'bench.md'}")
    return 0


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
