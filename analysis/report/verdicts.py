"""The verdict on each claim of SPEC section 1, from plain data: pure functions, no MLflow,
no files, no pictures. Each verdict rests on a stated statistical test at a stated level
(LEVEL, default 5 %; SPEC section 8) and is one of

    "held"             the test rejects "the claim is false" at p < LEVEL
    "not held"         the data point against the claim (the estimate is on the wrong side,
                       or significantly so)
    "not enough data"  the estimate favours the claim but the test cannot tell, or the sweep
                       lacks what the test needs; the reason says what more is needed
    "not judged"       the evidence was not gathered by the rule the claim needs (a
                       committee whose members were chosen by hand)

The tests (analysis/report/stats.py), and why each:

1. SNR rises along the blocks (`snr_verdict`). Unit: one trained model (architecture x
   seed). Per model, Spearman's rho between the attention block index and its SNR (head
   units only; conv blocks and node/FF analyses are left out) over its blocks that have one:
   a model needs >= MIN_SNR_BLOCKS of them. A block with a null SNR counts as noise-free
   (+inf) only when more than NOISE_FREE_MIN_CLUSTERED of its heads have a cluster (SPEC 8:
   "most of its heads"); otherwise it is dropped, and the page says so. Test: a one-sided
   exact sign-flip test of the mean rho over the models (H0: every model's rho is symmetric
   about 0, which holds when a model's blocks are exchangeable - no trend - whatever the
   correlation between the blocks of one seed); each rho weighted by sqrt(blocks - 1), one
   over its standard deviation under no trend, so long series count for more (Stouffer's
   combination; the signs stay symmetric, the test exact). Rank-based, so a noise-free block and a
   seed-wide shift of all SNRs need no special care. It needs >= 5 models to reach p < 0.05
   at all (2**-5 = 0.031). With repeated seeds the conclusion is about the architectures as
   trained; without (an Optuna search) the units are the trials the search chose: it
   concludes that SNR rises on average over those trials, not in any one architecture.
2. Each head recognises a small cluster of labels with little noise
   (`specialisation_verdict`). Unit: one head of a trial's last attention block. A head
   passes when it recognises at least one label and at most SMALL_CLUSTER_SHARE of the
   labels ("a small cluster": an even split of the labels over the 4 heads of the
   reference CCT-7/3x1 would give each a quarter; a specialised head has fewer) and its
   noise is at most 1 / MIN_HEAD_SNR of its signal ("little noise": noise ones outside the
   clusters at most half the labels inside them; the papers' "negligible" would argue for
   more). Test: one-sided exact binomial test that more than HEAD_SHARE of the heads pass
   ("each head": at least most heads), heads counted as independent.
3. Several head structures reach equal accuracy (`equal_accuracy_verdict`). The best trial
   (validation) of each head structure (num_heads, head_dim) against the best trial overall,
   on validation: two one-sided tests (TOST, Schuirmann 1987) of |difference| <
   EQUIVALENCE_MARGIN on the paired per-image correctness, each a Tango (1998) score test
   (the Wald test rejects too often with few discordant images); unpaired z-tests when a
   trial has no logits; Bonferroni over the structures compared. The margin is a definition of "equal"
   the papers do not give: 2 points, the smallest round margin that a 5,000-image CIFAR
   validation set can establish (SE of a paired difference there ~0.5 points).
4. The soft committee beats each member (`committee_verdict`). Only the earliest
   committee run of the sweep made by the default rule on validation is judged; a
   hand-picked one is "not judged". On the same test images, an exact one-sided McNemar
   test against every member; held when all reject (an intersection-union test, so no
   multiplicity correction), with a 95 % interval for each gain.
5. Conv-substituted blocks cut latency at equal accuracy (`conv_verdict`). The best trial
   (validation) of each conv_blocks c > 0 against the best with conv_blocks = 0: latency
   from the report's own timing rounds (never the in-sweep figure taken while trials shared
   the device): a one-sided exact Wilcoxon-Mann-Whitney test that the rounds of c are more
   than MIN_SPEEDUP faster than the reference's, beyond their run-to-run spread; and test
   accuracy equivalent by TOST as in 3. Both must pass (intersection-union); Bonferroni
   over the c values compared.

Accuracies on the page carry their 95 % Wilson interval. `python -m analysis.report
--calibrate` simulates each claim false and true through these very functions
(analysis/report/calibrate.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from analysis.report import stats
from analysis.report.stats import LEVEL

Status = Literal["held", "not held", "not enough data", "not judged"]
HELD, NOT_HELD, NO_DATA, NOT_JUDGED = "held", "not held", "not enough data", "not judged"

MIN_SNR_BLOCKS = 4  # attention blocks with an SNR per model: with 3, rho is only +-1, +-0.5 or 0
NOISE_FREE_MIN_CLUSTERED = 0.5  # a null-SNR block is noise-free only above this share clustered
SMALL_CLUSTER_SHARE = 0.25  # a head's labels, as a share of all labels, at most
MIN_HEAD_SNR = 2.0  # a head's labels in clusters / its noise ones, at least
HEAD_SHARE = 0.5  # "each head": more than this share of the heads must pass
EQUIVALENCE_MARGIN = 0.02  # "equal accuracy": |difference| below 2 points
MIN_SPEEDUP = 0.05  # "cuts latency": more than 5 % faster than the all-transformer model
MIN_LATENCY_ROUNDS = 4  # timing rounds per model: 4 + 4 gives an exact p of 1/70 at best

THRESHOLDS = {
    "LEVEL": LEVEL,
    "MIN_SNR_BLOCKS": MIN_SNR_BLOCKS,
    "NOISE_FREE_MIN_CLUSTERED": NOISE_FREE_MIN_CLUSTERED,
    "SMALL_CLUSTER_SHARE": SMALL_CLUSTER_SHARE,
    "MIN_HEAD_SNR": MIN_HEAD_SNR,
    "HEAD_SHARE": HEAD_SHARE,
    "EQUIVALENCE_MARGIN": EQUIVALENCE_MARGIN,
    "MIN_SPEEDUP": MIN_SPEEDUP,
    "MIN_LATENCY_ROUNDS": MIN_LATENCY_ROUNDS,
}

SNR_RULE = "SNR definitions (labels/noise and area/noise)"
CONV_RULE = "the conv replacement block (3x3 conv, norm, activation, residual)"
SEQPOOL_RULE = "seqpool readout"

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


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 0.0001"


def _pts(x: float) -> str:
    return f"{100 * x + 0.0:+.2f}"  # + 0.0: no "-0.00"


# --------------------------------------------------------------------------------------
# 1. SNR rises along the blocks


@dataclass(frozen=True)
class BlockSnr:
    """One analysed block of one trained model."""

    block: int
    unit: str  # "head", "filter", "node", "ff-node"
    snr_labels: float | None
    snr_area: float | None
    noise_free: bool = False
    num_units: int = 0
    units_with_cluster: int = 0


@dataclass(frozen=True)
class SnrSeries:
    """The analysed blocks of one trained model (one trial: an architecture and a seed)."""

    model: str  # trial id
    arch: str
    seed: int | None
    blocks: tuple[BlockSnr, ...]


def snr_series(
    blocks: Sequence[BlockSnr], variant: str = "snr_labels"
) -> tuple[list[tuple[int, float]], list[str]]:
    """(block, SNR) over the head blocks with a value (+inf for a noise-free block whose
    heads are mostly clustered), and why each other head block was dropped."""
    out, dropped = [], []
    for b in sorted(blocks, key=lambda b: b.block):
        if b.unit != "head":  # conv filters, single nodes: not the heads the claim is about
            continue
        value = getattr(b, variant)
        if value is not None:
            out.append((b.block, float(value)))
            continue
        share = b.units_with_cluster / b.num_units if b.num_units else 0.0
        if b.noise_free and share > NOISE_FREE_MIN_CLUSTERED:
            out.append((b.block, math.inf))
        elif b.noise_free:
            dropped.append(
                f"block {b.block}: noise-free but {b.units_with_cluster}/{b.num_units} heads "
                "clustered"
            )
        else:
            dropped.append(f"block {b.block}: no SNR (no head has a cluster)")
    return out, dropped


def series_trend(blocks: Sequence[BlockSnr], variant: str = "snr_labels") -> float | None:
    """Spearman's rho(block, SNR) of one model, None with too few blocks; a constant SNR
    counts as no trend (0)."""
    return trend_of(snr_series(blocks, variant)[0])


def trend_of(series: Sequence[tuple[int, float]]) -> float | None:
    if len(series) < MIN_SNR_BLOCKS:
        return None
    rho = spearman(*zip(*series))
    return 0.0 if math.isnan(rho) else rho


def snr_verdict(
    curves: Sequence[SnrSeries],
    *,
    seqpool: bool = False,
    level: float = LEVEL,
    figure: str = "snr",
) -> Verdict:
    """Claim 1 from each model's per-block SNR (see the module docstring)."""
    claim = "SNR rises along the blocks"
    need = stats.min_units_for(level)
    rule = (
        f"per model (architecture x seed): Spearman rho(block, SNR) over >= {MIN_SNR_BLOCKS} "
        f"attention blocks (head units; a null SNR is noise-free only with > "
        f"{NOISE_FREE_MIN_CLUSTERED:.0%} of the heads clustered); one-sided exact sign-flip "
        f"test of the rho's (weighted by sqrt(blocks - 1)) over the models, p < {level:g}; "
        f"needs >= {need} models"
    )
    recon = (SNR_RULE, SEQPOOL_RULE) if seqpool else (SNR_RULE,)
    rhos, weights, details = [], [], []
    for s in curves:
        series, dropped = snr_series(s.blocks)
        rho = trend_of(series)
        area = series_trend(s.blocks, "snr_area")
        values = ", ".join("inf" if math.isinf(v) else f"{v:.2f}" for _, v in series)
        text = f"{s.model} ({s.arch}, seed {s.seed}): SNR [{values}]"
        area_text = "-" if area is None else f"{area:+.2f}"
        text += " too few blocks" if rho is None else f", rho {rho:+.2f} (snr_area {area_text})"
        details.append(text + "".join(f"; dropped {d}" for d in dropped))
        if rho is not None:
            rhos.append(rho)
            weights.append(math.sqrt(len(series) - 1))  # 1 / sd of rho under no trend
    seeded = _seeds_repeated(curves)
    units = (
        "models = architectures x seeds: concludes for these architectures as trained"
        if seeded
        else "trials as the search chose them (no repeated seeds): concludes that SNR rises on "
        "average over these trials, not in any one architecture"
    )
    if len(rhos) < need:
        reason = (
            f"{len(rhos)} model(s) with {MIN_SNR_BLOCKS}+ attention blocks having an SNR "
            f"(of {len(curves)}); the sign-flip test needs >= {need} to reach p < {level:g}: "
            f"add seeds (tune.seeds), or architectures with >= {MIN_SNR_BLOCKS} attention blocks"
        )
        return Verdict("snr", claim, NO_DATA, reason, figure, rule, recon, tuple(details))
    p = stats.sign_flip_test([r * w for r, w in zip(rhos, weights)])
    mean = float(np.mean(rhos))
    reason = (
        f"mean rho {mean:+.2f} over {len(rhos)} models ({sum(r > 0 for r in rhos)} rising), "
        f"one-sided sign-flip {_p(p)}; units: {units}"
    )
    if p < level:
        status = HELD
    elif mean > 0:
        status = NO_DATA
        reason += "; more models (seeds) would tell"
    else:
        status = NOT_HELD
    return Verdict("snr", claim, status, reason, figure, rule, recon, tuple(details), p)


