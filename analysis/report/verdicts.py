"""The verdict on each claim of SPEC section 1, from plain data: pure functions, no MLflow,
no files, no pictures. Each verdict rests on a stated statistical test at a stated level
(LEVEL, default 5 %; SPEC section 8) and is one of

    "held"             the test rejects "the claim is false" at p < LEVEL
    "not held"         the data point against the claim (the estimate is on the wrong side,
                       or significantly so)
    "not enough data"  the estimate favours the claim but the test cannot tell, or the sweep
                       lacks what the test needs; the reason says what more would reach it
                       (a power calculation: architectures, seeds, blocks, images or rounds)
    "not judged"       the evidence was not gathered by the rule the claim needs (a
                       committee whose members were chosen by hand)

RULES_VERSION names these rules; the page prints it. Version 2 (issue 29) replaced rules
that an audit found calling "held" on nulls real sweeps produce (version 1: a block-level
SNR ratio, seeds and heads as independent units, selection and judgement on the same
validation images, unmatched conv comparisons). The tests (analysis/report/stats.py):

1. SNR rises along the blocks (`snr_verdict`). Measured per head, where the mechanism
   lives: each head with a cluster has the count-based SNR log((labels + 1/2) / (noise +
   1/2)) (labels in its clusters, noise ones outside them; the halves keep a noise-free head
   finite). A block-level ratio of means moves when the share of clustered heads moves,
   even if no head's SNR does; a head-level statistic does not. Per trained model:
   Spearman's rho between the block index and its heads' SNRs, over >= MIN_SNR_BLOCKS
   attention blocks with a clustered head. Unit: the architecture (the claim is about
   architectures): its seeds' rhos are averaged (seeds nested within it, never counted as
   independent), and a one-sided exact sign-flip test of the mean over architectures (H0:
   each architecture's mean rho is symmetric about 0 - true for an architecture-level
   random slope of mean 0, whatever the correlation of one model's heads and blocks). Needs
   >= 5 architectures (2**-5 = 0.031). A model without per-head noise (logged before
   per-head counts) is left out and said so. When every model has the same analysis of its
   untrained model (`analysis.reference: true`, analysis/shp/reference.py), each model's rho
   is taken minus its reference's: the trend the pipeline shows without any training.
2. Each head recognises a small cluster of labels with little noise
   (`specialisation_verdict`). In the last attention block of a trial a head passes when
   it recognises 1 to SMALL_CLUSTER_SHARE of the labels and its noise is at most its labels
   / MIN_HEAD_SNR; the trial's heads must also differ (diversity: the mean pairwise Jaccard
   overlap of its clustered heads' label sets at most MAX_HEAD_OVERLAP; identical heads
   with a small cluster each are one head, not specialisation) - a trial that fails it
   counts as no head passing. Unit: the architecture (its trials' pass shares averaged).
   Test: one-sided exact sign-flip test that the share passing exceeds HEAD_SHARE over the
   architectures (>= 5). A trial without per-head noise is "not enough data", never
   noise-free. Thresholds: a quarter of the labels is what an even split over the reference
   CCT-7/3x1's 4 heads gives (a specialised head has fewer); noise at most half its labels
   ("little noise"; the papers' "negligible" would argue for less); a Jaccard of 1/2 is two
   heads sharing 2 of 3 labels. Argued, not fitted: the untrained-model reference (SPEC 8)
   is not yet computed in the trial (issue 29 item 10).
3. Several head structures reach equal accuracy (`equal_accuracy_verdict`). A structure is
   every architecture knob that varied in the sweep. Select on validation (the best trial
   of each structure, and the best structure), judge on test: two one-sided tests (TOST)
   of |difference| < EQUIVALENCE_MARGIN on the paired per-image test correctness (Tango
   score tests), Bonferroni over the structures compared, against those whose head
   structure (num_heads, head_dim) differs from the best. Choosing and judging on the same
   images favours the structure with more trials (the winner's curse). Generalises to the
   trained models selected, not to the structures' means over seeds.
4. The soft committee beats each member (`committee_verdict`). Only the earliest
   committee run made by the default rule on validation is judged. On the same test
   images, against every member, a one-sided Tango score test that the gain exceeds
   MIN_COMMITTEE_GAIN, with its inversion (the one-sided lower bound at the same level)
   printed beside it: held when every bound is above the minimum (intersection-union).
   About this committee; a general claim needs committees replicated over seeds.
5. Conv-substituted blocks cut latency at equal accuracy (`conv_verdict`). Matched
   comparisons: within each group of trials that share every other varied knob, the best
   (validation) trial of each conv_blocks c > 0 against the group's best with c = 0.
   Latency from the report's own timing rounds (models in a random order within each
   round): a one-sided exact Wilcoxon-Mann-Whitney test that c's rounds are more than
   MIN_SPEEDUP faster; and test accuracy equivalent by TOST as in 3. Both must pass
   (intersection-union); Bonferroni over the comparisons, and the rounds needed follow from
   that corrected level (stats.rounds_for).

Accuracies on the page carry their 95 % Wilson interval. `python -m analysis.report
--calibrate` simulates each claim false (under nulls that break each test's own
assumptions) and true, through these very functions (analysis/report/calibrate.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from analysis.report import stats
from analysis.report.stats import LEVEL

Status = Literal["held", "not held", "not enough data", "not judged"]
HELD, NOT_HELD, NO_DATA, NOT_JUDGED = "held", "not held", "not enough data", "not judged"

RULES_VERSION = "2 (issue 29: architecture units, per-head counts, select/judge split)"
MIN_SNR_BLOCKS = 3  # attention blocks with a clustered head per model: fewer show no order
SMALL_CLUSTER_SHARE = 0.25  # a head's labels, as a share of all labels, at most
MIN_HEAD_SNR = 2.0  # a head's labels in clusters / its noise ones, at least
MAX_HEAD_OVERLAP = 0.5  # mean pairwise Jaccard of a trial's clustered heads, at most
HEAD_SHARE = 0.5  # "each head": more than this share of the heads must pass
EQUIVALENCE_MARGIN = 0.02  # "equal accuracy": |difference| below 2 points
MIN_COMMITTEE_GAIN = 0.0025  # "beats": more than a quarter point over every member
MIN_SPEEDUP = 0.05  # "cuts latency": more than 5 % faster than the all-transformer model

THRESHOLDS = {
    "LEVEL": LEVEL,
    "MIN_SNR_BLOCKS": MIN_SNR_BLOCKS,
    "SMALL_CLUSTER_SHARE": SMALL_CLUSTER_SHARE,
    "MIN_HEAD_SNR": MIN_HEAD_SNR,
    "MAX_HEAD_OVERLAP": MAX_HEAD_OVERLAP,
    "HEAD_SHARE": HEAD_SHARE,
    "EQUIVALENCE_MARGIN": EQUIVALENCE_MARGIN,
    "MIN_COMMITTEE_GAIN": MIN_COMMITTEE_GAIN,
    "MIN_SPEEDUP": MIN_SPEEDUP,
}

SNR_RULE = "SNR definitions (labels/noise per head)"
CONV_RULE = "the conv replacement block (3x3 conv, norm, activation, residual)"
SEQPOOL_RULE = "seqpool readout"
HEAD_KNOBS = ("num_heads", "head_dim")

spearman = stats.spearman


@dataclass(frozen=True)
class Verdict:
    """One claim's outcome, with the test, the sentence and the figure it rests on."""

    key: str
    claim: str
    status: Status
    reason: str
    figure: str  # the report section id the verdict rests on
    rule: str  # the test and its thresholds, in words
    reconstructed: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    p_value: float | None = None
    generalises: str = ""  # what population the verdict speaks for


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 0.0001"


