"""Progress bars: on a terminal (or CCT_PROGRESS=1) they are drawn on stderr, elsewhere not,
and the long local work draws one."""

from __future__ import annotations

import pytest

from analysis import progress as bars


@pytest.mark.parametrize("forced, tty, drawn", [("1", False, True), ("0", True, False),
                                                (None, True, True), (None, False, False)])  # fmt: skip
def test_drawn_on_a_terminal_or_when_forced(monkeypatch, capsys, forced, tty, drawn):
    if forced is None:
        monkeypatch.delenv(bars.FORCE_ENV, raising=False)
    else:
        monkeypatch.setenv(bars.FORCE_ENV, forced)
    monkeypatch.setattr(bars.sys.stderr, "isatty", lambda: tty, raising=False)
    assert list(bars.progress(range(3), "counting")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert ("counting:" in err and "/3 [" in err) == drawn, err
