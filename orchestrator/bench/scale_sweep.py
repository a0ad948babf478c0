"""The driver's bookkeeping over a long real sweep: `python -m orchestrator.bench.scale_sweep`.

Runs `python -m orchestrator.sweep`'s main in this process on a sweep of N (default 200)
one-epoch trials of the cheapest model on a tiny synthetic dataset (no SHP analysis), with
the sweep's own searcher (BudgetAwareOptunaSearch, TPE) and callbacks, and times what the
driver does per trial: every call of the Tune callbacks (MlflowStatusCallback,
StatusTable, ...) and of the searcher (suggest, on_trial_result, on_trial_complete), as
wall and CPU seconds of the driver's thread, summed per trial in the order the trials
ended. It also samples the driver process's resident memory (RSS) every second.

Prints, and writes as JSON to --out: the sweep's wall time, the per-trial bookkeeping at
trials ~10 and ~N (median of a window of 10), and the RSS at the first and the last
trial's end. The figure compared is CPU seconds: on a shared 2-core machine the wall
seconds also hold other processes' time slices.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import yaml
from ray.tune import Callback
from ray.tune.execution.tune_controller import TuneController

from cct.cli import OneLineParser
from cct.perf.timing import load_average
from orchestrator import callbacks
from orchestrator.sweep import main as sweep_main
from orchestrator.tune_objects import BudgetAwareOptunaSearch

TIMED_CALLBACK_HOOKS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")
TIMED_SEARCHER_HOOKS = ("suggest", "on_trial_result", "on_trial_complete")


def sweep_file(trials: int, concurrent: int) -> dict[str, Any]:
    """The cheapest sweep the product runs: one epoch of a 1-block CCT on 256 8x8 images."""
    return {
        "name": "scale_sweep",
        "base": {
            "model": {
                "variant": "cct_2_3x2_32",
                "tokenizer_layers": 1,
                "depth": 1,
                "embed_dim": 16,
                "attn_dropout": 0.0,
                "drop_path": 0.0,
            },  # fmt: skip
            "data": {
                "dataset": "synthetic",
                "synthetic_train": 256,
                "synthetic_test": 64,
                "synthetic_size": 8,
                "val_size": 64,
            },  # fmt: skip
            "optim": {"epochs": 1, "batch_size": 64, "lr": 2.0e-3, "warmup_epochs": 0},
            "latency_runs": 2,
        },
        "search": {
            "model.num_heads": {"choice": [1, 2, 4]},
            "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
        },  # fmt: skip
        "tune": {
            "searcher": "optuna-tpe",
            "num_samples": trials,
            "objectives": {"val_accuracy": "max"},
        },  # fmt: skip
        "resources": {
            "workers_per_trial": 1,
            # room for `concurrent` trials (and their 0.01-CPU trial functions) on 2 CPUs
            "cpus_per_worker": round(1.9 / concurrent, 2),
            "gpus_per_worker": 0,
            "max_concurrent_trials": concurrent,
        },  # fmt: skip
        "analysis": {"blocks": "none"},
    }


class Ledger:
    """Seconds spent in the timed hooks, per trial id, and the order trials ended in."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.ended: list[tuple[str, float, int]] = []  # trial id, time, RSS bytes
        self.process = psutil.Process()
        # Tune's own loop (TuneController.step, which also saves the experiment's state):
        # thread CPU seconds so far, and the driver process's CPU seconds (all its threads)
        self.loop_cpu = 0.0
        self.at_end: list[tuple[float, float]] = []  # (loop CPU, process CPU) at each end

    def add(self, trial_id: str, wall: float, cpu: float) -> None:
        self.wall[trial_id] += wall
        self.cpu[trial_id] += cpu

    def trial_ended(self, trial_id: str) -> None:
        self.ended.append((trial_id, time.time(), self.process.memory_info().rss))
        used = self.process.cpu_times()
        self.at_end.append((self.loop_cpu, used.user + used.system))


LEDGER = Ledger()


def _trial_id(args: tuple, kwargs: dict) -> str:
    """The trial a hook call is about: a Tune Trial (callbacks) or its id (searcher)."""
    trial = kwargs.get("trial", kwargs.get("trial_id"))
    if trial is None:
        trial = next((a for a in args if isinstance(a, str) or hasattr(a, "trial_id")), "?")
    return trial if isinstance(trial, str) else trial.trial_id