def _pts(x: float) -> str:
    return f"{100 * x + 0.0:+.2f}"  # + 0.0: no "-0.00"


def _by_arch(items: Sequence, value) -> dict[str, list[float]]:
    """Architecture -> the values of its models (value(item) None: left out)."""
    out: dict[str, list[float]] = {}
    for x in items:
        if (v := value(x)) is not None:
            out.setdefault(x.arch, []).append(v)
    return out


def _population(groups: dict[str, list[float]]) -> str:
    seeded = any(len(v) > 1 for v in groups.values())
    if seeded:
        return (
            f"these {len(groups)} architectures as trained (seeds nested: averaged within "
            "each architecture, never counted as independent)"
        )
    return (
        f"the {len(groups)} architectures the sweep trained, one model each (a search samples "
        "them unevenly: the verdict speaks for the architectures it tried, not for its space)"
    )


def _arch_sign_flip(groups: dict[str, list[float]]) -> tuple[float, list[float]]:
    """One-sided sign-flip p over the architectures' mean values, and those means."""
    means = [float(np.mean(v)) for v in groups.values()]
    return stats.sign_flip_test(means), means


def _more_units(means: Sequence[float], level: float, what: str) -> str:
    need = stats.units_for_sign_flip(means, level)
    return f"; ~{need} {what} at the observed mean and spread would tell" if need else ""


