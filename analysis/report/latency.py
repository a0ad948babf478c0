"""Latency for the report: the in-sweep figure is noisy when trials shared the device (SPEC 5),
so the finalists are re-measured here one at a time from their checkpoints with cct.measure.

Each finalist is timed in rounds, the models taking turns round by round in an order
shuffled afresh each round (a drift of the machine's load then hits every model alike, and
no model always runs first after another's warm caches); the median of each round is what
the conv-substitution test compares, so its spread is the run-to-run spread. How many rounds:
at least ROUNDS, and as many as the conv test needs at its corrected level
(stats.rounds_for(level / comparisons)).

Finalists: the Pareto front of validation accuracy (max) against MACs (min), best accuracy
first, capped at MAX_FINALISTS; plus, for the conv-substitution claim, its matched pairs
(verdicts.conv_pairs: within a group sharing every other varied knob, the best trial of each
conv_blocks value), from the MAX_CONV_GROUPS groups with the best validation accuracy.
`--no-remeasure` keeps the logged figures.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.pareto import pareto_front
from analysis.progress import bar
from analysis.report.collect import Trial, knob_values, varied_knobs
from analysis.report.stats import LEVEL, rounds_for
from cct.checkpoint import load_model
from cct.measure import device_name, time_forward

MAX_FINALISTS = 4
MAX_CONV_GROUPS = 3  # matched groups re-measured for the conv claim (each costs a model per c)
ROUNDS = 5  # timing rounds per finalist at least; the conv test may need more (rounds_for)
ORDER_SEED = 0  # the shuffled order of the models within each round is reproducible


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


def conv_groups(trials: Sequence[Trial]) -> dict[tuple, dict[int, Trial]]:
    """Matched groups for the conv claim: every other varied architecture knob equal ->
    conv_blocks -> the group's best trial (validation accuracy); only groups holding
    conv_blocks = 0 and > 0, best group first, at most MAX_CONV_GROUPS."""
    done = [t for t in trials if t.metric("val_accuracy") is not None]
    others = [k for k in varied_knobs(done) if k != "conv_blocks"]
    groups: dict[tuple, dict[int, Trial]] = {}
    for t in sorted(done, key=lambda t: -(t.metric("val_accuracy") or -1.0)):
        c = int(t.arch.get("conv_blocks") or 0)
        groups.setdefault(knob_values(t, others), {}).setdefault(c, t)
    matched = {k: g for k, g in groups.items() if 0 in g and len(g) > 1}
    return dict(list(matched.items())[:MAX_CONV_GROUPS])


def conv_rounds(trials: Sequence[Trial], level: float = LEVEL) -> int:
    """Timing rounds per model: ROUNDS, or what the conv test's corrected level needs."""
    comparisons = sum(len(g) - 1 for g in conv_groups(trials).values())
    return max(ROUNDS, rounds_for(level / comparisons) if comparisons else 0)


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
    # deferred: torch and the model code cost seconds to import, only needed to re-measure

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
    batch-1 timings of small models noisier, not faster). The models' order is shuffled
    within each round (seeded)."""
    # deferred: torch costs seconds to import, only needed to re-measure

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    per_round = max(5, runs // rounds)
    times: dict[str, list[list[float]]] = {k: [] for k in models}
    ticks = bar((rounds + 1) * len(models), "re-measuring latency", unit="timing")
    order, rng = list(models), random.Random(ORDER_SEED)
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for run_id in order:
                model = models[run_id]
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
    matched = [t.run_id for g in conv_groups(trials).values() for t in g.values()]
    for run_id in dict.fromkeys([*finalists(trials), *matched]):
        try:
            models[run_id] = load_finalist(run_id, fetch, device)
        except (OSError, ValueError, KeyError, RuntimeError) as e:  # no/odd checkpoint
            out[run_id] = logged(by_id[run_id], note=f"not re-measured: {type(e).__name__}: {e}")
    if models:
        rounds = conv_rounds(trials)
        out.update(time_rounds(models, runs=runs, rounds=rounds, device=device, threads=threads))
    return out
