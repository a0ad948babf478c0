"""CPU-hours, GPU-hours and their cost: what a trial holds times how long, restarts included."""

from __future__ import annotations

import pytest

from orchestrator.cost import (
    COST,
    CPU_HOURS,
    GPU_HOURS,
    WALL_HOURS,
    ComputeClock,
    Held,
    cost,
    format_compute,
    sweep_compute,
)
from search_spaces.spec import ResourcesSpec


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_held_counts_every_worker_of_the_trial():
    held = Held.of(ResourcesSpec(workers_per_trial=4, cpus_per_worker=8, gpus_per_worker=1))
    assert held == Held(cpus=32, gpus=4)
    assert Held.of(ResourcesSpec(gpus_per_worker=0.25)) == Held(cpus=1, gpus=0.25)


def test_clock_scales_wall_time_by_what_is_held():
    now = FakeTime()
    clock = ComputeClock(Held(cpus=8, gpus=2), now=now)
    assert clock.hours() == {WALL_HOURS: 0.0, CPU_HOURS: 0.0, GPU_HOURS: 0.0}
    now.t += 1800  # half an hour
    assert clock.hours() == pytest.approx({WALL_HOURS: 0.5, CPU_HOURS: 4.0, GPU_HOURS: 1.0})


def test_a_restarted_attempt_carries_on_from_the_earlier_ones():
    now = FakeTime()
    clock = ComputeClock(Held(cpus=1, gpus=1), earlier_wall_hours=2.0, now=now)
    now.t += 3600
    assert clock.hours()[GPU_HOURS] == pytest.approx(3.0)


def test_cost_uses_the_prices_given_and_only_those():
    hours = {WALL_HOURS: 1.0, CPU_HOURS: 8.0, GPU_HOURS: 2.0}
    assert cost(hours, ResourcesSpec()) is None
    assert cost(hours, ResourcesSpec(price_per_gpu_hour=2.5)) == pytest.approx(5.0)
    both = ResourcesSpec(price_per_gpu_hour=2.5, price_per_cpu_hour=0.1)
    assert cost(hours, both) == pytest.approx(5.8)
    # a trial row whose run logged no hours (summary rows carry None for them)
    assert cost({WALL_HOURS: None, CPU_HOURS: None, GPU_HOURS: None}, both) == 0


def test_sweep_sums_every_trial_that_logged_hours():
    trials = [
        {WALL_HOURS: 1.0, CPU_HOURS: 4.0, GPU_HOURS: 1.0},
        {WALL_HOURS: 0.5, CPU_HOURS: 2.0, GPU_HOURS: 0.5},  # e.g. a failed trial: it held them too
        {WALL_HOURS: None, CPU_HOURS: None, GPU_HOURS: None},  # never started its workers
    ]
    total = sweep_compute(trials, ResourcesSpec(price_per_gpu_hour=3.0))
    assert total == pytest.approx(
        {WALL_HOURS: 1.5, CPU_HOURS: 6.0, GPU_HOURS: 1.5, "trials_counted": 2, COST: 4.5}
    )
    assert COST not in sweep_compute(trials, ResourcesSpec())


def test_the_summary_line_names_hours_and_cost():
    resources = ResourcesSpec(price_per_gpu_hour=2.5)
    line = format_compute(sweep_compute([{GPU_HOURS: 2.0, CPU_HOURS: 8.0}], resources), resources)
    assert line == (
        "Compute held: 2 GPU-hours, 8 CPU-hours over 1 trial(s), restarts included;"
        " cost 5.00 at 2.5 per GPU-hour"
    )
