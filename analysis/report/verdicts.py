"""The verdict on each claim of SPEC section 1, from plain data: pure functions, no MLflow,
no files, no pictures. Each returns a Verdict: "held", "not held" or "not enough data", a
sentence with the numbers it rests on, the figure it rests on, and the rules it relies on
that SPEC marks [reconstructed].

The thresholds are this report's own choices (the papers state their claims in words); they
are the module constants below, and the report prints them:

1. SNR rises along the blocks (`snr_verdict`). Per architecture (seeds averaged per block),
   the attention blocks (units heads, or nodes for SNP) that have an SNR (a noise-free block
   counts as +infinity). An architecture *rises* when it has >= MIN_SNR_BLOCKS such blocks,
   Spearman's rho(block, SNR) >= MIN_RHO and the last block's SNR is more than MIN_CHANGE
   (relative) above the first's; it *falls* on rho <= -MIN_RHO with the last more than
   MIN_CHANGE below the first; otherwise it is flat/mixed.
   Held when >= HELD_SHARE of the qualifying architectures rise; not held otherwise; not
   enough data when no architecture qualifies. Decided on snr_labels; snr_area is reported
   beside it. Conv blocks are left out: their units are single filters, not heads.
2. Each head specialises in a small cluster of labels with little noise
   (`specialisation_verdict`). Per trial, its last analysed head block. A trial passes when
   >= MIN_CLUSTERED_SHARE of its heads have a cluster, its clustered heads hold on average at
   most SMALL_CLUSTER_SHARE of the labels in clusters, and its noise is below its signal
   (snr_labels >= MIN_SNR, or noise-free). Held when >= HELD_SHARE of the trials pass.
3. Several architectures reach equal accuracy with different head structures
   (`equal_accuracy_verdict`). Head structure = (num_heads, head_dim). Tolerance = the
   committee's: one binomial standard error of the best validation accuracy (SPEC 6), or a
   given number of points. Held when trials of >= 2 head structures are within the tolerance
   of the best validation accuracy; not enough data with fewer than 2 head structures.
4. The soft committee beats each member (`committee_verdict`): held when the committee's
   test accuracy is strictly above every member's; not enough data without a committee run
   of >= 2 members.
5. Conv-substituted blocks cut latency without losing accuracy (`conv_verdict`). The best
   trial by validation accuracy with conv_blocks = 0 is the reference; for each conv_blocks
   c > 0 the best trial by validation accuracy is compared with it. Faster: latency <=
   (1 - MIN_SPEEDUP) x the reference's. Not losing accuracy: test accuracy >= the
   reference's minus one binomial standard error of the reference's test accuracy. Held when
   some c > 0 is both; not held when none is; not enough data without both kinds of trial
   or without latency for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from analysis.committee.select import default_tolerance

Status = Literal["held", "not held", "not enough data"]
HELD, NOT_HELD, NO_DATA = "held", "not held", "not enough data"

MIN_SNR_BLOCKS = 3  # head blocks with an SNR per architecture for a trend
MIN_RHO = 0.5  # Spearman rank correlation of SNR with block index for "rises"/"falls"
MIN_CHANGE = 0.10  # and the last block's SNR at least 10 % above (below) the first's
HELD_SHARE = 2 / 3  # share of architectures/trials that must show the effect
SMALL_CLUSTER_SHARE = 0.5  # mean labels in clusters per clustered head, as a share of labels
MIN_CLUSTERED_SHARE = 0.5  # share of heads with at least one cluster
MIN_SNR = 1.0  # "little noise": signal (labels in clusters) at least the noise
MIN_SPEEDUP = 0.05  # "cuts latency": at least 5 % faster than the all-transformer model

THRESHOLDS = {
    "MIN_SNR_BLOCKS": MIN_SNR_BLOCKS,
    "MIN_RHO": MIN_RHO,
    "MIN_CHANGE": MIN_CHANGE,
    "HELD_SHARE": round(HELD_SHARE, 3),
    "SMALL_CLUSTER_SHARE": SMALL_CLUSTER_SHARE,
    "MIN_CLUSTERED_SHARE": MIN_CLUSTERED_SHARE,
    "MIN_SNR": MIN_SNR,
    "MIN_SPEEDUP": MIN_SPEEDUP,
}

SNR_RULE = "SNR definitions (labels/noise and area/noise)"
CONV_RULE = "the conv replacement block (3x3 conv, norm, activation, residual)"
SEQPOOL_RULE = "seqpool readout"


@dataclass(frozen=True)
class Verdict:
    """One claim's outcome, with the sentence and figure it rests on."""

    key: str
    claim: str
    status: Status
    reason: str
    figure: str  # the report section id the verdict rests on
    rule: str  # the threshold rule, in words
    reconstructed: tuple[str, ...] = ()
    details: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# 1. SNR rises along the blocks


