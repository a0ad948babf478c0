"""The argument parser of the benchmark commands: bad input is one `error:` line, exit 2."""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the usage block too
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
