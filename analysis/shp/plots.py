"""Pictures of the analysis: per-block grids of the per-unit matrices, and the per-block
readout accuracy and SNR against block index. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_unit_matrices(
    matrices: np.ndarray,
    path: Path,
    *,
    title: str,
    unit_name: str = "head",
    binary: bool = False,
    max_units: int = 64,
) -> Path:
    """A grid of heatmaps, one per unit (the first `max_units`), rows = true label,
    columns = output. Normalised matrices are clipped to [-1, 1] on a diverging map."""
    shown = matrices[:max_units]
    n = len(shown)
    cols = math.ceil(math.sqrt(n)) if n else 1
    rows = math.ceil(n / cols) if n else 1
    # At least ~5 inches wide so the title fits when there are only one or two units.
    width = max(2.2 * cols, 5.0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.2 * rows + 0.6), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        if binary:
            ax.imshow(shown[k], cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(shown[k], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{unit_name} {k}", fontsize=8)
    more = f" (first {max_units} of {len(matrices)})" if len(matrices) > max_units else ""
    fig.suptitle(textwrap.fill(title + more, width=int(width * 12)), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_blocks(blocks: list[dict[str, Any]], path: Path) -> Path:
    """Readout accuracy and both SNR variants against block index (nulls left out)."""
    idx = [b["block"] for b in blocks]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(i, b[key]) for i, b in zip(idx, blocks) if b.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(*series("readout_accuracy"), "o-")
    a1.set_xlabel("block")
    a1.set_ylabel("readout accuracy (held-out)")
    a1.set_ylim(0, 1)
    for key, label in (("snr_labels", "SNR (labels)"), ("snr_area", "SNR (area)")):
        a2.plot(*series(key), "o-", label=label)
    a2.set_xlabel("block")
    a2.set_ylabel("SNR (null when noise-free: not drawn)")
    a2.legend()
    for ax in (a1, a2):
        ax.set_xticks(idx)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
