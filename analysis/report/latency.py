"""Latency for the report: the in-sweep figure is noisy when trials shared the device (SPEC 5),
so the finalists are re-measured here one at a time from their checkpoints with cct.measure.

Each finalist is timed in ROUNDS rounds, the models taking turns round by round (a drift of
the machine's load then hits every model alike); the median of each round is what the
conv-substitution test compares, so its spread is the run-to-run spread.

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
from analysis.progress import bar
from analysis.report.collect import Trial

MAX_FINALISTS = 4
ROUNDS = 5  # timing rounds per finalist (the conv test needs >= 4: verdicts.MIN_LATENCY_ROUNDS)


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
    rounds: tuple[float, ...] = ()  # re-measured: median ms of each timing round


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


def load_finalist(run_id: str, fetch: Callable[[str, Path], Path], device: str):
    """The run's model from its checkpoint (fetch(run_id, dst) -> folder), on `device`."""
    import torch

    from cct.checkpoint import load_model

    with tempfile.TemporaryDirectory(prefix="cct-report-ckpt-") as tmp:
        folder = fetch(run_id, Path(tmp))
        model, _ = load_model(folder, map_location=device)
    return model.to(torch.device(device))


def time_rounds(
    models: dict[str, object],
    *,
    runs: int,
    rounds: int = ROUNDS,
    device: str = "cpu",
    threads: int = 1,
) -> dict[str, Latency]:
    """Batch-1 latency of each model in `rounds` rounds of runs // rounds forwards (after
    warm-up), the models taking turns; throughput at batch 64 (the in-sweep figure's batch),
    fp32. On the CPU with `threads` threads (the sweep's workers run one each; more make
    batch-1 timings of small models noisier, not faster)."""
    import statistics

    import torch

    from cct.measure import device_name, time_forward

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    per_round = max(5, runs // rounds)
    times: dict[str, list[list[float]]] = {k: [] for k in models}
    ticks = bar((rounds + 1) * len(models), "re-measuring latency", unit="timing")
    try:
        for _ in range(rounds):
            for run_id, model in models.items():
                s = model.settings
                shape = (s.in_channels, s.img_size, s.img_size)
                times[run_id].append(
                    time_forward(model, shape, batch_size=1, runs=per_round, warmup=3)
                )
                ticks.update()
        out = {}
        for run_id, model in models.items():
            s = model.settings
            shape = (s.in_channels, s.img_size, s.img_size)
            batch = time_forward(model, shape, batch_size=64, runs=max(5, runs // 10), warmup=2)
            ticks.update()
            flat = [t for r in times[run_id] for t in r]
            rounds_ms = tuple(1e3 * statistics.median(r) for r in times[run_id])
            out[run_id] = Latency(
                run_id=run_id,
                latency_ms=statistics.median(rounds_ms),  # what the conv test compares
                throughput=64 / statistics.median(batch),
                source="re-measured",
                device=device_name(next(model.parameters()).device),
                precision="fp32",
                runs=len(flat),
                shared=False,
                rounds=rounds_ms,
            )
        return out
    finally:
        ticks.close()
        torch.set_num_threads(before)


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
    models = {}
    for run_id in dict.fromkeys([*finalists(trials), *best_per_conv_blocks(trials)]):
        try:
            models[run_id] = load_finalist(run_id, fetch, device)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # no/odd checkpoint
            out[run_id] = logged(by_id[run_id], note=f"not re-measured: {type(e).__name__}: {e}")
    if models:
        out.update(time_rounds(models, runs=runs, device=device, threads=threads))
    return out
