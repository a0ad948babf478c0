"""The collected sweep (collect.py) reshaped into what the pictures and the verdicts take:
metric values per group of trials, per-architecture block curves (seeds averaged, for the
pictures), per-model head counts (seeds kept apart, nested in their architecture, for the
trend test), each trial's last attention block, the architecture knobs that varied, and the
five verdicts of SPEC section 1 (verdicts.py)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from analysis.report.collect import SweepData, Trial, knob_values, varied_knobs
from analysis.report.figures import BlockPoint
from analysis.report.latency import Latency
from analysis.report.verdicts import (
    CommitteeFigures,
    ConvModel,
    HeadBlock,
    HeadCounts,
    ModelAccuracy,
    ModelHeads,
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


def head_counts_of(t: Trial, reference: bool = False) -> tuple[HeadCounts, ...]:
    """t's attention blocks head by head: labels (its label sets' sizes) and noise per head
    (None when the summary predates per-head counts); of its untrained reference if asked."""
    shp = t.shp_reference if reference else t.shp
    blocks = shp.head_blocks if shp else ()
    return tuple(
        HeadCounts(
            b.block,
            tuple(len(s) for s in b.label_sets),
            b.unit_noise if b.label_sets and len(b.unit_noise) == len(b.label_sets) else None,
        )
        for b in blocks
    )


def model_heads_of(trials: Sequence[Trial]) -> list[ModelHeads]:
    """Every analysed trial, one entry per trained model (seeds not averaged)."""
    return [
        ModelHeads(t.trial_id, t.name, t.seed, head_counts_of(t), head_counts_of(t, True))
        for t in trials
        if head_blocks(t)
    ]


def committee_figures(data: SweepData) -> CommitteeFigures | None:
    """The committee run the verdict judges: the earliest made with the default settings;
    without one, the earliest run (judged "not judged" when its members were hand-picked)."""
    c = data.committee or (data.committee_runs[0] if data.committee_runs else None)
    if c is None:
        return None
    names = tuple(str(m.get("trial_id") or m["run_id"][:8]) for m in c.members)
    by_hand = c.selection != "rule" or not c.default_settings
    return CommitteeFigures(
        run_id=c.run_id,
        rule=(
            "members chosen by hand (--members)"
            if c.selection == "hand-picked"
            else f"selection settings not recorded on the run ({c.rule or 'unknown rule'})"
            if c.selection == "unknown"
            else f"not the default settings: {c.rule}, tolerance {c.tolerance_rule}"
        )
        if by_hand
        else f"{c.rule}, tolerance {c.tolerance_rule}",
        chosen_by_rule=not by_hand,
        members=names,
        member_val=tuple(float(m["val_accuracy"]) for m in c.members),
        member_test_correct=c.member_test_correct,
        committee_test_correct=c.test_correct,
    )


def verdicts(data: SweepData, lat: dict[str, Latency]) -> list[Verdict]:
    """The five claims of SPEC section 1, in its order."""
    seqpool = any(t.shp is not None and t.shp.pooling == "seqpool" for t in data.trials)
    heads = [hb for t in data.trials if (hb := last_head_block(t)) is not None]
    finished = [t for t in data.trials if t.metric("val_accuracy") is not None]
    knobs = varied_knobs(finished)
    others = [k for k in knobs if k != "conv_blocks"]
    models = [
        ModelAccuracy(
            t.trial_id,
            t.arch.get("num_heads"),
            t.arch.get("head_dim"),
            t.metric("val_accuracy"),
            t.val_correct,
            t.metric("test_accuracy"),
            t.test_correct,
            knob_values(t, knobs),
        )
        for t in finished
    ]
    conv = [
        ConvModel(
            trial=t.trial_id,
            conv_blocks=int(t.arch.get("conv_blocks") or 0),
            val_accuracy=t.metric("val_accuracy"),
            test_accuracy=t.metric("test_accuracy"),
            latency_ms=lat[t.run_id].latency_ms,
            latency_source=lat[t.run_id].source,
            latency_rounds=lat[t.run_id].rounds,
            test_correct=t.test_correct,
            others=knob_values(t, others),
        )
        for t in finished
    ]
    return [
        snr_verdict(model_heads_of(data.trials), seqpool=seqpool),
        specialisation_verdict(heads),
        equal_accuracy_verdict(models, data.n_test),
        committee_verdict(committee_figures(data)),
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
        label_sets=b.label_sets,
        unit_noise=b.unit_noise,
        arch=t.name,
    )