def timed(fn):
    """fn, with its wall and thread CPU seconds charged to the trial it is called for."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(self, *args, **kwargs)
        finally:
            LEDGER.add(_trial_id(args, kwargs), time.perf_counter() - w, time.thread_time() - c)

    return wrapper


def instrument() -> None:
    """Wrap the hooks of every driver-side callback class and of the searcher."""
    classes = [c for c in vars(callbacks).values()
               if isinstance(c, type) and issubclass(c, Callback) and c is not Callback]  # fmt: skip
    for cls in classes:
        for hook in TIMED_CALLBACK_HOOKS:
            if hook in vars(cls):
                setattr(cls, hook, timed(vars(cls)[hook]))
    for hook in TIMED_SEARCHER_HOOKS:
        original = getattr(BudgetAwareOptunaSearch, hook)
        setattr(BudgetAwareOptunaSearch, hook, timed(original))
    controller = TuneController.step

    @functools.wraps(controller)
    def step(self):
        c = time.thread_time()
        try:
            return controller(self)
        finally:
            LEDGER.loop_cpu += time.thread_time() - c

    TuneController.step = step
    # the end of a trial, after every callback has seen it (MlflowStatusCallback runs first)
    status = callbacks.MlflowStatusCallback.on_trial_complete

    @functools.wraps(status)
    def complete(self, iteration, trials, trial, **info):
        status(self, iteration, trials, trial, **info)
        LEDGER.trial_ended(trial.trial_id)

    callbacks.MlflowStatusCallback.on_trial_complete = complete


def window(values: list[float], at: int, width: int = 10) -> float:
    """The median of `values` around position `at` (1-based), `width` values wide."""
    lo = max(0, min(at - width // 2, len(values) - width))
    return statistics.median(values[lo : lo + width])


def figures(wall_s: float, rss_start: int) -> dict[str, Any]:
    """What the closing note reports, from the ledger."""
    order = [t for t, _, _ in LEDGER.ended]
    n = len(order)
    cpu = [LEDGER.cpu[t] for t in order]
    wall = [LEDGER.wall[t] for t in order]
    rss = [r for _, _, r in LEDGER.ended]
    # between one trial's end and the next: Tune's loop and the whole driver process
    loop = [b[0] - a[0] for a, b in zip(LEDGER.at_end, LEDGER.at_end[1:])]
    proc = [b[1] - a[1] for a, b in zip(LEDGER.at_end, LEDGER.at_end[1:])]
    first, last = min(10, n), n
    return {
        "trials_ended": n,
        "sweep_wall_s": wall_s,
        "per_trial_cpu_s": {f"trial_{first}": window(cpu, first), f"trial_{last}": window(cpu, last)},
        "per_trial_wall_s": {f"trial_{first}": window(wall, first), f"trial_{last}": window(wall, last)},
        "loop_cpu_s_between_ends": _ends(loop, first, last),
        "process_cpu_s_between_ends": _ends(proc, first, last),
        "rss_mb": {"start": rss_start / 2**20, "first_trial_end": rss[0] / 2**20,
                   "last_trial_end": rss[-1] / 2**20},  # fmt: skip
        "rss_growth_kb_per_trial": (rss[-1] - rss[0]) / max(1, n - 1) / 1024,
        "per_trial_cpu_s_all": cpu,
        "rss_mb_all": [r / 2**20 for r in rss],
        "loop_cpu_s_all": loop,
        "process_cpu_s_all": proc,
    }  # fmt: skip


def _ends(values: list[float], first: int, last: int) -> dict[str, float]:
    if not values:
        return {}
    return {f"trial_{first}": window(values, first), f"trial_{last}": window(values, last - 1)}


def run(trials: int, concurrent: int, folder: Path) -> dict[str, Any]:
    """The instrumented sweep in `folder`; its figures."""
    instrument()
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep_file(trials, concurrent)))
    os.chdir(folder)  # the sweep's mlflow.db and ray_results go here
    rss_start = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    # a sweep stopped early (SIGINT from `timeout -s INT`) still reports the trials it ended
    code = sweep_main(["--config", "sweep.yaml", "--fresh"])
    wall = time.perf_counter() - t0
    if not LEDGER.ended:
        raise RuntimeError(f"the sweep exited {code} before any trial ended")
    return {"exit_code": code, **figures(wall, rss_start)}


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m orchestrator.bench.scale_sweep", description=__doc__.split("\n")[0]
    )
    p.add_argument("--trials", type=int, default=200, help="trials in the sweep (default 200)")
    p.add_argument("--concurrent", type=int, default=2, help="max_concurrent_trials (default 2)")
    p.add_argument("--out", type=Path, required=True, help="the figures as JSON")
    args = p.parse_args(argv)
    out = args.out.resolve()
    print(f"scale sweep: {args.trials} trials, load average {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cct-scale-sweep-") as tmp:
        found = run(args.trials, args.concurrent, Path(tmp))
    found["load_average_end"] = load_average()
    out.write_text(json.dumps(found, indent=2))
    brief = {k: v for k, v in found.items() if not k.endswith("_all")}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