@dataclass(frozen=True)
class BlockSnr:
    """One analysed block of one architecture (seeds averaged)."""

    block: int
    unit: str  # "head", "filter", "node", "ff-node"
    snr_labels: float | None
    snr_area: float | None
    noise_free: bool = False


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank; +inf ranks highest); NaN when
    either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # ties: the mean rank
        ranks[a == v] = ranks[a == v].mean()
    return ranks


def snr_series(blocks: Sequence[BlockSnr], variant: str) -> list[tuple[int, float]]:
    """(block, SNR) over the attention blocks (any unit but a conv block's filters) with a
    value; a noise-free block counts as +inf."""
    out = []
    for b in sorted(blocks, key=lambda b: b.block):
        value = getattr(b, variant)
        if b.unit == "filter":  # a conv block: single filters, not comparable with heads
            continue
        if value is None and b.noise_free:
            value = math.inf
        if value is not None:
            out.append((b.block, float(value)))
    return out


def trend(series: Sequence[tuple[int, float]]) -> str:
    """ "rises", "falls", "flat" or "too few blocks" for one architecture's SNR series."""
    if len(series) < MIN_SNR_BLOCKS:
        return "too few blocks"
    blocks, values = zip(*series)
    rho = spearman(blocks, values)
    if rho >= MIN_RHO and values[-1] > values[0] * (1 + MIN_CHANGE):
        return "rises"
    if rho <= -MIN_RHO and values[-1] < values[0] * (1 - MIN_CHANGE):
        return "falls"
    return "flat"


def snr_verdict(
    curves: Mapping[str, Sequence[BlockSnr]], *, seqpool: bool = False, figure: str = "snr"
) -> Verdict:
    """Claim 1 from each architecture's per-block SNR (see the module docstring)."""
    claim = "SNR rises along the blocks"
    rule = (
        f"per architecture, >= {MIN_SNR_BLOCKS} attention blocks with an SNR; rises when "
        f"Spearman rho >= {MIN_RHO} and last > first by > {MIN_CHANGE:.0%}; held when "
        f">= {HELD_SHARE:.0%} of "
        "architectures rise (snr_labels decides, snr_area shown)"
    )
    recon = (SNR_RULE, SEQPOOL_RULE) if seqpool else (SNR_RULE,)
    trends = {a: trend(snr_series(b, "snr_labels")) for a, b in curves.items()}
    area = {a: trend(snr_series(b, "snr_area")) for a, b in curves.items()}
    details = tuple(f"{a}: {t} (snr_area: {area[a]})" for a, t in trends.items())
    qualifying = [a for a, t in trends.items() if t != "too few blocks"]
    if not qualifying:
        most = max((len(snr_series(b, "snr_labels")) for b in curves.values()), default=0)
        reason = (
            f"no architecture has {MIN_SNR_BLOCKS} attention blocks with an SNR "
            f"(most: {most}, over {len(curves)} architecture(s))"
        )
        return Verdict("snr", claim, NO_DATA, reason, figure, rule, recon, details)
    rising = [a for a in qualifying if trends[a] == "rises"]
    falling = [a for a in qualifying if trends[a] == "falls"]
    share = len(rising) / len(qualifying)
    agree = sum(area[a] == "rises" for a in qualifying)
    reason = (
        f"{len(rising)} of {len(qualifying)} architectures rise, {len(falling)} fall "
        f"(snr_area: {agree} rise)"
    )
    status = HELD if share >= HELD_SHARE - 1e-9 else NOT_HELD
    return Verdict("snr", claim, status, reason, figure, rule, recon, details)


