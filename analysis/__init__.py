"""Analysis of trained CCTs: per-head / per-node label matrices, clusters and SNR (SHP/SNP,
see analysis/pipeline.py), and soft committees.

The SHP entry points are loaded on first use, so `import analysis` stays light:
    analyze_model(model, data, *, blocks, units, pooling, fit, threshold, out_dir) -> summary
    analyze_checkpoint(checkpoint, *, out_dir, blocks, units, pooling, fit, threshold) -> summary
    log_to_mlflow(summary, out_dir, run_id=None, *, tracking_uri=None, client=None) -> run id
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "analyze_model": "analysis.pipeline",
    "analyze_checkpoint": "analysis.pipeline",
    "analyze_features": "analysis.pipeline",
    "ShpOptions": "analysis.pipeline",
    "AnalysisError": "analysis.features",
    "log_to_mlflow": "analysis.mlflow_io",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:  # PEP 562: import the module only when asked
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
