"""What runs inside Ray worker processes: the per-rank training loop Ray Train runs
(loop.py) and the callbacks it hands the `cct` trainer (callbacks.py), the Train
controller's callback to Tune (tune_report.py: small on purpose, the controller imports
it), each rank's log files (log.py) and system metrics (system_metrics.py), and the set-up
hook of every Ray worker process (ray_hooks.py). Kept light: importing this package
imports nothing."""