# --------------------------------------------------------------------------------------
# 1. SNR rises along the blocks


@dataclass(frozen=True)
class HeadCounts:
    """One attention block of one trained model, head by head."""

    block: int
    labels: tuple[int, ...]  # per head: labels in its clusters
    noise: tuple[int, ...] | None  # per head: ones outside its clusters; None: not logged


@dataclass(frozen=True)
class ModelHeads:
    """The attention blocks of one trained model (one trial: an architecture and a seed)."""

    model: str  # trial id
    arch: str  # architecture label: its seeds share it
    seed: int | None
    blocks: tuple[HeadCounts, ...]
    reference: tuple[HeadCounts, ...] = ()  # the same analysis of its untrained model


def head_snr(labels: int, noise: int) -> float:
    """A head's count-based SNR, log((labels + 1/2) / (noise + 1/2)); finite when noise-free."""
    return math.log((labels + 0.5) / (noise + 0.5))


def model_trend(m: ModelHeads, use_reference: bool = False) -> tuple[float | None, str]:
    """Spearman's rho(block, head SNR) over m's clustered heads, and a note; None when m has
    no per-head noise or fewer than MIN_SNR_BLOCKS blocks with a clustered head. With
    `use_reference`, minus the same rho of its untrained model (the pipeline's own trend)."""
    rho, note = blocks_trend(m.blocks)
    if rho is None or not use_reference:
        return rho, note
    ref, ref_note = blocks_trend(m.reference)
    if ref is None:
        return None, f"{note}; untrained reference: {ref_note}"
    return rho - ref, f"{note}, minus the untrained reference's {ref:+.2f}"


def blocks_trend(blocks: Sequence[HeadCounts]) -> tuple[float | None, str]:
    """Spearman's rho(block, head SNR) over the clustered heads of `blocks`, and a note."""
    if any(b.noise is None or len(b.noise) != len(b.labels) for b in blocks):
        return None, "no per-head noise (logged before per-head counts): left out"
    xs, ys = [], []
    for b in blocks:
        for lab, noise in zip(b.labels, b.noise):
            if lab > 0:  # a head without a cluster has no SNR (SPEC 4.5)
                xs.append(b.block)
                ys.append(head_snr(lab, noise))
    blocks = len(set(xs))
    if blocks < MIN_SNR_BLOCKS:
        return None, f"{blocks} attention block(s) with a clustered head: too few"
    rho = spearman(xs, ys)
    rho = 0.0 if math.isnan(rho) else rho
    return rho, f"rho {rho:+.2f} over {len(ys)} clustered heads in {blocks} blocks"


