"""What Ray costs per trial: `python -m orchestrator.bench.overhead --out DIR`.

Runs a tiny real sweep (2 trials, one after the other, 1 worker each, 2 epochs on digits,
no SHP analysis) with `python -m orchestrator.sweep` in a temporary folder, and the same two
configurations with plain `python -m cct.train` (no Ray). For each trial:

    overhead = trial wall time - the training time the engine itself reports

where the Ray trial's wall time runs from the creation of its MLflow child run (the start of
the Tune trial function) to its end (set by the driver when Tune reports the trial complete),
a plain run's from its process start to its exit, and the training time is the sum of the
engine's per-epoch `epoch_seconds`. Both include the model's size/latency measurement,
evaluation and checkpointing; the difference between them is what Ray Tune + Ray Train add.
The row also carries each Ray trial's phase breakdown: the seconds between the marks of
orchestrator/phase_marks.py, from the trial actor's process start to the driver closing the run.
The row is merged into DIR/bench.json and DIR/bench.md (see cct/perf/report.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from analysis.runs import ROLE, TRIAL_ROLE
from cct.cli import OneLineParser, fail
from cct.perf.report import JSON_NAME, make_row, merge_rows, run_info
from cct.perf.timing import load_average
from orchestrator.phase_marks import ORDER, PREFIX, gaps

EPOCHS = 2
HEADS = (2, 4)  # one trial per head count
BASE: dict[str, Any] = {
    "model": {
        "variant": "cct_2_3x2_32",
        "tokenizer_layers": 1,
        "depth": 2,
        "embed_dim": 32,
        "attn_dropout": 0.0,
        "drop_path": 0.0,
    },
    "data": {"dataset": "digits", "augment": {"crop_padding": 1}},
    "optim": {"epochs": EPOCHS, "batch_size": 64, "lr": 2.0e-3, "warmup_epochs": 1},
    "latency_runs": 10,
}


def sweep_file() -> dict[str, Any]:
    return {
        "name": "overhead",
        "base": BASE,
        "search": {"model.num_heads": {"grid": list(HEADS)}},
        "tune": {"searcher": "random", "num_samples": 1, "objectives": {"val_accuracy": "max"}},
        # One trial at a time: a trial's overhead is not inflated by its neighbour's work.
        "resources": {
            "workers_per_trial": 1,
            "cpus_per_worker": 0.95,
            "gpus_per_worker": 0,
            "max_concurrent_trials": 1,
        },
        "analysis": {"blocks": "none"},
    }


def overhead_seconds(wall_s: float, epoch_seconds: list[float]) -> float:
    """Wall time not spent in the engine's training epochs."""
    return wall_s - sum(epoch_seconds)


def trial_overheads(runs: list[dict[str, Any]]) -> list[float]:
    """Per-trial overheads from MLflow child runs given as {start_ms, end_ms, epoch_seconds}.

    A run without an end time (still open, or killed) has no wall time and is skipped.
    """
    return [
        overhead_seconds((r["end_ms"] - r["start_ms"]) / 1e3, r["epoch_seconds"])
        for r in runs
        if r.get("end_ms") is not None and r.get("start_ms") is not None
    ]


