"""Old import paths of the classes a sweep's saved state names, kept loadable after a move.

Tune pickles a sweep's searcher (`BudgetAwareOptunaSearch`) and the driver's callbacks by
module path, and `Tuner.restore` unpickles them by the same paths: a sweep started before a
module moved must still resume after it. A moved module's old name resolves, lazily, to its
new module (importing `orchestrator` stays free: the Train controller imports it); a class
that moved out of a module that still exists is found through that module's `__getattr__`.
Add a line here when you move a module or class that a sweep's Tune state can name.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

# old module -> new module (the layout of issue 26)
MODULES = {
    "orchestrator.search_space": "orchestrator.tune_objects",
    "orchestrator.compute": "orchestrator.cost",
    "orchestrator.phases": "orchestrator.phase_marks",
    "orchestrator.worker_log": "orchestrator.worker.log",
    "orchestrator.system_metrics": "orchestrator.worker.system_metrics",
    "orchestrator.tune_report": "orchestrator.worker.tune_report",
    "orchestrator.ray_hooks": "orchestrator.worker.ray_hooks",
}
# (module that still exists, class) -> the module it moved to
NAMES = {
    ("orchestrator.console", "StatusTable"): "orchestrator.callbacks",
    ("orchestrator.study", "StudyRecorder"): "orchestrator.callbacks",
}


class _Alias(types.ModuleType):
    """Stands in sys.modules under a moved module's old name; reads go to the new module."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"moved to {new}")
        self._new = new

    def __getattr__(self, name: str) -> Any:
        # Tools that scan sys.modules (torch's import does) ask every module for dunders:
        # answering those must not import the new module in the middle of another import.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(self._new), name)


def install() -> None:
    """Register every moved module's old name (cheap: nothing is imported until read)."""
    for old, new in MODULES.items():
        sys.modules.setdefault(old, _Alias(old, new))


def moved_names(module: str) -> Callable[[str], Any]:
    """A module `__getattr__` that finds the classes which moved out of `module`."""

    def __getattr__(name: str) -> Any:
        target = NAMES.get((module, name))
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return getattr(importlib.import_module(target), name)

    return __getattr__
