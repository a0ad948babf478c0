"""The report's pictures, drawn from plain data into PNG bytes (matplotlib's Agg backend, set by
analysis.shp.plots). One function per section; none reads MLflow or files."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.shp.plots import plt

VAL, TEST = "#2f6db5", "#d9822b"  # validation blue, test orange, throughout the page
DPI = 100
STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8.5}


def styled(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    """Draw with the report's type sizes (rcParams apply when each text is made)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> bytes:
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


# --------------------------------------------------------------------------------------
# accuracy against the knobs


@dataclass(frozen=True)
class KnobPoint:
    """The trials with one value of a knob (whatever the other knobs)."""

    value: float
    val: Sequence[float]
    test: Sequence[float]


@styled
def accuracy_figure(knobs: Mapping[str, Sequence[KnobPoint]]) -> bytes:
    """One panel per knob: mean validation and test accuracy (%) with the standard deviation
    as error bars, single trials as faint dots."""
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.6 * len(knobs), 3.3), squeeze=False)
    for ax, (knob, points) in zip(axes[0], knobs.items()):
        xs = np.arange(len(points))
        for shift, color, name, attr in (
            (-0.08, VAL, "validation", "val"),
            (0.08, TEST, "test", "test"),
        ):
            ys = [100 * np.asarray(getattr(p, attr), dtype=float) for p in points]
            for x, y in zip(xs, ys):
                ax.plot(np.full(len(y), x + shift), y, ".", color=color, alpha=0.35, ms=6)
            means = [y.mean() if y.size else np.nan for y in ys]
            sds = [y.std() if y.size > 1 else 0.0 for y in ys]
            ax.errorbar(
                xs + shift, means, yerr=sds, fmt="o-", color=color, capsize=4, lw=1.5, label=name
            )
        ax.set_xticks(xs, [_tick(p.value) for p in points])
        ax.set_xlim(-0.5, len(points) - 0.5)
        title = knob if len(points) > 1 else f"{knob} (not varied)"
        ax.set_title(title, fontsize=10)
        _style(ax, knob, "accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return to_png(fig)


def _tick(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# --------------------------------------------------------------------------------------
# readout accuracy and SNR along the blocks


@dataclass(frozen=True)
class BlockPoint:
    block: int
    kind: str  # "transformer" | "conv"
    readout_accuracy: float | None
    snr_labels: float | None
    snr_area: float | None
    noise_free: bool


@styled
def snr_figure(curves: Mapping[str, Sequence[BlockPoint]]) -> bytes:
    """Readout accuracy, SNR (labels) and SNR (area) against block index, one line per
    architecture. Conv blocks get hollow markers; noise-free blocks (SNR undefined) a
    triangle on the top edge."""
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.5))
    keys = (
        ("readout_accuracy", "readout accuracy (%)"),
        ("snr_labels", "SNR (labels / noise)"),
        ("snr_area", "SNR (area / noise)"),
    )
    blocks = sorted({p.block for pts in curves.values() for p in pts})
    for i, (arch, pts) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for ax, (key, _) in zip(axes, keys):
            xy = [(p.block, getattr(p, key)) for p in pts if getattr(p, key) is not None]
            scale = 100 if key == "readout_accuracy" else 1
            if xy:
                x, y = zip(*xy)
                ax.plot(
                    x,
                    [scale * v for v in y],
                    "-",
                    color=color,
                    lw=1.6,
                    label=arch if key == "readout_accuracy" else None,
                )
            for p in pts:
                v = getattr(p, key)
                if v is not None:
                    face = "white" if p.kind == "conv" else color
                    ax.plot(p.block, scale * v, "o", color=color, mfc=face, ms=6)
                elif key != "readout_accuracy" and p.noise_free:
                    ax.plot(
                        p.block,
                        1.0,
                        "^",
                        color=color,
                        ms=8,
                        clip_on=False,
                        transform=ax.get_xaxis_transform(),
                    )
    for ax, (_, label) in zip(axes, keys):
        ax.set_xticks(blocks)
        _style(ax, "block", label)
    fig.legend(loc="lower center", ncol=min(len(curves), 6), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * math.ceil(len(curves) / 6), 1, 1))
    return to_png(fig)


# --------------------------------------------------------------------------------------
# head specialisation of one model


@dataclass(frozen=True)
class HeadSets:
    block: int
    label_sets: Sequence[Sequence[int]]  # per head
    num_classes: int


