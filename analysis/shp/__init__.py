"""Single-head / single-node performance (SHP/SNP) and SNR of a trained CCT, per block.

The entry points are loaded on first use, so `import analysis.shp` stays light:
    analyze_model(model, data, *, blocks, units, pooling, fit, threshold, out_dir) -> summary
    analyze_checkpoint(checkpoint, *, out_dir, blocks, units, pooling, fit, threshold) -> summary
    log_to_mlflow(summary, out_dir, run_id=None, *, tracking_uri=None, client=None) -> run id
    read_summary(path_or_dict) -> ShpSummary (the typed view of shp/summary.json)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "analyze_model": "analysis.shp.pipeline",
    "analyze_checkpoint": "analysis.shp.pipeline",
    "analyze_features": "analysis.shp.pipeline",
    "ShpOptions": "analysis.shp.options",
    "AnalysisError": "analysis.shp.features",
    "log_to_mlflow": "analysis.shp.mlflow_io",
    "ShpSummary": "analysis.shp.summary",
    "BlockSummary": "analysis.shp.summary",
    "read_summary": "analysis.shp.summary",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:  # PEP 562: import the module only when asked
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis.shp' has no attribute {name!r}")
