"""The statistical tests behind the report's verdicts, in numpy and the standard library only
(exact where the sample allows it, a stated normal approximation otherwise):

    spearman(x, y)                      rank correlation, +inf ranks highest
    sign_flip_test(values)              one-sided exact sign-flip (randomisation) test of mean > 0
    units_for_sign_flip(values)         how many units the observed mean and spread would need
    mcnemar_exact(b, c)                 one-sided exact McNemar: paired wins b vs losses c
    paired_difference(xa, xb)           difference of two paired accuracies, its SE and interval
    tost(diff, se, margin)              two one-sided tests: |true difference| < margin
    gain_above(d, minimum)              one-sided score test and lower bound of a paired gain
    rank_sum_less(x, y)                 one-sided exact Wilcoxon-Mann-Whitney test: x below y
    rounds_for(level)                   timing rounds per model that an exact rank-sum test needs
    wilson(k, n)                        binomial interval of an accuracy

Every function is pure and deterministic; the Monte-Carlo fallback of the sign-flip test
(more than MAX_EXACT_FLIPS values) takes its generator seeded.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.05  # the default level of every test: "held" needs p < LEVEL
MAX_EXACT_FLIPS = 16  # 2**16 sign vectors; beyond, a seeded Monte-Carlo of 20,000
_NORMAL = NormalDist()


def norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def z_quantile(p: float) -> float:
    return _NORMAL.inv_cdf(p)


# --------------------------------------------------------------------------------------
# ranks


def ranks(a: Sequence[float]) -> list[float]:
    """Ranks 0..n-1, ties sharing their mean rank; +inf ranks above every finite value.
    Plain Python: the series here are a few blocks long, where numpy's overhead dominates."""
    order = sorted(range(len(a)), key=lambda i: a[i])
    out = [0.0] * len(a)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and a[order[j + 1]] == a[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties: the mean rank
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN when either side is constant."""
    rx, ry = ranks([float(v) for v in x]), ranks([float(v) for v in y])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return float("nan") if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


# --------------------------------------------------------------------------------------
# sign-flip test (units: trained models)


def min_units_for(level: float = LEVEL) -> int:
    """The fewest units with which a one-sided sign-flip test can reach p < level at all
    (all units positive gives p = 2**-n)."""
    return math.ceil(math.log2(1.0 / level) + 1e-9)


def sign_flip_test(values: Sequence[float], *, seed: int = 0, draws: int = 20_000) -> float:
    """One-sided p-value of mean(values) > 0 under H0: each value's sign is +/- with equal
    chance, independently (the units are exchangeable in sign: true of a per-model trend
    statistic whose model has no trend). Exact over all 2**n sign vectors up to
    MAX_EXACT_FLIPS values; else a seeded Monte-Carlo estimate (+1 in both counts)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return 1.0
    observed = v.sum()
    mags = np.abs(v)
    if n <= MAX_EXACT_FLIPS:
        stats = _signs(n) @ mags
        return float(np.mean(stats >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    stats = rng.choice((-1.0, 1.0), size=(draws, n)) @ mags
    return float((np.sum(stats >= observed - 1e-12) + 1) / (draws + 1))


def units_for_sign_flip(values: Sequence[float], level: float = LEVEL) -> int | None:
    """Units at which the observed mean and spread of `values` would reach p < level (a
    normal power calculation, at 80 % power, never below min_units_for(level)); None when
    the mean is not positive (no size would)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0 or v.mean() <= 0:
        return None
    sd = float(v.std(ddof=1)) if len(v) > 1 else float(abs(v.mean()))
    z = z_quantile(1 - level) + z_quantile(0.8)
    return max(min_units_for(level), math.ceil((z * sd / v.mean()) ** 2))


@functools.lru_cache(maxsize=MAX_EXACT_FLIPS + 1)
def _signs(n: int) -> np.ndarray:
    """(2**n, n): every vector of n signs."""
    return (1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)).astype(float)


# --------------------------------------------------------------------------------------
# binomial and paired-proportion tests


def binom_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exact."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if n > 200:  # log space; the exact integer sum gets slow
        return binom_sf_p(k, n, 0.5)
    return sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n)  # exact integers


def binom_sf_p(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact up to float rounding (log space)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    j = np.arange(1, n + 1, dtype=float)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log(n - j + 1) - np.log(j))))  # log C(n, i)
    i = np.arange(n + 1)
    logs = (log_comb + i * math.log(p) + (n - i) * math.log1p(-p))[k:]
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that A beats B on paired images: b images only A gets
    right, c only B; under H0 (equal accuracy) each discordant image is A's with chance 1/2.
    No discordant image: p = 1."""
    return binom_sf(b, b + c)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same n images."""

    n: int
    wins: int  # images only A gets right
    losses: int  # images only B gets right
    diff: float
    se: float  # Wald SE of the paired difference, with half an image added to each discordant cell
    paired: bool = True

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        z = z_quantile(0.5 + level / 2)
        return self.diff - z * self.se, self.diff + z * self.se


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedDifference:
    """The paired difference of two models' per-image correctness (same images, same order).
    The SE adds half an image to each discordant cell so that two models that never disagree
    on a small set are not declared exactly equal."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired correctness needs two equal 1-D arrays, got {a.shape}, {b.shape}")
    n = len(a)
    wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return _paired(n, wins, losses)


def _paired(n: int, wins: int, losses: int) -> PairedDifference:
    w, lo = wins + 0.5, losses + 0.5
    d_adj = (w - lo) / n
    var = max(((w + lo) / n - d_adj**2) / n, 0.0)
    return PairedDifference(n, wins, losses, (wins - losses) / n, math.sqrt(var))


def unpaired_difference(acc_a: float, n_a: int, acc_b: float, n_b: int) -> PairedDifference:
    """Two accuracies on different (or unknown-order) images: Wald SE of independent
    proportions, each with half an image added (a conservative stand-in for the paired SE
    when two models' errors are positively correlated, as on a shared validation set)."""
    pa, pb = (acc_a * n_a + 0.5) / (n_a + 1), (acc_b * n_b + 0.5) / (n_b + 1)
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    return PairedDifference(min(n_a, n_b), 0, 0, acc_a - acc_b, se, paired=False)


@dataclass(frozen=True)
class Equivalence:
    p_value: float  # TOST: the larger of the two one-sided p-values
    p_beyond: float  # one-sided p-value that |difference| > margin (for "not held")
    outcome: str  # "equivalent" | "different" | "inconclusive"


def tost(diff: float, se: float, margin: float, level: float = LEVEL) -> Equivalence:
    """Two one-sided z-tests (Schuirmann 1987) of H0: |true difference| >= margin; the
    difference is declared within the margin when both reject at `level`. "different" when
    the difference is significantly beyond the margin (one-sided, same level)."""
    if se <= 0:
        se = 1e-12
    p_low = norm_sf((diff + margin) / se)  # H0: diff <= -margin
    p_high = norm_sf((margin - diff) / se)  # H0: diff >= margin
    p = max(p_low, p_high)
    p_beyond = norm_sf((abs(diff) - margin) / se)
    if p < level:
        outcome = "equivalent"
    elif p_beyond < level:
        outcome = "different"
    else:
        outcome = "inconclusive"
    return Equivalence(p, p_beyond, outcome)


def tango_z(wins: int, losses: int, n: int, theta: float) -> float:
    """Tango's (1998) score statistic for H0: p(A only right) - p(B only right) = theta on
    paired data; the variance is taken at the restricted maximum-likelihood estimate under
    H0, which keeps the test near its level with few discordant images, where the Wald
    statistic rejects too often (seen in the calibration: 11 % at 5 % on 360 images)."""
    a = 2.0 * n
    b = -wins - losses + (2.0 * n - wins + losses) * theta
    c = -losses * theta * (1.0 - theta)
    p21 = max((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a), 0.0)
    var = n * (2 * p21 + theta * (1 - theta))
    return (wins - losses - n * theta) / math.sqrt(var) if var > 0 else 0.0


def equivalence(d: PairedDifference, margin: float, level: float = LEVEL) -> Equivalence:
    """TOST of |A - B| < margin: Tango's score tests on paired data, z-tests otherwise."""
    if not d.paired:
        return tost(d.diff, d.se, margin, level)
    p_high = 1.0 - norm_sf(tango_z(d.wins, d.losses, d.n, margin))  # H0: diff >= margin
    p_low = 1.0 - norm_sf(tango_z(d.losses, d.wins, d.n, margin))  # H0: diff <= -margin
    p = max(p_high, p_low)
    w, lo = (d.wins, d.losses) if d.diff >= 0 else (d.losses, d.wins)
    p_beyond = norm_sf(tango_z(w, lo, d.n, margin))  # H0: |diff| <= margin
    outcome = "equivalent" if p < level else "different" if p_beyond < level else "inconclusive"
    return Equivalence(p, p_beyond, outcome)


@dataclass(frozen=True)
class Gain:
    """A paired gain of A over B tested against a minimum: H0 gain <= minimum."""

    p_value: float  # one-sided score test (Tango) of H0: gain <= minimum
    lower: float  # one-sided lower confidence bound of the gain at the same level


def gain_above(d: PairedDifference, minimum: float, level: float = LEVEL) -> Gain:
    """Tango's score test of H0: gain <= minimum, and its inversion: the one-sided lower
    bound at `level`, so that p < level exactly when the bound is above the minimum (the
    bound and the test cannot disagree)."""
    p = norm_sf(tango_z(d.wins, d.losses, d.n, minimum))
    z = z_quantile(1 - level)
    lo, hi = -1.0 + 1e-9, d.diff  # tango_z falls as theta rises; at theta = diff it is ~0
    if tango_z(d.wins, d.losses, d.n, lo) < z:
        return Gain(p, lo)
    for _ in range(60):  # bisection to ~1e-18
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tango_z(d.wins, d.losses, d.n, mid) >= z else (lo, mid)
    return Gain(p, lo)


def n_for_gain(d: PairedDifference, minimum: float, level: float = LEVEL) -> int | None:
    """Test images at which the observed gain and discordance would pass gain_above at 80 %
    power; None when the observed gain is not above the minimum."""
    room = d.diff - minimum
    if room <= 0:
        return None
    z = z_quantile(1 - level) + z_quantile(0.8)
    disc = (d.wins + d.losses + 1) / d.n  # per-image variance of a paired difference, ~
    return math.ceil(disc * (z / room) ** 2)


def n_for_equivalence(diff: float, se: float, n: int, margin: float, level: float = LEVEL) -> int:
    """Images at which the same observed difference and per-image spread would pass TOST
    (SE shrinks as 1/sqrt(n)); 0 when no size would (|diff| >= margin)."""
    room = margin - abs(diff)
    if room <= 0:
        return 0
    z = z_quantile(1 - level)
    return math.ceil(n * (z * se / room) ** 2)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (good coverage near 0 and 1,
    where an accuracy of 100 % lives)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_quantile(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------------------
# latency: repeated timing rounds


def rank_sum_less(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided exact Wilcoxon-Mann-Whitney p-value that x tends to be smaller than y: the
    rank sum of x among the pooled values (mid-ranks for ties), its null distribution by
    enumerating every split of the pooled values (small samples: timing rounds); the normal
    approximation beyond 50,000 splits."""
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return 1.0
    r = np.asarray(ranks([*map(float, x), *map(float, y)])) + 1.0  # 1-based mid-ranks
    observed = r[:m].sum()
    if math.comb(m + n, m) > 50_000:
        mean, sd = m * (m + n + 1) / 2, math.sqrt(m * n * (m + n + 1) / 12)
        return 1.0 - norm_sf((observed - mean) / sd)
    sums = _splits(m, n) @ r  # rank sum of x under every split
    return float(np.mean(sums <= observed + 1e-9))


def rounds_for(level: float) -> int:
    """Timing rounds per model (equal on both sides) with which the exact rank-sum test
    reaches p < level even with one pair of rounds out of order (p = 2 / C(2r, r)): with
    fewer, one noisy round makes a real speed-up undetectable."""
    r = 2
    while 2 / math.comb(2 * r, r) >= level:
        r += 1
    return r


@functools.lru_cache(maxsize=16)
def _splits(m: int, n: int) -> np.ndarray:
    """(C(m+n, m), m+n) 0/1: every choice of m of the pooled positions."""
    rows = list(itertools.combinations(range(m + n), m))
    out = np.zeros((len(rows), m + n))
    out[np.repeat(np.arange(len(rows)), m), np.asarray(rows).ravel()] = 1.0
    return out
