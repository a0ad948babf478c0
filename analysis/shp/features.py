"""Frozen features of the analysed blocks: what a "unit" is, and passes over the data.

A unit is a group of consecutive nodes of the tensor the readout sees (SPEC 4.1):
- transformer block, units="heads": the pre-projection attention output (B, N, H*dh),
  one unit per head (dh nodes each) — single-head performance (SHP);
- transformer block, units="nodes": the same tensor, one unit per node (SNP);
- transformer block, units="ff": the FF sub-block output (B, N, d), one unit per node;
- conv block, any units: the feature map (B, d, h, w) as tokens (B, h*w, d), one unit per
  filter (a conv block has no heads and no FF).

Every pass runs the frozen network once per batch up to the last analysed block and hands
out the tokens of all analysed blocks together, so k blocks never cost k passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from cct.checkpoint import unwrap
from cct.config import ShpUnits
from cct.device import autocast
from cct.models import CCT

Units = ShpUnits
UNITS: tuple[str, ...] = get_args(ShpUnits)

# tokens of every analysed block for one batch of model inputs: block -> (B, N, W)
Extractor = Callable[[Tensor], dict[int, Tensor]]


class AnalysisError(ValueError):
    """Bad input to the analysis (blocks, units, options); the message names the value."""


@dataclass(frozen=True)
class BlockUnits:
    """How one block's readout input splits into units."""

    block: int
    kind: str  # "transformer" | "conv"
    unit: str  # what one unit is: "head", "node", "ff-node" or "filter"
    width: int  # nodes the readout sees
    unit_size: int  # nodes per unit (head_dim for heads, else 1)

    @property
    def num_units(self) -> int:
        return self.width // self.unit_size


def resolve_blocks(model: CCT, blocks: str | list[int] | tuple[int, ...]) -> list[int]:
    """ "all" | "none" | block indices -> sorted unique indices, checked against the depth."""
    depth = len(model.blocks)
    if isinstance(blocks, str):
        if blocks == "all":
            return list(range(depth))
        if blocks == "none":
            return []
        raise AnalysisError(f"blocks={blocks!r}: expected 'all', 'none' or block indices")
    out = sorted(set(int(b) for b in blocks))
    bad = [b for b in out if not 0 <= b < depth]
    if bad:
        raise AnalysisError(
            f"blocks {bad} out of range: the model has {depth} blocks (0..{depth - 1})"
        )
    return out


def block_units(model: CCT, block: int, units: str) -> BlockUnits:
    if units not in UNITS:
        raise AnalysisError(f"units={units!r}: choose from {', '.join(UNITS)}")
    s = model.settings
    kind = model.block_kinds[block]
    if kind == "conv":
        return BlockUnits(block, kind, "filter", s.embed_dim, 1)
    if units == "ff":
        return BlockUnits(block, kind, "ff-node", s.embed_dim, 1)
    width = s.num_heads * s.head_dim
    if units == "nodes":
        return BlockUnits(block, kind, "node", width, 1)
    return BlockUnits(block, kind, "head", width, s.head_dim)


def unit_tokens(tap: dict[str, Tensor], layout: BlockUnits) -> Tensor:
    """One block's internals -> the tokens the readout sees, (B, N, W), float32."""
    if layout.kind == "conv":
        x = tap["features"].flatten(2).transpose(1, 2)  # (B, d, h, w) -> (B, h*w, d)
    elif layout.unit == "ff-node":
        x = tap["ff"]  # (B, N, d)
    else:
        x = tap["heads"].flatten(2)  # (B, N, H, dh) -> (B, N, H*dh), head-major
    return x.float()


def model_extractor(model: CCT, layouts: list[BlockUnits], bf16: bool) -> Extractor:
    """The frozen model as an Extractor: normalised images -> tokens of every analysed block."""
    model = unwrap(model)
    last = max(lay.block for lay in layouts)

    def extract(x: Tensor) -> dict[int, Tensor]:
        with torch.no_grad(), autocast(x.device, bf16):
            taps = model.internals(x, upto=last)
        return {lay.block: unit_tokens(taps[lay.block], lay) for lay in layouts}

    return extract


def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive slices in stored order; the last one may be short."""
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


@torch.no_grad()
def collect_train_features(
    extract: Extractor,
    inputs: Iterator[Tensor],
    *,
    n: int,
    cache_tokens: bool,
    cache_budget_bytes: int,
) -> tuple[dict[int, Tensor], dict[int, Tensor] | None]:
    """One pass: mean-pooled features (n, W) float32 of every block, and — when asked and
    they fit the budget — every block's token features in half precision for seqpool.

    Mean pooling is linear, so the pooled features are all a mean-pooled readout ever needs
    (the fast fit never touches tokens again). Token features of CIFAR are ~6 GB per block
    even in half precision; when they do not fit, the caller streams them instead.
    """
    pooled: dict[int, Tensor] = {}
    cache: dict[int, Tensor] | None = None
    i = 0
    for x in inputs:
        tokens = extract(x)
        B = x.shape[0]
        if i == 0:  # shapes are known after the first batch: allocate once
            for b, t in tokens.items():
                pooled[b] = torch.empty(n, t.shape[2], device=t.device)
            need = sum(n * t.shape[1] * t.shape[2] * 2 for t in tokens.values())
            if cache_tokens and need <= cache_budget_bytes:
                cache = {
                    b: torch.empty(n, *t.shape[1:], dtype=torch.float16, device=t.device)
                    for b, t in tokens.items()
                }
        for b, t in tokens.items():
            pooled[b][i : i + B] = t.mean(1)
            if cache is not None:
                cache[b][i : i + B] = t.half()
        i += B
    if i != n:
        raise RuntimeError(f"expected {n} training samples, the pass gave {i}")
    return pooled, cache


def cache_budget(device: torch.device, fraction: float = 0.5, cpu_bytes: int = 2**30) -> int:
    """Bytes the seqpool token cache may take: a fraction of free GPU memory, or a fixed
    amount of host memory on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return cpu_bytes