def snr_verdict(
    models: Sequence[ModelHeads],
    *,
    seqpool: bool = False,
    level: float = LEVEL,
    figure: str = "snr",
) -> Verdict:
    """Claim 1 from each model's per-head counts (see the module docstring)."""
    claim = "SNR rises along the blocks"
    need = stats.min_units_for(level)
    rule = (
        f"per head: log((labels + 1/2) / (noise + 1/2)); per model: Spearman rho(block, head "
        f"SNR) over >= {MIN_SNR_BLOCKS} attention blocks (minus its untrained reference's when "
        f"every model has one); per architecture: the mean over its "
        f"seeds; one-sided exact sign-flip test over >= {need} architectures, p < {level:g}"
    )
    recon = (SNR_RULE, SEQPOOL_RULE) if seqpool else (SNR_RULE,)
    # the untrained reference's trend is subtracted when every model has one: a rule applied
    # to some models only would mix two statistics in one test
    referenced = bool(models) and all(m.reference for m in models)
    trends = {m.model: model_trend(m, referenced) for m in models}
    details = tuple(f"{m.model} ({m.arch}, seed {m.seed}): {trends[m.model][1]}" for m in models)
    groups = _by_arch(models, lambda m: trends[m.model][0])
    if len(groups) < need:
        missing = sum(1 for r, note in trends.values() if r is None and "noise" in note)
        reason = (
            f"{len(groups)} architecture(s) with a model having {MIN_SNR_BLOCKS}+ attention "
            f"blocks of per-head counts (of {len(models)} models"
            + (f"; {missing} logged without per-head noise" if missing else "")
            + f"); the test needs >= {need} architectures with >= {MIN_SNR_BLOCKS} attention "
            "blocks each (seeds of one architecture do not count apart)"
        )
        return Verdict("snr", claim, NO_DATA, reason, figure, rule, recon, details)
    p, means = _arch_sign_flip(groups)
    mean = float(np.mean(means))
    population = _population(groups)
    reason = (
        f"mean rho {mean:+.2f} over {len(means)} architectures ({sum(r > 0 for r in means)} "
        f"rising), one-sided sign-flip {_p(p)}; "
        + ("minus the untrained reference's trend" if referenced else "no untrained reference")
    )
    if p < level:
        status = HELD
    elif mean > 0:
        status = NO_DATA
        reason += _more_units(means, level, "architectures")
    else:
        status = NOT_HELD
    return Verdict("snr", claim, status, reason, figure, rule, recon, details, p, population)


# --------------------------------------------------------------------------------------
# 2. heads specialise in small clusters with little noise


@dataclass(frozen=True)
class HeadBlock:
    """The last analysed attention block of one trial: each head's labels and noise."""

    trial: str
    block: int
    num_classes: int
    label_sets: tuple[tuple[int, ...], ...]  # per head: the labels in its clusters
    unit_noise: tuple[int, ...]  # per head: ones outside its cluster blocks (() not logged)
    arch: str = ""  # architecture label ("" = the trial is its own architecture)

    @property
    def has_noise(self) -> bool:
        return len(self.unit_noise) == len(self.label_sets) > 0


def small_cluster_max(num_classes: int) -> int:
    """The most labels a head may recognise and still have "a small cluster"."""
    return max(1, math.floor(SMALL_CLUSTER_SHARE * num_classes + 1e-9))


def head_passes(labels: int, noise: int, num_classes: int) -> bool:
    return 1 <= labels <= small_cluster_max(num_classes) and labels >= MIN_HEAD_SNR * noise