def _seeds_repeated(curves: Sequence[SnrSeries]) -> bool:
    seeds: dict[str, set] = {}
    for s in curves:
        seeds.setdefault(s.arch, set()).add(s.seed)
    return any(len(v) > 1 for v in seeds.values())


# --------------------------------------------------------------------------------------
# 2. heads specialise in small clusters with little noise


@dataclass(frozen=True)
class HeadBlock:
    """The last analysed attention block of one trial: each head's labels and noise."""

    trial: str
    block: int
    num_classes: int
    label_sets: tuple[tuple[int, ...], ...]  # per head: the labels in its clusters
    unit_noise: tuple[int, ...]  # per head: ones outside its cluster blocks


def small_cluster_max(num_classes: int) -> int:
    """The most labels a head may recognise and still have "a small cluster"."""
    return max(1, math.floor(SMALL_CLUSTER_SHARE * num_classes + 1e-9))


def head_passes(labels: int, noise: int, num_classes: int) -> bool:
    return 1 <= labels <= small_cluster_max(num_classes) and labels >= MIN_HEAD_SNR * noise


def head_counts(h: HeadBlock) -> tuple[int, int]:
    """(passing heads, heads) of one trial's block."""
    noise = list(h.unit_noise) + [0] * (len(h.label_sets) - len(h.unit_noise))
    ok = sum(head_passes(len(s), n, h.num_classes) for s, n in zip(h.label_sets, noise))
    return ok, len(h.label_sets)