def read_trial_runs(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """{start_ms, end_ms, epoch_seconds, phases} of every trial run of the experiment."""

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.{ROLE} = '{TRIAL_ROLE}'")
    return [
        {
            "start_ms": run.info.start_time,
            "end_ms": run.info.end_time,
            "epoch_seconds": [
                m.value
                for m in sorted(
                    client.get_metric_history(run.info.run_id, "epoch_seconds"),
                    key=lambda m: m.step,
                )
            ],
            "phases": phase_marks(client, run),
        }
        for run in runs
    ]


def phase_marks(client: Any, run: Any) -> dict[str, float]:
    """The run's phase marks (seconds since its trial function was entered), and
    `trial_closed`: its end time on the same clock (each mark's metric is timestamped with
    its wall-clock time, which places the run's end time among them)."""
    marks = {k: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}
    if not marks or run.info.end_time is None:
        return marks
    key = next(iter(marks))
    t0_ms = client.get_metric_history(run.info.run_id, key)[-1].timestamp - marks[key] * 1e3
    return {**marks, "trial_closed": (run.info.end_time - t0_ms) / 1e3}


def run_sweep(folder: Path) -> tuple[float, list[float], list[dict[str, float]]]:
    """(sweep wall seconds, per-trial overheads, per-trial phase gaps) of the tiny sweep
    run in `folder`."""
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep_file()))
    t0 = time.perf_counter()
    _run(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"],
        folder,
        env={**os.environ, "RAY_ADDRESS": ""},  # a fresh local instance
    )
    wall = time.perf_counter() - t0
    runs = read_trial_runs(f"sqlite:///{folder / 'mlflow.db'}", "overhead")
    runs.sort(key=lambda r: r["start_ms"])  # the trials in the order they ran
    if len(runs) != len(HEADS):
        raise RuntimeError(f"expected {len(HEADS)} trial runs in MLflow, found {len(runs)}")
    return wall, trial_overheads(runs), [gaps(r["phases"]) for r in runs]


def run_plain(folder: Path) -> list[float]:
    """Per-run overheads of the same configurations trained by `python -m cct.train`."""
    out = []
    for heads in HEADS:
        cfg = {**BASE, "model": {**BASE["model"], "num_heads": heads}}
        run = folder / f"plain-{heads}"
        run.mkdir()
        (run / "train.yaml").write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "cct.train", "--config", "train.yaml", "--out", "out"], run)
        wall = time.perf_counter() - t0
        history = json.loads((run / "out" / "metrics.json").read_text())["history"]
        out.append(overhead_seconds(wall, [h["epoch_seconds"] for h in history]))
    return out


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print(f"  $ {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {done.returncode}:\n{tail}")


def overhead_row(
    ray: list[float],
    plain: list[float],
    sweep_wall_s: float,
    phases: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The report row: Ray's per-trial overhead next to a plain process's, and each Ray
    trial's phase gaps (seconds)."""
    return make_row(
        "ray_overhead",
        figure="overhead per trial, s (wall - training)",
        config=f"{len(HEADS)} digits trials x {EPOCHS} epochs, 1 worker, one at a time",
        unit="s",
        higher_is_better=False,
        ours=ray,
        reference=plain,
        notes=f"ours: Ray Tune + Train trial; reference: plain `python -m cct.train`; "
        f"whole sweep incl. Ray start {sweep_wall_s:.0f} s",
        sweep_wall_s=sweep_wall_s,
        phases=phases or [],
    )


def print_phases(phases: list[dict[str, float]]) -> None:
    """One line per phase: its seconds in each trial."""
    names = sorted(
        {name for trial in phases for name in trial}, key=lambda n: ORDER.index(n.split("->")[0])
    )
    width = max((len(n) for n in names), default=0)
    for name in names:
        cells = ", ".join(f"{t[name]:5.2f}" if name in t else "    -" for t in phases)
        print(f"    {name:<{width}}  {cells} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m orchestrator.bench.overhead", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="report folder (bench.json/bench.md)")
    args = p.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        fail(f"--out {args.out}: not a folder")
    start = load_average()
    print(f"Ray overhead per trial (load average {start})", flush=True)
    with tempfile.TemporaryDirectory(prefix="cct-overhead-") as tmp:
        # Plain runs first: Ray's processes keep the CPU busy for a while after a sweep.
        plain = run_plain(Path(tmp))
        print(f"  plain runs: overhead {', '.join(f'{s:.1f}' for s in plain)} s", flush=True)
        sweep_wall, ray, phases = run_sweep(Path(tmp))
        print(f"  Ray trials: overhead {', '.join(f'{s:.1f}' for s in ray)} s", flush=True)
        print("  Ray trials by phase (seconds, one column per trial):", flush=True)
        print_phases(phases)
    row = overhead_row(ray, plain, sweep_wall, phases)
    run = run_info("orchestrator.bench.overhead", "cpu (Ray local, 1 CPU per trial)", start)
    merge_rows(args.out / JSON_NAME, [row], run=run)
    print(f"wrote {args.out / JSON_NAME} and {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
