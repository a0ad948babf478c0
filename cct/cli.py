"""What every command does with bad input: one `error: ...` line on stderr, exit code 2, no
usage block and no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def fail(*messages: object) -> NoReturn:
    """Print each message as one `error:` line (newlines folded) and exit with code 2: a
    validator that finds several problems reports them all at once."""
    for message in messages:
        print("error: " + " ".join(str(message).split()), file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one `error:` line instead of the usage block, and an
    unknown flag is named first (argparse would report a missing required one instead)."""

    def error(self, message: str) -> NoReturn:
        fail(message)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001 - argparse's own
        argv = sys.argv[1:] if args is None else list(args)
        unknown = [a for a in _flags(argv) if not self._knows(a.split("=", 1)[0])]
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_known_args(argv, namespace)

    def _knows(self, flag: str) -> bool:
        known = self._option_string_actions
        return flag in known or (self.allow_abbrev and any(o.startswith(flag) for o in known))


def _flags(argv: list[str]) -> list[str]:
    """The long flags of a command line, up to a bare `--` (what follows is positional)."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return [a for a in head if a.startswith("--") and len(a) > 2]
