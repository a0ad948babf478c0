"""Set-up run in every Ray worker process of a local sweep. Imports nothing heavy: every
actor Ray starts (trial drivers, Train controllers, helpers) runs it."""

import logging


def quiet_worker_logs() -> None:
    """Without the dashboard (which costs a laptop ~15 s per trial) Ray Train's
    placement-group cleaner cannot query actor states and warns every second. A local
    instance dies with its driver, so nothing it would clean can leak; keep its errors."""
    logging.getLogger(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    ).setLevel(logging.ERROR)
