"""Timers that make an ours/reference ratio robust on a noisy, shared machine: both sides are
timed in alternating order (AB BA AB ...), so slow phases of the machine hit both, and each
side reports the median of its repeats."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cct.device import sync


def seconds_per_call(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean seconds of `calls` calls timed together, synchronised only at both ends so the
    host queues ahead as it does in training."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls


def steady_loader_seconds(
    step: Callable[[], object], *, in_flight: int, calls: int, device: torch.device
) -> float:
    """seconds_per_call of a step that draws from a DataLoader, in its steady state, and
    leaving its workers idle. The workers keep `in_flight` batches on the way: that many are
    first taken untimed, so the timed calls start with none ready, and after them the
    workers finish what is on the way before this returns, so that they do not share the
    CPU with what is timed next."""
    seconds_per_call(step, in_flight, device)
    seconds = seconds_per_call(step, calls, device)
    time.sleep(2 * in_flight * seconds)  # the time those batches take, with a margin
    return seconds


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Paired:
    """The repeats of both sides of one figure, and their medians."""

    ours: list[float]
    reference: list[float]

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def reference_median(self) -> float:
        return statistics.median(self.reference)


def interleaved(
    ours: Callable[[], float],
    reference: Callable[[], float],
    repeats: int,
    *,
    label: str,
    unit: str,
) -> Paired:
    """Call `ours` and `reference` `repeats` times each, alternating which goes first."""
    out = Paired([], [])
    for r in range(repeats):
        order = [("ours", ours, out.ours), ("reference", reference, out.reference)]
        for side, measure, values in order if r % 2 == 0 else order[::-1]:
            values.append(measure())
            print(
                f"  {label}: {side} repeat {r + 1}/{repeats}: {values[-1]:,.4g} {unit}",
                flush=True,
            )
    return out
