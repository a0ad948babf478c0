"""Every command answers a bad flag the same way: one `error:` line naming the flag, exit
code 2, no usage block, no traceback (cct/cli.py)."""

from __future__ import annotations

import importlib

import pytest

# module whose main(argv) is the command (as `python -m ...` runs it) -> its required arguments
COMMANDS = {
    "cct.train": [],
    "cct.perf.bench": ["--variant", "cct_2_3x2_32"],
    "cct.data.__main__": ["digits"],
    "cct.data.preview": ["--out", "x.png"],
    "cct.perf.suite.rows": [],
    "orchestrator.sweep": [],
    "orchestrator.bench.overhead": ["--out", "bench"],
    "analysis.shp.cli": ["--checkpoint", "ckpt"],
    "analysis.bench.shp": [],
    "analysis.committee.cli": ["--experiment", "x"],
    "analysis.report.cli": ["--experiment", "x"],
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_a_bad_flag_is_one_error_line_and_exit_2(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main([*COMMANDS[module], "--no-such-flag"])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "--no-such-flag" in lines[0] and "usage:" not in err + out


@pytest.mark.parametrize("module", sorted(m for m, required in COMMANDS.items() if required))
def test_an_unknown_flag_is_named_before_a_missing_required_one(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--no-such-flag"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--no-such-flag" in lines[0], lines


def test_the_perf_worker_refuses_to_run_alone(capsys):
    from cct.perf.suite.sharing import main

    with pytest.raises(SystemExit) as e:
        main(["--no-such-flag"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: this is the suite")


def test_fail_reports_every_message_then_exits_2(capsys):
    from cct.cli import fail

    with pytest.raises(SystemExit) as e:
        fail("first problem", "second\n  problem")
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: first problem\nerror: second problem\n"
