"""`python -m analysis.report`: see analysis/report/cli.py."""

import sys

from analysis.report.cli import main

sys.exit(main())