@styled
def heads_figure(blocks: Sequence[HeadSets], class_names: Sequence[str] | None = None) -> bytes:
    """Per attention block: which labels each head recognises (head x label grid), and
    how many heads recognise each label."""
    n = len(blocks)
    fig, axes = plt.subplots(
        n,
        2,
        figsize=(10, 0.9 + 0.33 * _rows(blocks) + 0.9 * n),
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 2]},
    )
    for (a1, a2), hb in zip(axes, blocks):
        k = hb.num_classes
        grid = np.zeros((len(hb.label_sets), k))
        for h, labels in enumerate(hb.label_sets):
            grid[h, list(labels)] = 1
        a1.imshow(grid, cmap="Blues", vmin=0, vmax=1.25, aspect="auto", interpolation="nearest")
        a1.set_yticks(range(len(grid)), [f"head {h}" for h in range(len(grid))], fontsize=8)
        a1.set_xticks(range(k), class_names or [str(j) for j in range(k)], fontsize=7)
        a1.set_xticks(np.arange(-0.5, k, 1), minor=True)
        a1.set_yticks(np.arange(-0.5, len(grid), 1), minor=True)
        a1.grid(which="minor", color="white", lw=1.5)
        a1.tick_params(which="minor", length=0)
        a1.set_title(f"block {hb.block}: labels each head recognises", fontsize=10)
        a1.set_xlabel("label")
        counts = grid.sum(0)
        a2.bar(range(k), counts, color=["#c44" if c == 0 else VAL for c in counts])
        a2.set_xticks(range(k), class_names or [str(j) for j in range(k)], fontsize=7)
        a2.set_title(f"block {hb.block}: heads per label (red: uncovered)", fontsize=10)
        _style(a2, "label", "heads")
        a2.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return to_png(fig)


def _rows(blocks: Sequence[HeadSets]) -> int:
    return sum(len(b.label_sets) for b in blocks)


# --------------------------------------------------------------------------------------
# size and speed against accuracy


@dataclass(frozen=True)
class CostPoint:
    tag: str  # the row number in the section's table ("" for trials not listed)
    val_accuracy: float
    macs: float | None
    latency_ms: float | None
    latency_source: str  # "re-measured" | "logged in-sweep" | "unavailable"
    on_front: bool


def _tag_points(ax, points: Sequence[tuple[float, float, str]]) -> None:
    """Write each point's tag beside it; points that coincide share one label ("1,2")."""
    merged: dict[tuple[float, float], list[str]] = {}
    for x, y, tag in points:
        if tag:
            merged.setdefault((round(x, 9), round(y, 6)), []).append(tag)
    for (x, y), tags in merged.items():
        ax.annotate(
            ",".join(tags),
            (x, y),
            fontsize=8,
            fontweight="bold",
            xytext=(5, 4),
            textcoords="offset points",
        )


@styled
def cost_figure(points: Sequence[CostPoint]) -> bytes:
    """Validation accuracy against MACs (Pareto front as a step line) and against batch-1
    latency (re-measured filled, logged in-sweep hollow); numbers tag the table's rows."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    pts = [p for p in points if p.macs is not None]
    # one plot call per colour, not per trial: a Line2D per point took ~20 s at 1,000 trials
    for on_front in (False, True):
        group = [p for p in pts if p.on_front == on_front]
        if group:
            xs, ys = [p.macs for p in group], [100 * p.val_accuracy for p in group]
            a1.plot(xs, ys, "o", color=VAL if on_front else "#999", ms=7)
    front = sorted((p for p in pts if p.on_front), key=lambda p: p.macs)
    if front:
        a1.step(
            [p.macs for p in front],
            [100 * p.val_accuracy for p in front],
            where="post",
            color=VAL,
            lw=1.5,
            label="Pareto front",
        )
        a1.legend(loc="best")
    _tag_points(a1, [(p.macs, 100 * p.val_accuracy, p.tag) for p in pts])
    _style(a1, "MACs per image (no attention matmuls)", "validation accuracy (%)")
    a1.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    timed = [p for p in points if p.latency_ms is not None]
    fresh = [p for p in timed if p.latency_source == "re-measured"]
    logged = [p for p in timed if p.latency_source != "re-measured"]
    for group, face, alpha in ((logged, "white", 0.6), (fresh, TEST, 1)):
        if group:
            xs, ys = [p.latency_ms for p in group], [100 * p.val_accuracy for p in group]
            a2.plot(xs, ys, "o", ms=7, color=TEST, mfc=face, alpha=alpha)
    _tag_points(a2, [(p.latency_ms, 100 * p.val_accuracy, p.tag) for p in fresh])
    a2.plot([], [], "o", color=TEST, label="re-measured alone")
    a2.plot([], [], "o", color=TEST, mfc="white", label="logged in-sweep")
    a2.legend(loc="best")
    _style(a2, "batch-1 latency (ms)", "validation accuracy (%)")
    fig.tight_layout()
    return to_png(fig)


# --------------------------------------------------------------------------------------
# the committee


@styled
def committee_figure(
    curve: Sequence[float],
    committee_test: float,
    member_labels: Sequence[str],
    member_test: Sequence[float],
    member_val: Sequence[float],
    committee_val: float,
) -> bytes:
    """Committee validation accuracy against size (selection, as members were added) with
    the final committee on test; and each member against the committee, both splits."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [2, 3]})
    sizes = list(range(1, len(curve) + 1))
    a1.plot(sizes, [100 * a for a in curve], "o-", color=VAL, label="committee, validation")
    a1.plot(
        [len(member_test)], [100 * committee_test], "s", color=TEST, ms=8, label="committee, test"
    )
    a1.axhline(100 * max(member_test), color=TEST, ls=":", label="best member, test")
    a1.set_xticks(sizes)
    a1.margins(y=0.15)
    a1.legend(loc="best")
    _style(a1, "committee size", "accuracy (%)")
    names = [*member_labels, "committee"]
    x = np.arange(len(names))
    vals = [100 * v for v in [*member_val, committee_val]]
    tests = [100 * v for v in [*member_test, committee_test]]
    a2.bar(x - 0.2, vals, 0.4, color=VAL, label="validation")
    a2.bar(x + 0.2, tests, 0.4, color=TEST, label="test")
    lo = min(vals + tests)
    a2.set_ylim(max(0.0, lo - 2 * (100 - lo) - 1), 100)
    a2.set_xticks(x, names, fontsize=8, rotation=15)
    a2.legend(fontsize=8, loc="best")
    _style(a2, "", "accuracy (%)")
    fig.tight_layout()
    return to_png(fig)


