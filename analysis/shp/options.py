"""Options of the SHP analysis beyond the main choices (blocks, units, pooling, fit,
threshold); the defaults follow SPEC section 4."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from analysis.shp.readout import FaithfulRecipe, FastRecipe


@dataclass(frozen=True)
class ShpOptions:
    """Everything beyond the main choices; the defaults follow SPEC section 4."""

    # The matrices come from the validation split by default: committee selection reads
    # the head label sets and must never see test data (SPEC 6). "test" as in the papers.
    heldout: Literal["val", "test"] = "val"
    # [reconstructed] ANDC: keep W[j, n] where j is on node n's own diagonal, or ("clusters")
    # in the clusters of n's unit; "none" skips it
    andc: Literal["diagonal", "clusters", "none"] = "diagonal"
    andc_iters: int = 50  # "retrain briefly": masked L-BFGS iterations
    batch_size: int = 256  # images per feature pass batch
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA
    # bytes the fast seqpool fit may cache token features in (half precision); None: half
    # the free GPU memory, or 1 GiB on the CPU; 0: always stream them
    token_cache_bytes: int | None = None
    fast: FastRecipe = field(default_factory=FastRecipe)
    faithful: FaithfulRecipe = field(default_factory=FaithfulRecipe)
    seed: int = 0
    plots: bool = True
    max_units_plotted: int = 64
