"""A sweep saved before the layout changed still resumes after it: Tune unpickles the sweep's
searcher and callbacks by the module paths they had when it was saved (orchestrator/moved.py
keeps every old path loadable)."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

from orchestrator import moved
from orchestrator.callbacks import StatusTable


@pytest.mark.parametrize("old", sorted(moved.MODULES))
def test_a_moved_module_is_found_under_its_old_name(old):
    new = importlib.import_module(moved.MODULES[old])
    alias = importlib.import_module(old)
    public = [n for n in vars(new) if not n.startswith("_")]
    assert public and all(getattr(alias, n) is getattr(new, n) for n in public), old


@pytest.mark.parametrize(("module", "name"), sorted(moved.NAMES))
def test_a_moved_class_is_found_in_its_old_module(module, name):
    target = importlib.import_module(moved.NAMES[(module, name)])
    assert getattr(importlib.import_module(module), name) is getattr(target, name)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = importlib.import_module("orchestrator.console").no_such_thing


def as_saved_before(obj: object, new: str, old: str) -> bytes:
    """`obj` pickled as the code before the move wrote it (protocol 2 names classes by text)."""
    data = pickle.dumps(obj, protocol=2)
    assert new.encode() in data
    return data.replace(new.encode(), old.encode())


def test_a_callback_and_the_searcher_saved_under_old_paths_load_in_a_fresh_process():
    table = StatusTable(["model.num_heads"], epochs=7)
    saved = [
        as_saved_before(
            table, "orchestrator.callbacks\nStatusTable", "orchestrator.console\nStatusTable"
        ),
        as_saved_before(
            importlib.import_module("orchestrator.tune_objects").BudgetAwareOptunaSearch,
            "orchestrator.tune_objects",
            "orchestrator.search_space",
        ),
    ]
    code = (
        "import pickle, sys\n"
        "table, searcher = (pickle.loads(bytes.fromhex(h)) for h in sys.argv[1:])\n"
        "print(type(table).__module__, table.searched, table.epochs, searcher.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *(d.hex() for d in saved)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.split() == [
        "orchestrator.callbacks", "['model.num_heads']", "7", "orchestrator.tune_objects"
    ], out.stdout  # fmt: skip