# --------------------------------------------------------------------------------------
# 2. heads specialise in small clusters with little noise


@dataclass(frozen=True)
class HeadBlock:
    """The last analysed attention block of one trial."""

    trial: str
    block: int
    num_classes: int
    num_units: int
    units_with_cluster: int
    mean_labels_in_clusters: float | None  # over heads with a cluster
    mean_noise: float | None
    snr_labels: float | None
    noise_free: bool = False


def head_block_passes(h: HeadBlock) -> tuple[bool, str]:
    """(passes?, why) for one trial's head block."""
    clustered = h.units_with_cluster / h.num_units if h.num_units else 0.0
    if clustered < MIN_CLUSTERED_SHARE or h.mean_labels_in_clusters is None:
        return False, f"{h.units_with_cluster}/{h.num_units} heads have a cluster"
    share = h.mean_labels_in_clusters / h.num_classes
    quiet = h.noise_free or (h.snr_labels is not None and h.snr_labels >= MIN_SNR)
    snr = "noise-free" if h.noise_free else f"SNR {_num(h.snr_labels)}"
    why = (
        f"{h.mean_labels_in_clusters:.1f}/{h.num_classes} labels per head, {snr}, "
        f"{h.units_with_cluster}/{h.num_units} heads clustered"
    )
    return share <= SMALL_CLUSTER_SHARE and quiet, why


def specialisation_verdict(heads: Sequence[HeadBlock], figure: str = "heads") -> Verdict:
    """Claim 2 from each trial's last attention block (see the module docstring)."""
    claim = "Each head specialises in a small cluster of labels with little noise"
    rule = (
        f"per trial, last attention block: >= {MIN_CLUSTERED_SHARE:.0%} of heads clustered, "
        f"<= {SMALL_CLUSTER_SHARE:.0%} of the labels per clustered head, snr_labels >= "
        f"{MIN_SNR:g} (or noise-free); held when >= {HELD_SHARE:.0%} of trials pass"
    )
    if not heads:
        reason = "no trial has an analysed attention block (shp/summary.json)"
        return Verdict("heads", claim, NO_DATA, reason, figure, rule, (SNR_RULE,))
    checked = [(h, *head_block_passes(h)) for h in heads]
    passed = sum(ok for _, ok, _ in checked)
    details = tuple(
        f"{h.trial} block {h.block}: {'pass' if ok else 'fail'} ({why})" for h, ok, why in checked
    )
    reason = f"{passed} of {len(heads)} trials pass"
    status = HELD if passed / len(heads) >= HELD_SHARE - 1e-9 else NOT_HELD
    return Verdict("heads", claim, status, reason, figure, rule, (SNR_RULE,), details)


# --------------------------------------------------------------------------------------
# 3. equal accuracy with different head structures


@dataclass(frozen=True)
class ModelAccuracy:
    trial: str
    num_heads: int | None
    head_dim: int | None
    val_accuracy: float


def equal_accuracy_verdict(
    models: Sequence[ModelAccuracy],
    n_val: int | None,
    *,
    tolerance: float | None = None,
    figure: str = "accuracy",
) -> Verdict:
    """Claim 3; `tolerance` a fraction (None: one binomial SE of the best, needs n_val)."""
    claim = "Several architectures reach equal accuracy with different head structures"
    rule = (
        "trials of >= 2 head structures (num_heads, head_dim) within the committee tolerance "
        "(one binomial SE of the best validation accuracy) of the best"
    )
    structures = {(m.num_heads, m.head_dim) for m in models}
    if len(structures) < 2:
        reason = f"{len(structures)} head structure(s) among {len(models)} finished trial(s)"
        return Verdict("equal", claim, NO_DATA, reason, figure, rule)
    best = max(models, key=lambda m: m.val_accuracy)
    if tolerance is None:
        if not n_val:
            reason = "validation set size unknown (no logits): no tolerance"
            return Verdict("equal", claim, NO_DATA, reason, figure, rule)
        tolerance = default_tolerance(best.val_accuracy, n_val)
    close = [m for m in models if m.val_accuracy >= best.val_accuracy - tolerance - 1e-12]
    close_structures = sorted({(m.num_heads, m.head_dim) for m in close}, key=str)
    names = ", ".join(f"{h} heads x {d}" for h, d in close_structures)
    reason = (
        f"{len(close_structures)} of {len(structures)} head structures within "
        f"{100 * tolerance:.2f} points of the best {100 * best.val_accuracy:.2f}% ({names})"
    )
    status = HELD if len(close_structures) >= 2 else NOT_HELD
    return Verdict("equal", claim, status, reason, figure, rule)


