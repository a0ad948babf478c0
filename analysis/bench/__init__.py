"""What the analysis costs: `python -m analysis.bench` times the SHP analysis (fast and
faithful) against a training epoch (shp.py). A benchmark harness: nothing in analysis/
imports it."""
