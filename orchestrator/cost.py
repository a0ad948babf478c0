"""The compute a sweep holds: each trial's Ray resources times the wall time its workers ran,
as CPU-hours and GPU-hours, restarts included, and what that costs at the sweep file's prices.

Counted on the trial's rank 0, from the start of each attempt's training function (after Ray
has started the worker group) to its last log: the epochs, the final evaluation and the SHP
analysis. An attempt lost with its node counts up to its last epoch's log. What is held but
not counted: Ray starting the workers, and the trial function's own 0.01 CPU (it only waits on
its Train run). A sweep's figures are the sum over its trials, failed and stopped ones too:
they held their resources as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.spec import ResourcesSpec

WALL_HOURS = "wall_hours"
CPU_HOURS = "cpu_hours"
GPU_HOURS = "gpu_hours"
COST = "cost"
HOURS_KEYS = (WALL_HOURS, CPU_HOURS, GPU_HOURS)
HOURS_OF = {"GPU": GPU_HOURS, "CPU": CPU_HOURS}  # a price's unit -> the hours it applies to


@dataclass(frozen=True)
class Held:
    """What one trial's worker group holds while it runs."""

    cpus: float
    gpus: float

    @classmethod
    def of(cls, resources: ResourcesSpec) -> Held:
        n = resources.workers_per_trial
        return cls(cpus=n * resources.cpus_per_worker, gpus=n * resources.gpus_per_worker)


class ComputeClock:
    """The hours a trial has held so far: its earlier attempts' (as they last logged them)
    plus the running one's, measured from this clock's creation."""

    def __init__(
        self,
        held: Held,
        earlier_wall_hours: float = 0.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.held, self.earlier, self.now = held, earlier_wall_hours, now
        self.start = now()

    def hours(self) -> dict[str, float]:
        wall = self.earlier + (self.now() - self.start) / 3600
        return {
            WALL_HOURS: wall,
            CPU_HOURS: wall * self.held.cpus,
            GPU_HOURS: wall * self.held.gpus,
        }


def cost(hours: Mapping[str, float], resources: ResourcesSpec) -> float | None:
    """The price of `hours` at the sweep file's prices; None when it names none. Hours a
    trial never logged (None: its workers never started) cost nothing."""
    prices = resources.prices()
    if not prices:
        return None
    return sum(price * (hours.get(HOURS_OF[unit]) or 0.0) for unit, price in prices.items())


def sweep_compute(trials: Iterable[Mapping[str, Any]], resources: ResourcesSpec) -> dict[str, Any]:
    """The sum over the trials' last logged hours (a trial that logged none adds nothing),
    with its cost when the sweep file names a price."""
    totals = dict.fromkeys(HOURS_KEYS, 0.0)
    counted = 0
    for metrics in trials:
        if any(metrics.get(key) is not None for key in HOURS_KEYS):
            counted += 1
        for key in HOURS_KEYS:
            totals[key] += float(metrics.get(key) or 0.0)
    out: dict[str, Any] = {**totals, "trials_counted": counted}
    price = cost(totals, resources)
    if price is not None:
        out[COST] = price
    return out


def format_compute(compute: Mapping[str, Any], resources: ResourcesSpec) -> str:
    """One line for the final summary."""
    line = (
        f"Compute held: {compute[GPU_HOURS]:.3g} GPU-hours, {compute[CPU_HOURS]:.3g} CPU-hours"
        f" over {compute['trials_counted']} trial(s), restarts included"
    )
    if COST in compute:
        line += f"; cost {compute[COST]:.2f} at {' and '.join(resources.price_rates())}"
    return line