# --------------------------------------------------------------------------------------
# 4. the soft committee beats each member


@dataclass(frozen=True)
class CommitteeFigures:
    member_test: tuple[float, ...]
    test_accuracy: float


def committee_verdict(c: CommitteeFigures | None, figure: str = "committee") -> Verdict:
    claim = "The soft committee beats each member"
    rule = "committee test accuracy strictly above every member's (members chosen on validation)"
    if c is None or len(c.member_test) < 2:
        reason = (
            "no committee run for this sweep (python -m analysis.committee)"
            if c is None
            else "the committee has fewer than 2 members"
        )
        return Verdict("committee", claim, NO_DATA, reason, figure, rule)
    best = max(c.member_test)
    gain = c.test_accuracy - best
    reason = (
        f"committee {100 * c.test_accuracy:.2f}% vs best member {100 * best:.2f}% on test "
        f"({100 * gain:+.2f} points, {len(c.member_test)} members)"
    )
    return Verdict("committee", claim, HELD if gain > 0 else NOT_HELD, reason, figure, rule)


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


def conv_verdict(
    models: Sequence[ConvModel], n_test: int | None, figure: str = "latency"
) -> Verdict:
    """Claim 5 (see the module docstring); `n_test` sizes the accuracy tolerance."""
    claim = "Conv-substituted blocks cut latency without losing accuracy"
    rule = (
        f"best (by validation) conv_blocks=c>0 trial vs best conv_blocks=0 trial: latency "
        f">= {MIN_SPEEDUP:.0%} lower and test accuracy >= the reference's minus one binomial SE"
    )
    recon = (CONV_RULE,)
    best: dict[int, ConvModel] = {}
    for m in sorted(models, key=lambda m: -m.val_accuracy):
        best.setdefault(m.conv_blocks, m)
    ref = best.get(0)
    subs = [best[c] for c in sorted(best) if c > 0]
    if ref is None or not subs:
        have = ", ".join(str(c) for c in sorted(best)) or "none"
        reason = f"needs trials with conv_blocks = 0 and > 0 (have: {have})"
        return Verdict("conv", claim, NO_DATA, reason, figure, rule, recon)
    usable = [s for s in subs if s.latency_ms is not None and s.test_accuracy is not None]
    if ref.latency_ms is None or ref.test_accuracy is None or not usable:
        reason = "no latency or test accuracy for the compared trials"
        return Verdict("conv", claim, NO_DATA, reason, figure, rule, recon)
    tol = default_tolerance(ref.test_accuracy, n_test) if n_test else 0.0
    details, short, ok = [], [], []
    for s in usable:
        speed = 1 - s.latency_ms / ref.latency_ms
        loss = ref.test_accuracy - s.test_accuracy
        ok.append(speed >= MIN_SPEEDUP and loss <= tol + 1e-12)
        faster = f"{100 * speed:.0f}% faster" if speed >= 0 else f"{-100 * speed:.0f}% slower"
        figures = (
            f"{s.latency_ms:.3g} vs {ref.latency_ms:.3g} ms, {faster} ({s.latency_source}); "
            f"test {100 * s.test_accuracy:.2f}% vs {100 * ref.test_accuracy:.2f}%"
        )
        short.append(f"c={s.conv_blocks}: {figures}")
        details.append(f"conv_blocks={s.conv_blocks} ({s.trial}) vs 0 ({ref.trial}): {figures}")
    reason = "; ".join(short) + f" (accuracy tolerance {100 * tol:.2f} points)"
    return Verdict(
        "conv", claim, HELD if any(ok) else NOT_HELD, reason, figure, rule, recon, tuple(details)
    )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
