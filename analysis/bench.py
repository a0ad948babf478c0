"""`python -m analysis.bench`: what the SHP analysis costs next to training (analysis/shp/bench.py)."""

from analysis.shp.bench import main

main()
