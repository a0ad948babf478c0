"""Ray-side benchmarks, apart from the driver and workers they measure:

    python -m orchestrator.bench.overhead         what Ray costs per trial
    python -m orchestrator.bench.system_metrics   what per-worker system metrics cost

Nothing in orchestrator/ imports them."""
