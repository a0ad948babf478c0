"""The collected sweep (report_data) reshaped into what the pictures and the verdicts take:
metric values per group of trials, per-architecture block curves (seeds averaged), each
trial's last attention block, and the five verdicts of SPEC section 1 (report_verdicts)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from analysis.report.collect import SweepData, Trial
from analysis.report.figures import BlockPoint
from analysis.report.latency import Latency
from analysis.report.verdicts import (
    BlockSnr,
    CommitteeFigures,
    ConvModel,
    HeadBlock,
    ModelAccuracy,
    Verdict,
    committee_verdict,
    conv_verdict,
    equal_accuracy_verdict,
    snr_verdict,
    specialisation_verdict,
)
from analysis.shp.summary import BlockSummary


def values(trials: Sequence[Trial], key: str) -> list[float]:
    """The trials' logged values of a metric, those without it left out."""
    return [v for t in trials if (v := t.metric(key)) is not None]


def by_arch(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """Trials grouped by architecture label (seeds/repeats together), best group first."""
    out: dict[str, list[Trial]] = {}
    for t in trials:  # trials come best first
        out.setdefault(t.name, []).append(t)
    return out


def head_blocks(t: Trial) -> tuple[BlockSummary, ...]:
    return t.shp.head_blocks if t.shp else ()


# --------------------------------------------------------------------------------------
# per-architecture block curves (seeds averaged)


def block_curves(trials: Sequence[Trial]) -> dict[str, list[BlockPoint]]:
    """Architecture -> per block: mean readout accuracy and SNRs over its seeds (nulls left
    out; noise-free only when every seed is)."""
    out = {}
    for arch, group in by_arch(trials).items():
        per_block: dict[int, list[BlockSummary]] = {}
        for t in group:
            for b in t.shp.blocks if t.shp else ():
                per_block.setdefault(b.block, []).append(b)
        if per_block:
            out[arch] = [_mean_block(b, entries) for b, entries in sorted(per_block.items())]
    return out


def _mean_block(block: int, entries: list[BlockSummary]) -> BlockPoint:
    def mean(key: str) -> float | None:
        xs = [x for e in entries if (x := getattr(e, key)) is not None]
        return statistics.fmean(xs) if xs else None

    return BlockPoint(
        block=block,
        kind=entries[0].kind,
        readout_accuracy=mean("readout_accuracy"),
        snr_labels=mean("snr_labels"),
        snr_area=mean("snr_area"),
        noise_free=all(e.noise_free for e in entries),
    )


# --------------------------------------------------------------------------------------
# verdicts


def verdicts(data: SweepData, lat: dict[str, Latency]) -> list[Verdict]:
    """The five claims of SPEC section 1, in its order."""
    curves = block_curves(data.trials)
    units = {
        arch: [
            BlockSnr(
                p.block,
                "filter" if p.kind == "conv" else "head",
                p.snr_labels,
                p.snr_area,
                p.noise_free,
            )
            for p in pts
        ]
        for arch, pts in curves.items()
    }
    seqpool = any(t.shp is not None and t.shp.pooling == "seqpool" for t in data.trials)
    heads = [hb for t in data.trials if (hb := last_head_block(t)) is not None]
    models = [
        ModelAccuracy(
            t.trial_id, t.arch.get("num_heads"), t.arch.get("head_dim"), t.metric("val_accuracy")
        )
        for t in data.trials
        if t.metric("val_accuracy") is not None
    ]
    c = data.committee
    committee = (
        None
        if c is None
        else CommitteeFigures(tuple(m["test_accuracy"] for m in c.members), c.test_accuracy)
    )
    conv = [
        ConvModel(
            trial=t.trial_id,
            conv_blocks=int(t.arch.get("conv_blocks") or 0),
            val_accuracy=t.metric("val_accuracy"),
            test_accuracy=t.metric("test_accuracy"),
            latency_ms=lat[t.run_id].latency_ms,
            latency_source=lat[t.run_id].source,
        )
        for t in data.trials
        if t.metric("val_accuracy") is not None
    ]
    return [
        snr_verdict(units, seqpool=seqpool),
        specialisation_verdict(heads),
        equal_accuracy_verdict(models, data.n_val),
        committee_verdict(committee),
        conv_verdict(conv, data.n_test),
    ]


def last_head_block(t: Trial) -> HeadBlock | None:
    blocks = head_blocks(t)
    if not blocks:
        return None
    b = blocks[-1]
    return HeadBlock(
        trial=t.trial_id,
        block=b.block,
        num_classes=t.shp.label_count(b),
        num_units=b.num_units,
        units_with_cluster=b.units_with_cluster,
        mean_labels_in_clusters=b.mean_labels_in_clusters,
        mean_noise=b.mean_noise,
        snr_labels=b.snr_labels,
        noise_free=b.noise_free,
    )
