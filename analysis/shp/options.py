"""The settings of the SHP analysis of one model, all in one place: the main choices a sweep
file's `analysis:` section names (units, pooling, fit, threshold) and the finer ones; the
defaults follow SPEC section 4. Which blocks to analyse is asked of each call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from analysis.shp.readout import FaithfulRecipe, FastRecipe
from cct.config import SHP_THRESHOLD, ShpFit, ShpPooling, ShpUnits


@dataclass(frozen=True)
class ShpOptions:
    """How to analyse a model; the defaults follow SPEC section 4."""

    units: ShpUnits = "heads"  # a head's slice of the attention output, single nodes, or FF
    pooling: ShpPooling = "mean"  # the readout's pooling over tokens (mean: exactly linear)
    fit: ShpFit = "fast"  # the readout fit: cached features (fast) or the group's recipe
    threshold: float = SHP_THRESHOLD  # binarisation of the normalised field matrices

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
