"""One live driver per sweep, and control of it from any shell that reaches its MLflow store.

lease.py     the driver's lease on its sweep: who runs it (host, process, since when), renewed
             by a heartbeat; a second driver is refused while it is fresh, a stale one (its
             driver killed, its machine gone) is taken over
requests.py  stop and cancel requests written to the store, the driver's presence thread that
             renews the lease and acts on them, and the Tune stopper that ends a cancelled trial
commands.py  `python -m orchestrator.sweep list | status | stop | cancel`

Everything lives in the sweep's MLflow experiment as tags, so a laptop, a cluster's head and a
SLURM job are steered the same way, with no connection to the sweep's Ray cluster.
"""