def specialisation_verdict(
    heads: Sequence[HeadBlock], *, level: float = LEVEL, figure: str = "heads"
) -> Verdict:
    """Claim 2 from each trial's last attention block (see the module docstring)."""
    claim = "Each head specialises in a small cluster of labels with little noise"
    need = stats.min_units_for(level)
    rule = (
        f"per head of each trial's last attention block: 1 to {SMALL_CLUSTER_SHARE:.0%} of "
        f"the labels in clusters and noise <= labels / {MIN_HEAD_SNR:g}; one-sided exact "
        f"binomial test that more than {HEAD_SHARE:.0%} of the heads pass, p < {level:g}"
    )
    counts = [(h, *head_counts(h)) for h in heads]
    passed = sum(ok for _, ok, _ in counts)
    total = sum(n for _, _, n in counts)
    details = tuple(
        f"{h.trial} block {h.block}: {ok}/{n} heads pass (<= {small_cluster_max(h.num_classes)} "
        f"of {h.num_classes} labels, SNR >= {MIN_HEAD_SNR:g})"
        for h, ok, n in counts
    )
    if total < need:
        reason = (
            f"{total} analysed head(s) in the trials' last attention blocks (shp/summary.json, "
            f"held-out validation); the test needs >= {need}: analyse more trials"
        )
        return Verdict("heads", claim, NO_DATA, reason, figure, rule, (SNR_RULE,), details)
    p = stats.binom_sf_p(passed, total, HEAD_SHARE)
    share = passed / total
    reason = f"{passed} of {total} heads pass ({share:.0%}; {len(heads)} trials), binomial {_p(p)}"
    status = HELD if p < level else (NO_DATA if share > HEAD_SHARE else NOT_HELD)
    if status == NO_DATA:
        reason += "; more heads (trials) would tell"
    return Verdict("heads", claim, status, reason, figure, rule, (SNR_RULE,), details, p)


