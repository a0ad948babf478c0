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
    """argparse, but a bad argument is one `error:` line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        fail(message)
