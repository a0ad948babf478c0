"""`python -m analysis.committee`: see analysis/committee/cli.py."""

import sys

from analysis.committee.cli import main

sys.exit(main())