# --------------------------------------------------------------------------------------
# 3. equal accuracy with different head structures


@dataclass(frozen=True)
class ModelAccuracy:
    trial: str
    num_heads: int | None
    head_dim: int | None
    val_accuracy: float
    val_correct: np.ndarray | None = None  # (n_val,) bool, the validation images in order


def difference(
    a_acc: float, a_correct: np.ndarray | None, b_acc: float, b_correct: np.ndarray | None, n: int
) -> tuple[stats.PairedDifference, str]:
    """A minus B: paired on per-image correctness when both have it, else unpaired."""
    if a_correct is not None and b_correct is not None and len(a_correct) == len(b_correct):
        return stats.paired_difference(a_correct, b_correct), "paired"
    return stats.unpaired_difference(a_acc, n, b_acc, n), "unpaired"


def equal_accuracy_verdict(
    models: Sequence[ModelAccuracy],
    n_val: int | None,
    *,
    margin: float = EQUIVALENCE_MARGIN,
    level: float = LEVEL,
    figure: str = "accuracy",
) -> Verdict:
    """Claim 3 (see the module docstring); `margin` a fraction (0.02 = 2 points)."""
    claim = "Several architectures reach equal accuracy with different head structures"
    rule = (
        f"best trial of each head structure (num_heads, head_dim) vs the best overall, on "
        f"validation: TOST equivalence within {100 * margin:g} points (paired Tango score tests), "
        f"Bonferroni over the structures, p < {level:g}"
    )
    best: dict[tuple, ModelAccuracy] = {}
    for m in sorted(models, key=lambda m: -m.val_accuracy):
        best.setdefault((m.num_heads, m.head_dim), m)
    if len(best) < 2:
        reason = f"{len(best)} head structure(s) among {len(models)} finished trial(s)"
        return Verdict("equal", claim, NO_DATA, reason, figure, rule)
    top, *others = best.values()
    n = n_val or (len(top.val_correct) if top.val_correct is not None else 0)
    if not n:
        reason = "validation set size unknown (no logits): no test"
        return Verdict("equal", claim, NO_DATA, reason, figure, rule)
    alpha = level / len(others)
    results, details = [], []
    for m in others:
        d, how = difference(top.val_accuracy, top.val_correct, m.val_accuracy, m.val_correct, n)
        eq = stats.equivalence(d, margin, alpha)
        lo, hi = d.interval(1 - 2 * alpha)
        results.append((m, d, eq))
        details.append(
            f"{m.num_heads} heads x {m.head_dim} ({m.trial}) vs {top.num_heads} x "
            f"{top.head_dim} ({top.trial}): {_pts(-d.diff)} points [{_pts(-hi)}, {_pts(-lo)}] "
            f"({how}, n {d.n}), TOST {_p(eq.p_value)}: {eq.outcome}"
        )
    equal = [r for r in results if r[2].outcome == "equivalent"]
    p = min(r[2].p_value for r in results) * len(others)
    names = ", ".join(f"{m.num_heads}x{m.head_dim}" for m, _, _ in equal)
    if equal:
        reason = f"{len(equal)} other head structure(s) within {100 * margin:g} points of the best ({names})"
        return Verdict("equal", claim, HELD, reason, figure, rule, (), tuple(details), min(p, 1.0))
    if all(r[2].outcome == "different" for r in results):
        reason = f"every other head structure is more than {100 * margin:g} points below the best"
        return Verdict("equal", claim, NOT_HELD, reason, figure, rule, (), tuple(details), p)
    m, d, _ = min(results, key=lambda r: r[2].p_value)
    more = stats.n_for_equivalence(d.diff, d.se, d.n, margin, alpha)
    reason = (
        f"no head structure shown within {100 * margin:g} points of the best (closest: "
        f"{m.num_heads}x{m.head_dim}, {_pts(-d.diff)} points); "
        + (f"~{more} validation images would tell" if more else "its difference is at the margin")
    )
    return Verdict("equal", claim, NO_DATA, reason, figure, rule, (), tuple(details), min(p, 1.0))


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
        f"images, one-sided exact McNemar test against every member, all p < {level:g} "
        "(intersection-union); 95 % Wald interval of each gain"
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
        p = stats.mcnemar_exact(d.wins, d.losses)
        lo, hi = d.interval()
        rows.append((name, d, p))
        details.append(
            f"vs {name}: {_pts(d.diff)} points [{_pts(lo)}, {_pts(hi)}], "
            f"{d.wins} wins / {d.losses} losses, exact McNemar {_p(p)}"
        )
    worst = max(rows, key=lambda r: r[2])
    head = rows[0][1]  # the member with the best validation accuracy
    lo, hi = head.interval()
    reason = (
        f"gain over the member best on validation {_pts(head.diff)} points [{_pts(lo)}, "
        f"{_pts(hi)}] on {head.n} test images; weakest comparison: vs {worst[0]} "
        f"{_pts(worst[1].diff)} points, {_p(worst[2])}"
    )
    if worst[2] < level:
        status = HELD
    elif all(d.diff > 0 for _, d, _ in rows):
        status = NO_DATA
        z = stats.z_quantile(1 - level)
        d = worst[1]
        zobs = (d.wins - d.losses) / math.sqrt(d.wins + d.losses) if d.wins + d.losses else 0.0
        reason += f"; ~{math.ceil(d.n * (z / zobs) ** 2)} test images would tell" if zobs else ""
    else:
        status = NOT_HELD
    return Verdict("committee", claim, status, reason, figure, rule, (), tuple(details), worst[2])


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
        f"best (validation) conv_blocks=c>0 trial vs best conv_blocks=0: re-measured rounds "
        f"more than {MIN_SPEEDUP:.0%} faster (exact one-sided rank-sum) and test accuracy "
        f"within {100 * margin:g} points (TOST), both p < {level:g}/(values of c)"
    )
    recon = (CONV_RULE,)
    best: dict[int, ConvModel] = {}
    for m in sorted(models, key=lambda m: -m.val_accuracy):
        best.setdefault(m.conv_blocks, m)
    ref, subs = best.get(0), [best[c] for c in sorted(best) if c > 0]
    if ref is None or not subs:
        have = ", ".join(str(c) for c in sorted(best)) or "none"
        reason = f"needs trials with conv_blocks = 0 and > 0 (have: {have})"
        return Verdict("conv", claim, NO_DATA, reason, figure, rule, recon)
    timed = [m for m in (ref, *subs) if len(m.latency_rounds) >= MIN_LATENCY_ROUNDS]
    if ref not in timed or len(timed) < 2 or ref.test_accuracy is None:
        reason = (
            f"latency not re-measured in >= {MIN_LATENCY_ROUNDS} rounds for the compared trials "
            "(the in-sweep figure was taken while trials shared the device): run the report "
            "without --no-remeasure"
        )
        return Verdict("conv", claim, NO_DATA, reason, figure, rule, recon)
    subs = [s for s in subs if s in timed and s.test_accuracy is not None]
    alpha = level / len(subs)
    results, details = [], []
    for s in subs:
        scaled = [t / (1 - MIN_SPEEDUP) for t in s.latency_rounds]
        p_lat = stats.rank_sum_less(scaled, ref.latency_rounds)
        speed = 1 - float(np.median(s.latency_rounds) / np.median(ref.latency_rounds))
        d, how = difference(
            s.test_accuracy, s.test_correct, ref.test_accuracy, ref.test_correct, n_test or 0
        )
        eq = stats.equivalence(d, margin, alpha)
        p = max(p_lat, eq.p_value)
        results.append((s, speed, p_lat, eq, p))
        details.append(
            f"conv_blocks={s.conv_blocks} ({s.trial}) vs 0 ({ref.trial}): {100 * speed:+.0f}% "
            f"faster over {len(s.latency_rounds)}+{len(ref.latency_rounds)} rounds, rank-sum "
            f"{_p(p_lat)}; test {_pts(d.diff)} points ({how}), TOST {_p(eq.p_value)}"
        )
    best_r = min(results, key=lambda r: r[4])
    s, speed, p_lat, eq, p = best_r
    reason = (
        f"c={s.conv_blocks}: {100 * speed:.0f}% faster (rank-sum {_p(p_lat)}), test accuracy "
        f"TOST {_p(eq.p_value)} within {100 * margin:g} points"
    )
    p_all = min(1.0, p * len(subs))
    if p < alpha:
        return Verdict("conv", claim, HELD, reason, figure, rule, recon, tuple(details), p_all)
    refuted = all(r[1] <= MIN_SPEEDUP or r[3].outcome == "different" for r in results)
    status = NOT_HELD if refuted else NO_DATA
    if status == NO_DATA:
        reason += "; more timing rounds or test images would tell"
    return Verdict("conv", claim, status, reason, figure, rule, recon, tuple(details), p_all)
