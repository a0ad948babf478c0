import sys

from analysis.bench.shp import main

sys.exit(main())
