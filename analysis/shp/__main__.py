"""`python -m analysis.shp`: see analysis/shp/cli.py."""

import sys

from analysis.shp.cli import main

sys.exit(main())
