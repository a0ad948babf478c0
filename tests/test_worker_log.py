"""A worker's output is kept in a file (and still goes where it went) while it trains."""

from __future__ import annotations

import logging
import sys

from orchestrator.worker.log import kept_output, log_name


def test_prints_and_logging_handlers_reach_the_file_once_and_the_old_streams(tmp_path, capsys):
    path = tmp_path / "w.log"
    handlers = list(logging.getLogger().handlers)
    quiet = logging.getLogger("ray.train.quiet-test")
    quiet.setLevel(logging.INFO)
    quiet.propagate = False  # as Ray's loggers: their own handler, made before, on stderr
    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    quiet.addHandler(own)
    with kept_output(path):
        print("epoch 1 done")
        print("a warning", file=sys.stderr)
        quiet.info("Reporting training result 1")
    print("after the block")  # no longer kept
    text = path.read_text()
    for line in ("epoch 1 done", "a warning",
                 "INFO ray.train.quiet-test: Reporting training result 1"):  # fmt: skip
        assert text.count(line) == 1, (line, text)
    assert "after" not in text
    out, err = capsys.readouterr()
    assert "epoch 1 done" in out and "a warning" in err  # still where they went
    assert logging.getLogger().handlers == handlers
    assert own.stream is sys.stderr  # given back
    quiet.removeHandler(own)


def test_each_rank_and_attempt_gets_its_own_file():
    name = log_name(1, "abcdef0123456789")
    assert name.startswith("rank1-abcdef01-") and name.endswith(".log")