# --------------------------------------------------------------------------------------
# the search: every trial across the searched keys


@styled
def parallel_coordinates_figure(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], objective: str, mode: str
) -> bytes:
    """One vertical axis per searched key and one for the objective; each trial a line,
    coloured by its objective (the best: yellow, drawn on top). Numbers are scaled to
    their axis's range (a key holding several orders of magnitude on a log scale), other
    values spread evenly in sorted order; each axis is labelled with its values."""
    axes = [*keys, objective]
    scaled = {a: _axis_scale([r[a] for r in rows]) for a in axes}
    scores = np.array([float(r[objective]) for r in rows])
    lo, hi = scores.min(), scores.max()
    order = np.argsort(scores if mode == "max" else -scores)  # the best is drawn last
    fig, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(axes)), 3.8))
    cmap = plt.get_cmap("viridis")
    for i in order:
        shade = 0.5 if hi == lo else (scores[i] - lo) / (hi - lo)
        shade = shade if mode == "max" else 1 - shade
        ys = [scaled[a][0](rows[i][a]) for a in axes]
        ax.plot(range(len(axes)), ys, "-o", color=cmap(shade), lw=1.4, ms=3.5, alpha=0.85)
    for x, a in enumerate(axes):
        ax.axvline(x, color="#888", lw=0.8)
        for y, label in scaled[a][1]:
            ax.text(x + 0.04, y, label, fontsize=7.5, va="center", color="#333")
    ax.set_xticks(range(len(axes)), axes)
    ax.set_yticks([])
    ax.set_ylim(-0.06, 1.06)
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.spines[["top", "right", "left"]].set_visible(False)
    sm = plt.cm.ScalarMappable(cmap=cmap if mode == "max" else cmap.reversed())
    sm.set_clim(lo, hi)
    fig.colorbar(sm, ax=ax, label=objective, pad=0.02)
    fig.tight_layout()
    return to_png(fig)


def _axis_scale(values: Sequence[Any]) -> tuple[Callable[[Any], float], list[tuple[float, str]]]:
    """(value -> position in [0, 1], the (position, label) ticks) for one axis."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        cats = sorted({str(v) for v in values})
        pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        return (lambda v: pos[str(v)]), [(pos[c], c) for c in cats]
    lo, hi = float(min(values)), float(max(values))
    log = lo > 0 and hi / lo >= 20
    f = math.log10 if log else float
    a, b = f(lo), f(hi)

    def position(v: Any) -> float:
        return 0.5 if a == b else (f(float(v)) - a) / (b - a)

    distinct = sorted({float(v) for v in values})
    shown = distinct if len(distinct) <= 6 else [lo, hi]
    return position, [(position(v), f"{v:.3g}") for v in shown]