def head_overlap(label_sets: Sequence[Sequence[int]]) -> float | None:
    """Mean pairwise Jaccard overlap of the non-empty label sets (None: fewer than two)."""
    sets = [set(s) for s in label_sets if s]
    pairs = [len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    return float(np.mean(pairs)) if pairs else None


def head_counts(h: HeadBlock) -> tuple[int, int]:
    """(passing heads, heads) of one trial's block; (0, n) without per-head noise."""
    if not h.has_noise:
        return 0, len(h.label_sets)
    ok = sum(head_passes(len(s), n, h.num_classes) for s, n in zip(h.label_sets, h.unit_noise))
    return ok, len(h.label_sets)


def trial_share(h: HeadBlock) -> float | None:
    """The share of h's heads passing, 0 when its heads do not differ, None without noise."""
    if not h.has_noise:
        return None
    overlap = head_overlap(h.label_sets)
    if overlap is not None and overlap > MAX_HEAD_OVERLAP:
        return 0.0
    ok, n = head_counts(h)
    return ok / n


def specialisation_verdict(
    heads: Sequence[HeadBlock], *, level: float = LEVEL, figure: str = "heads"
) -> Verdict:
    """Claim 2 from each trial's last attention block (see the module docstring)."""
    claim = "Each head specialises in a small cluster of labels with little noise"
    need = stats.min_units_for(level)
    rule = (
        f"per head of each trial's last attention block: 1 to {SMALL_CLUSTER_SHARE:.0%} of "
        f"the labels in clusters and noise <= labels / {MIN_HEAD_SNR:g}; per trial: the share "
        f"passing, 0 unless its heads differ (mean pairwise Jaccard <= {MAX_HEAD_OVERLAP:g}); "
        f"per architecture: the mean over its trials; one-sided exact sign-flip test that it "
        f"exceeds {HEAD_SHARE:.0%} over >= {need} architectures, p < {level:g}"
    )
    details = tuple(_head_detail(h) for h in heads)
    groups = _by_arch(
        [_with_arch(h) for h in heads],
        lambda h: None if (s := trial_share(h)) is None else s - HEAD_SHARE,
    )
    if len(groups) < need:
        missing = sum(not h.has_noise for h in heads)
        reason = (
            f"{len(groups)} architecture(s) with per-head labels and noise in their last "
            f"attention block (of {len(heads)} analysed trials"
            + (f"; {missing} without per-head noise: not enough data, not noise-free" if missing else "")
            + f"); the test needs >= {need} architectures"
        )  # fmt: skip
        return Verdict("heads", claim, NO_DATA, reason, figure, rule, (SNR_RULE,), details)
    p, means = _arch_sign_flip(groups)
    share = HEAD_SHARE + float(np.mean(means))
    reason = (
        f"mean share of heads passing {share:.0%} over {len(means)} architectures, one-sided "
        f"sign-flip {_p(p)}"
    )
    status = HELD if p < level else (NO_DATA if share > HEAD_SHARE else NOT_HELD)
    if status == NO_DATA:
        reason += _more_units(means, level, "architectures")
    return Verdict(
        "heads", claim, status, reason, figure, rule, (SNR_RULE,), details, p, _population(groups)
    )


def _with_arch(h: HeadBlock) -> HeadBlock:
    if h.arch:
        return h
    return HeadBlock(h.trial, h.block, h.num_classes, h.label_sets, h.unit_noise, h.trial)


def _head_detail(h: HeadBlock) -> str:
    where = f"{h.trial} block {h.block}"
    if not h.has_noise:
        return f"{where}: no per-head noise logged: not enough data"
    ok, n = head_counts(h)
    overlap = head_overlap(h.label_sets)
    differ = "-" if overlap is None else f"{overlap:.2f}"
    return (
        f"{where}: {ok}/{n} heads pass (<= {small_cluster_max(h.num_classes)} of "
        f"{h.num_classes} labels, SNR >= {MIN_HEAD_SNR:g}), overlap {differ}"
    )


# --------------------------------------------------------------------------------------
# 3. equal accuracy with different head structures


@dataclass(frozen=True)
class ModelAccuracy:
    trial: str
    num_heads: int | None
    head_dim: int | None
    val_accuracy: float
    val_correct: np.ndarray | None = None  # (n_val,) bool, the validation images in order
    test_accuracy: float | None = None
    test_correct: np.ndarray | None = None  # (n_test,) bool
    structure: tuple = ()  # (knob, value) of every architecture knob that varied

    @property
    def key(self) -> tuple:
        return self.structure or (("num_heads", self.num_heads), ("head_dim", self.head_dim))

    @property
    def heads(self) -> str:
        return f"{self.num_heads}x{self.head_dim}"


def difference(
    a_acc: float, a_correct: np.ndarray | None, b_acc: float, b_correct: np.ndarray | None, n: int
) -> tuple[stats.PairedDifference, str]:
    """A minus B: paired on per-image correctness when both have it, else unpaired."""
    if a_correct is not None and b_correct is not None and len(a_correct) == len(b_correct):
        return stats.paired_difference(a_correct, b_correct), "paired"
    return stats.unpaired_difference(a_acc, n, b_acc, n), "unpaired"


def select_structures(models: Sequence[ModelAccuracy]) -> list[ModelAccuracy]:
    """The best trial (validation) of each structure, best first: the choice, on validation."""
    best: dict[tuple, ModelAccuracy] = {}
    for m in sorted(models, key=lambda m: -m.val_accuracy):
        best.setdefault(m.key, m)
    return list(best.values())


def equal_accuracy_verdict(
    models: Sequence[ModelAccuracy],
    n_test: int | None,
    *,
    margin: float = EQUIVALENCE_MARGIN,
    level: float = LEVEL,
    figure: str = "accuracy",
) -> Verdict:
    """Claim 3 (see the module docstring); `margin` a fraction (0.02 = 2 points)."""
    claim = "Several architectures reach equal accuracy with different head structures"
    rule = (
        "structure = every architecture knob that varied; the best trial of each structure "
        f"chosen on validation, judged on test: TOST equivalence within {100 * margin:g} points "
        "of the best (paired Tango score tests) for each structure with other heads, "
        f"Bonferroni over them, p < {level:g}"
    )
    chosen = select_structures(models)
    top = chosen[0] if chosen else None
    others = [m for m in chosen[1:] if (m.num_heads, m.head_dim) != (top.num_heads, top.head_dim)]
    if top is None or not others:
        reason = f"{len(chosen)} structure(s), none with other heads than the best"
        return Verdict("equal", claim, NO_DATA, reason, figure, rule)
    others = [m for m in others if m.test_accuracy is not None]
    n = n_test or (len(top.test_correct) if top.test_correct is not None else 0)
    if top.test_accuracy is None or not others or not n:
        reason = "no test accuracy (or test set size) for the chosen trials: nothing to judge on"
        return Verdict("equal", claim, NO_DATA, reason, figure, rule)
    alpha = level / len(others)
    results, details = [], []
    for m in others:
        d, how = difference(top.test_accuracy, top.test_correct, m.test_accuracy, m.test_correct, n)
        eq = stats.equivalence(d, margin, alpha)
        lo, hi = d.interval(1 - 2 * alpha)
        results.append((m, d, eq))
        details.append(
            f"{m.heads} ({m.trial}) vs {top.heads} ({top.trial}) on test: {_pts(-d.diff)} "
            f"points [{_pts(-hi)}, {_pts(-lo)}] ({how}, n {d.n}), TOST {_p(eq.p_value)}: "
            f"{eq.outcome}"
        )
    return _equal_outcome(claim, rule, figure, results, len(others), margin, alpha, details)


def _equal_outcome(claim, rule, figure, results, k, margin, alpha, details) -> Verdict:
    generalises = "the trained models chosen on validation (not the structures' seed means)"
    equal = [r for r in results if r[2].outcome == "equivalent"]
    p = min(1.0, min(r[2].p_value for r in results) * k)
    if equal:
        names = ", ".join(m.heads for m, _, _ in equal)
        reason = (
            f"{len(equal)} other head structure(s) within {100 * margin:g} points of the best "
            f"on test ({names})"
        )
        status = HELD
    elif all(r[2].outcome == "different" for r in results):
        reason = f"every other head structure is more than {100 * margin:g} points below the best"
        status = NOT_HELD
    else:
        m, d, _ = min(results, key=lambda r: r[2].p_value)
        more = stats.n_for_equivalence(d.diff, d.se, d.n, margin, alpha)
        reason = (
            f"no head structure shown within {100 * margin:g} points of the best on test "
            f"(closest: {m.heads}, {_pts(-d.diff)} points); "
            + (f"~{more} test images would tell" if more else "its difference is at the margin")
        )
        status = NO_DATA
    return Verdict("equal", claim, status, reason, figure, rule, (), tuple(details), p, generalises)


# --------------------------------------------------------------------------------------
# 4. the soft committee beats each member


@dataclass(frozen=True)
class CommitteeFigures:
    """The judged committee run: its members' and its own test correctness, same images."""

    run_id: str
    rule: str  # e.g. "max_size=5, tolerance one binomial SE (floor one image)"
    chosen_by_rule: bool  # False: members given by hand
    members: tuple[str, ...]  # trial ids, best validation accuracy first
    member_val: tuple[float, ...]
    member_test_correct: tuple[np.ndarray, ...] | None
    committee_test_correct: np.ndarray | None


def committee_verdict(
    c: CommitteeFigures | None, *, level: float = LEVEL, figure: str = "committee"
) -> Verdict:
    claim = "The soft committee beats each member"
    rule = (
        "the earliest committee run made by the default rule on validation; on the same test "
        f"images, against every member: one-sided score test that the gain exceeds "
        f"{_pts(MIN_COMMITTEE_GAIN)} points and its one-sided {1 - level:.0%} lower bound, "
        f"all p < {level:g} (intersection-union)"
    )
    if c is None:
        reason = "no committee run for this sweep (python -m analysis.committee)"
        return Verdict("committee", claim, NO_DATA, reason, figure, rule)
    if not c.chosen_by_rule:
        reason = f"committee run {c.run_id[:8]} not judged: {c.rule}"
        return Verdict("committee", claim, NOT_JUDGED, reason, figure, rule)
    if len(c.members) < 2:
        reason = "the committee has fewer than 2 members"
        return Verdict("committee", claim, NO_DATA, reason, figure, rule)
    if c.member_test_correct is None or c.committee_test_correct is None:
        reason = "the members' test logits are unavailable: no paired test"
        return Verdict("committee", claim, NO_DATA, reason, figure, rule)
    rows, details = [], []
    for name, correct in zip(c.members, c.member_test_correct):
        d = stats.paired_difference(c.committee_test_correct, correct)
        g = stats.gain_above(d, MIN_COMMITTEE_GAIN, level)
        rows.append((name, d, g))
        details.append(
            f"vs {name}: {_pts(d.diff)} points (one-sided {1 - level:.0%} lower bound "
            f"{_pts(g.lower)}), {d.wins} wins / {d.losses} losses, score test {_p(g.p_value)}"
        )
    worst = max(rows, key=lambda r: r[2].p_value)
    head = rows[0]  # the member with the best validation accuracy
    reason = (
        f"gain over the member best on validation {_pts(head[1].diff)} points (lower bound "
        f"{_pts(head[2].lower)}) on {head[1].n} test images; weakest comparison: vs {worst[0]} "
        f"{_pts(worst[1].diff)} points (lower bound {_pts(worst[2].lower)}), {_p(worst[2].p_value)}"
    )
    generalises = "this committee and these members (a general claim needs committees over seeds)"
    if worst[2].p_value < level:
        status = HELD
    elif all(d.diff > MIN_COMMITTEE_GAIN for _, d, _ in rows):
        status = NO_DATA
        more = stats.n_for_gain(worst[1], MIN_COMMITTEE_GAIN, level)
        reason += f"; ~{more} test images would tell" if more else ""
    else:
        status = NOT_HELD
    return Verdict(
        "committee", claim, status, reason, figure, rule, (), tuple(details),
        worst[2].p_value, generalises,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# 5. conv blocks cut latency without losing accuracy


@dataclass(frozen=True)
class ConvModel:
    trial: str
    conv_blocks: int
    val_accuracy: float
    test_accuracy: float | None
    latency_ms: float | None
    latency_source: str = "re-measured"  # or "logged in-sweep"
    latency_rounds: tuple[float, ...] = ()  # re-measured: the median of each timing round
    test_correct: np.ndarray | None = None  # (n_test,) bool
    others: tuple = ()  # (knob, value) of every other architecture knob that varied


def conv_pairs(models: Sequence[ConvModel]) -> list[tuple[ConvModel, ConvModel]]:
    """Matched comparisons: within each group sharing every other varied knob, the best
    (validation) trial of each conv_blocks c > 0 with the group's best c = 0 trial."""
    groups: dict[tuple, dict[int, ConvModel]] = {}
    for m in sorted(models, key=lambda m: -m.val_accuracy):
        groups.setdefault(m.others, {}).setdefault(m.conv_blocks, m)
    return [
        (best[0], best[c]) for best in groups.values() if 0 in best for c in sorted(best) if c > 0
    ]


def conv_verdict(
    models: Sequence[ConvModel],
    n_test: int | None,
    *,
    margin: float = EQUIVALENCE_MARGIN,
    level: float = LEVEL,
    figure: str = "latency",
) -> Verdict:
    """Claim 5 (see the module docstring)."""
    claim = "Conv-substituted blocks cut latency without losing accuracy"
    rule = (
        "matched pairs (every other varied knob equal): best (validation) conv_blocks=c>0 vs "
        f"best conv_blocks=0 of the group; re-measured rounds more than {MIN_SPEEDUP:.0%} faster "
        f"(exact one-sided rank-sum) and test accuracy within {100 * margin:g} points (TOST), "
        f"both p < {level:g}/(comparisons)"
    )
    recon = (CONV_RULE,)
    pairs = conv_pairs(models)
    if not pairs:
        have = ", ".join(str(c) for c in sorted({m.conv_blocks for m in models})) or "none"
        reason = (
            f"no conv_blocks > 0 trial shares its other knobs with a conv_blocks = 0 trial "
            f"(conv_blocks values: {have}); a sweep varying conv_blocks over a fixed remaining "
            "architecture would reach it"
        )
        return Verdict("conv", claim, NO_DATA, reason, figure, rule, recon)
    # the report re-measures the pairs of the best groups only (latency.MAX_CONV_GROUPS): the
    # comparisons are those, chosen on validation; none re-measured leaves all of them
    timed = [(r, m) for r, m in pairs if r.latency_rounds and m.latency_rounds]
    skipped = len(pairs) - len(timed)
    pairs = timed or pairs
    alpha = level / len(pairs)
    need = stats.rounds_for(alpha)
    short = [
        m.trial
        for pair in pairs
        for m in pair
        if len(m.latency_rounds) < need or m.test_accuracy is None
    ]
    if short:
        reason = (
            f"{len(pairs)} matched comparison(s) need >= {need} re-measured timing rounds per "
            f"model (level {level:g}/{len(pairs)}) and a test accuracy; short: "
            f"{', '.join(dict.fromkeys(short))} (an in-sweep figure was taken while trials "
            "shared the device)"
        )
        return Verdict("conv", claim, NO_DATA, reason, figure, rule, recon)
    results = [_conv_compare(ref, s, n_test, margin, alpha) for ref, s in pairs]
    verdict = _conv_outcome(claim, rule, figure, recon, results, alpha, len(pairs))
    if skipped:
        note = f"{skipped} matched pair(s) of lower-ranked groups not re-measured: not compared"
        verdict = dataclasses.replace(verdict, details=(*verdict.details, note))
    return verdict


def _conv_compare(ref: ConvModel, s: ConvModel, n_test, margin, alpha) -> tuple:
    scaled = [t / (1 - MIN_SPEEDUP) for t in s.latency_rounds]
    p_lat = stats.rank_sum_less(scaled, ref.latency_rounds)
    speed = 1 - float(np.median(s.latency_rounds) / np.median(ref.latency_rounds))
    d, how = difference(s.test_accuracy, s.test_correct, ref.test_accuracy, ref.test_correct,
                        n_test or 0)  # fmt: skip
    eq = stats.equivalence(d, margin, alpha)
    text = (
        f"conv_blocks={s.conv_blocks} ({s.trial}) vs 0 ({ref.trial}): {100 * speed:+.0f}% "
        f"faster over {len(s.latency_rounds)}+{len(ref.latency_rounds)} rounds, rank-sum "
        f"{_p(p_lat)}; test {_pts(d.diff)} points ({how}), TOST {_p(eq.p_value)}"
    )
    return s, speed, p_lat, eq, max(p_lat, eq.p_value), d, text


def _conv_outcome(claim, rule, figure, recon, results, alpha, k) -> Verdict:
    details = tuple(r[6] for r in results)
    s, speed, p_lat, eq, p, d, _ = min(results, key=lambda r: r[4])
    reason = (
        f"c={s.conv_blocks}: {100 * speed:.0f}% faster (rank-sum {_p(p_lat)}), test accuracy "
        f"TOST {_p(eq.p_value)} within {EQUIVALENCE_MARGIN * 100:g} points; {k} matched "
        "comparison(s)"
    )
    generalises = "these matched pairs of trained models, timed on this device"
    p_all = min(1.0, p * k)
    if p < alpha:
        return Verdict(
            "conv", claim, HELD, reason, figure, rule, recon, details, p_all, generalises
        )
    refuted = all(r[1] <= MIN_SPEEDUP or r[3].outcome == "different" for r in results)
    status = NOT_HELD if refuted else NO_DATA
    if status == NO_DATA:
        more = stats.n_for_equivalence(d.diff, d.se, d.n, EQUIVALENCE_MARGIN, alpha)
        reason += (
            f"; more timing rounds (now {len(s.latency_rounds)})"
            + (f" or ~{more} test images" if more and eq.outcome != "equivalent" else "")
            + " would tell"
        )
    return Verdict("conv", claim, status, reason, figure, rule, recon, details, p_all, generalises)
