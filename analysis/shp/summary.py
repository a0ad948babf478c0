"""The typed view of `shp/summary.json`, the one thing every reader of an SHP analysis uses
(the report, the committee's head label sets): fields by name instead of `.get` chains.

The file is written by analysis/shp/pipeline.py; a reader takes the fields it knows and
keeps the rest in `extra`, so an older or newer file still reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BlockSummary:
    """One analysed block: its unit statistics (SPEC 4.6) and head specialisation (4.7)."""

    block: int
    kind: str = "transformer"  # transformer | conv
    unit: str = "head"  # head | node | ff | filter
    num_units: int = 0
    units_with_cluster: int = 0
    readout_accuracy: float | None = None
    mean_labels_in_clusters: float | None = None
    mean_noise: float | None = None
    snr_labels: float | None = None
    snr_area: float | None = None
    noise_free: bool = False
    unit_noise: tuple[int, ...] = ()
    label_sets: tuple[tuple[int, ...], ...] = ()
    heads_per_label: tuple[int, ...] = ()
    heads_per_label_mean: float | None = None
    heads_per_label_min: int | None = None
    heads_per_label_max: int | None = None
    coverage: float | None = None
    label_set_size_mean: float | None = None
    pairwise_jaccard_mean: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # every other key, as written

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlockSummary:
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known and v is not None}
        for key in ("unit_noise", "heads_per_label"):
            kw[key] = tuple(int(x) for x in kw.get(key, ()))
        kw["label_sets"] = tuple(tuple(int(x) for x in s) for s in kw.get("label_sets", ()))
        kw["block"], kw["noise_free"] = int(d["block"]), bool(d.get("noise_free"))
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class ShpSummary:
    """A model's analysis: the settings it ran with and its blocks in order."""

    blocks: tuple[BlockSummary, ...]
    num_classes: int = 0
    units: str | None = None
    pooling: str | None = None
    fit: str | None = None
    threshold: float | None = None
    heldout: str | None = None  # the split the matrices came from: "val", "test"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def on_validation(self) -> bool:
        """True only when the file says its matrices came from the validation split: the
        only analysis that selection (and the report's verdicts) may read."""
        return self.heldout == "val"

    @property
    def head_blocks(self) -> tuple[BlockSummary, ...]:
        """The attention blocks analysed head by head (unit "head")."""
        return tuple(b for b in self.blocks if b.unit == "head")

    def label_count(self, block: BlockSummary) -> int:
        """How many labels the block's matrices have."""
        return len(block.heads_per_label) or self.num_classes

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShpSummary:
        top = {"num_classes", "units", "pooling", "fit", "threshold", "heldout"}
        return cls(
            blocks=tuple(BlockSummary.from_dict(b) for b in d.get("blocks") or ()),
            **{k: d[k] for k in top if d.get(k) is not None},
            extra={k: v for k, v in d.items() if k not in top | {"blocks"}},
        )


def read_summary(source: Path | str | Mapping[str, Any]) -> ShpSummary:
    """A summary from its file or its parsed dict; ValueError when it is not one."""
    d = json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else source
    try:
        return ShpSummary.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an SHP summary ({type(e).__name__}: {e})") from None
