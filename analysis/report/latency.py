"""Latency for the report: the in-sweep figure is noisy when trials shared the device (SPEC 5),
so the finalists are re-measured here one at a time from their checkpoints with cct.measure.

Finalists: the Pareto front of validation accuracy (max) against MACs (min), best accuracy
first, capped at MAX_FINALISTS; plus, for the conv-substitution claim, the best trial (by
validation accuracy) of each conv_blocks value. `--no-remeasure` keeps the logged figures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.pareto import pareto_front
from analysis.report.collect import Trial

MAX_FINALISTS = 4


@dataclass(frozen=True)
class Latency:
    run_id: str
    latency_ms: float | None  # median batch-1 forward
    throughput: float | None  # images/s
    source: str  # "re-measured" | "logged in-sweep" | "unavailable"
    device: str
    precision: str
    runs: int | None = None
    shared: bool | None = None  # in-sweep figure taken while trials shared the device
    note: str = ""


def finalists(trials: Sequence[Trial], cap: int = MAX_FINALISTS) -> list[str]:
    """Run ids of the Pareto front of validation accuracy against MACs, at most `cap`."""
    rows = [{"run_id": t.run_id, **t.metrics} for t in trials]
    front = pareto_front(rows, (("val_accuracy", "max"), ("macs", "min")))
    front.sort(key=lambda r: (-r["val_accuracy"], r["macs"], r["run_id"]))  # best first
    return [r["run_id"] for r in front[:cap]]


def best_per_conv_blocks(trials: Sequence[Trial]) -> list[str]:
    """Run id of the best trial (validation accuracy) of each conv_blocks value."""
    best: dict[object, Trial] = {}
    for t in sorted(trials, key=lambda t: -(t.metric("val_accuracy") or -1.0)):
        best.setdefault(t.arch.get("conv_blocks"), t)
    return [best[c].run_id for c in sorted(best, key=str)]


def logged(t: Trial, note: str = "") -> Latency:
    shared = t.tags.get("latency_shared")
    return Latency(
        run_id=t.run_id,
        latency_ms=t.metric("latency_ms"),
        throughput=t.metric("throughput"),
        source="logged in-sweep" if t.metric("latency_ms") is not None else "unavailable",
        device=t.tags.get("device", "?"),
        precision=t.tags.get("precision", "?"),
        shared=None if shared is None else shared == "true",
        note=note,
    )


def remeasure(
    run_id: str,
    fetch: Callable[[str, Path], Path],
    *,
    runs: int,
    device: str = "cpu",
    threads: int = 1,
) -> Latency:
    """Load the run's checkpoint (fetch(run_id, dst) -> folder) and time it alone: median
    batch-1 latency over `runs` forwards after warm-up, throughput at batch 64 (the batch the
    in-sweep figure used), fp32. On the CPU with `threads` threads (the sweep's workers run
    one each; more threads make batch-1 timings of small models noisier, not faster)."""
    import torch

    from cct.checkpoint import load_model
    from cct.measure import measure_speed

    with tempfile.TemporaryDirectory(prefix="cct-report-ckpt-") as tmp:
        folder = fetch(run_id, Path(tmp))
        model, _ = load_model(folder, map_location=device)
    s = model.settings
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        speed = measure_speed(
            model.to(torch.device(device)),
            (s.in_channels, s.img_size, s.img_size),
            batch_size=64,
            runs=runs,
        )
    finally:
        torch.set_num_threads(before)
    return Latency(
        run_id=run_id,
        latency_ms=speed.latency_ms,
        throughput=speed.throughput,
        source="re-measured",
        device=speed.device,
        precision=speed.precision,
        runs=speed.runs,
        shared=False,
    )


def latencies(
    trials: Sequence[Trial],
    fetch: Callable[[str, Path], Path] | None,
    *,
    runs: int = 100,
    device: str = "cpu",
    threads: int = 1,
) -> dict[str, Latency]:
    """Latency per run id: every trial's logged figure, replaced by a fresh measurement for
    the finalists and the best trial per conv_blocks when `fetch` is given (None:
    --no-remeasure). A finalist whose checkpoint cannot be loaded keeps its logged figure,
    with the reason in `note`."""
    out = {t.run_id: logged(t) for t in trials}
    if fetch is None:
        return out
    by_id = {t.run_id: t for t in trials}
    for run_id in dict.fromkeys([*finalists(trials), *best_per_conv_blocks(trials)]):
        try:
            out[run_id] = remeasure(run_id, fetch, runs=runs, device=device, threads=threads)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # no/odd checkpoint
            out[run_id] = logged(by_id[run_id], note=f"not re-measured: {type(e).__name__}: {e}")
    return out
