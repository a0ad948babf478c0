"""Progress bars for long local work (the SHP analysis, the report's re-measured latencies,
reading a sweep's trials for a committee), drawn on stderr when it is a terminal.

Off elsewhere: inside a sweep's Ray workers, in SLURM logs and in CI a bar is a stream of
carriage returns. `CCT_PROGRESS=1` draws it anyway, `CCT_PROGRESS=0` never.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

FORCE_ENV = "CCT_PROGRESS"
T = TypeVar("T")


def wanted() -> bool:
    forced = os.environ.get(FORCE_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str = "step") -> tqdm:
    """A bar of `total` steps: `.update()` after each, `.set_postfix_str` for what runs."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not wanted(),
        leave=False,  # the summary that follows is what stays on the screen
        dynamic_ncols=True,
    )


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """`items`, drawing a bar as they are consumed."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total or 0, desc, unit) as b:
        for item in items:
            yield item
            b.update()
