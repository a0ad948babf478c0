"""Calibration of the report's verdicts by simulation (SPEC section 8; `python -m
analysis.report --calibrate`).

For each claim, sweeps are simulated where the claim is false at the least favourable point
of its null (no trend; no gain over the best member; a difference exactly at the
equivalence margin; a speed-up exactly at MIN_SPEEDUP), and where it is true at a stated
effect, and fed through the very verdict functions the report uses. The false-positive rate
is the share of false sweeps called "held", the power the share of true ones. A fixed seed
makes every figure reproducible.

What the simulations carry from real sweeps, and where each effect size comes from:

- SNR: the design of search_spaces/cifar100_conv_substitution.yaml: CCT-7 with 0..4 of
  its blocks convolutional (7, 6, 5, 4, 3 attention blocks) x 3 seeds; the 3-block models
  have fewer than MIN_SNR_BLOCKS and are left out, as in a real report, so 12 models count. log SNR = log 1.5 + seed shift + (trend + seed slope) x block + block noise, with
  a seed-wide shift (sd 0.3: the blocks of one seed are correlated), a per-seed slope (sd
  0.05 per block: seeds disagree on the trend even when there is none on average) and block
  noise (sd 0.35). Each block has no cluster at all (null SNR, dropped) with chance 0.1,
  and is noise-free with chance 0.05 (+inf when most heads are clustered, else dropped).
  Effect: the SNR doubles over the seven blocks of CCT-7 (the same rise per block in every
  architecture, so a model with fewer attention blocks rises less). Both papers state
  the rise as the central finding of their per-block figures; a doubling is the smallest
  rise that would be described so, not a value tuned to the test.
- Heads: 3 trials x 8 heads, 10 labels (digits, an 8-head structure of digits_heads). Null:
  each head passes with chance one half (HEAD_SHARE). Effect: 85 % of the heads pass -
  "each head recognises a small cluster" describes nearly every head, 85 % leaves room for
  a few silent or noisy ones. Heads independent (the binomial test's assumption).
- Equal accuracy: 3 head structures, 5,000 validation images (a CIFAR validation split),
  80 % accuracy, and two models disagreeing on whether an image is right on 12 % of the
  images (80 % models whose errors correlate at ~0.6: 2 p (1 - p) (1 - 0.6) = 0.13). Null:
  both other structures exactly EQUIVALENCE_MARGIN below the best. Effect: all equal.
- Committee: 3 members at 80.0, 79.5 and 79.0 % on 10,000 test images (CIFAR-100), the
  committee disagreeing with each member on 8 % of the images. Null: the committee exactly
  as accurate as the best member. Effect: +1 point over the best member - 1.6 standard
  errors of one model's test accuracy, the smallest gain that would be quoted.
- Conv substitution: 5 timing rounds per model, round-to-round spread 5 % (the median of
  a timing round on a shared CPU), accuracies as for equal accuracy on 10,000 test images.
  Nulls: a speed-up of exactly MIN_SPEEDUP at equal accuracy; a 30 % speed-up with test
  accuracy exactly the margin below (the larger false-positive rate is printed). Effect:
  20 % faster at equal accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from analysis.report import verdicts as v

SEED = 15
SWEEPS = 400  # per null and per true scenario


@dataclass(frozen=True)
class Calibration:
    claim: str
    false_positive: float
    power: float
    sweeps: int
    effect: str

    def line(self) -> str:
        return (
            f"{self.claim}: false-positive rate {self.false_positive:.3f}, power "
            f"{self.power:.3f} ({self.sweeps} simulated sweeps, effect {self.effect})"
        )


def held_rate(make: Callable[[np.random.Generator], v.Verdict], rng, n: int) -> float:
    return float(np.mean([make(rng).status == v.HELD for _ in range(n)]))


# --------------------------------------------------------------------------------------
# simulated sweeps, one function per claim


def snr_sweep(rng: np.random.Generator, rise: float, archs=(7, 6, 5, 4, 3), seeds=3) -> v.Verdict:
    slope = math.log(rise) / (archs[0] - 1)  # per block: `rise` over CCT-7's seven blocks
    series = []
    for a, blocks in enumerate(archs):
        for s in range(seeds):
            shift, own = rng.normal(0, 0.3), rng.normal(0, 0.05)
            log_snr = math.log(1.5) + shift + (slope + own) * np.arange(blocks)
            log_snr = log_snr + rng.normal(0, 0.35, blocks)
            out = []
            for b, x in enumerate(log_snr):
                r = rng.random()
                if r < 0.1:  # no head has a cluster
                    out.append(v.BlockSnr(b, "head", None, None, False, 4, 0))
                elif r < 0.15:  # noise-free; mostly clustered or not
                    out.append(v.BlockSnr(b, "head", None, None, True, 4, int(rng.integers(1, 5))))
                else:
                    out.append(v.BlockSnr(b, "head", math.exp(x), 2 * math.exp(x), False, 4, 4))
            series.append(v.SnrSeries(f"a{a}s{s}", f"arch{a}", s, tuple(out)))
    return v.snr_verdict(series)


def heads_sweep(rng: np.random.Generator, share: float, trials=3, heads=8, k=10) -> v.Verdict:
    small = v.small_cluster_max(k)
    blocks = []
    for t in range(trials):
        sets, noise = [], []
        for _ in range(heads):
            if rng.random() < share:  # a small, quiet cluster
                n = int(rng.integers(1, small + 1))
                sets.append(tuple(range(n)))
                noise.append(int(rng.integers(0, math.floor(n / v.MIN_HEAD_SNR) + 1)))
            elif rng.random() < 0.5:  # too many labels
                n = int(rng.integers(small + 1, k + 1))
                sets.append(tuple(range(n)))
                noise.append(int(rng.integers(0, 3)))
            else:  # noisy
                n = int(rng.integers(1, small + 1))
                sets.append(tuple(range(n)))
                noise.append(int(rng.integers(math.floor(n / v.MIN_HEAD_SNR) + 1, 2 * k)))
        blocks.append(v.HeadBlock(f"t{t}", 2, k, tuple(sets), tuple(noise)))
    return v.specialisation_verdict(blocks)


def paired(rng: np.random.Generator, ref: np.ndarray, delta: float, disagree: float) -> np.ndarray:
    """Correctness of a model `delta` more accurate than `ref`'s model, the two disagreeing
    on a `disagree` share of the images: P(only it right) - P(only ref right) = delta."""
    p_ref = ref.mean() if len(ref) else 0.5
    gain = (disagree + delta) / 2 / max(1 - p_ref, 1e-9)  # P(right | ref wrong)
    loss = (disagree - delta) / 2 / max(p_ref, 1e-9)  # P(wrong | ref right)
    u = rng.random(len(ref))
    return np.where(ref, u >= loss, u < gain)


def equal_sweep(rng: np.random.Generator, gap: float, n=5000, acc=0.80, d=0.12) -> v.Verdict:
    top = rng.random(n) < acc
    models = [v.ModelAccuracy("t0", 2, 32, float(top.mean()), top)]
    for i, heads in enumerate((8, 16)):
        other = paired(rng, top, -gap, d)
        models.append(v.ModelAccuracy(f"t{i + 1}", heads, 64 // heads, float(other.mean()), other))
    return v.equal_accuracy_verdict(models, n)


def committee_sweep(rng: np.random.Generator, gain: float, n=10_000, d=0.08) -> v.Verdict:
    best = rng.random(n) < 0.80
    committee = paired(rng, best, gain, d)
    members = [
        best,
        paired(rng, committee, -gain - 0.005, d),
        paired(rng, committee, -gain - 0.01, d),
    ]
    fig = v.CommitteeFigures(
        "sim", "max_size=5", True, ("m1", "m2", "m3"), (0.8, 0.8, 0.8), tuple(members), committee
    )
    return v.committee_verdict(fig)


def conv_sweep(
    rng: np.random.Generator, speedup: float, gap: float, rounds=5, n=10_000, d=0.12
) -> v.Verdict:
    ref_correct = rng.random(n) < 0.80
    sub_correct = paired(rng, ref_correct, -gap, d)
    ref_ms, sub_ms = 2.0, 2.0 * (1 - speedup)
    models = [
        v.ConvModel("t0", 0, 0.9, float(ref_correct.mean()), ref_ms, "re-measured",
                    tuple(ref_ms * np.exp(rng.normal(0, 0.05, rounds))), ref_correct),
        v.ConvModel("t1", 1, 0.89, float(sub_correct.mean()), sub_ms, "re-measured",
                    tuple(sub_ms * np.exp(rng.normal(0, 0.05, rounds))), sub_correct),
    ]  # fmt: skip
    return v.conv_verdict(models, n)


# --------------------------------------------------------------------------------------


def calibrate(sweeps: int = SWEEPS, seed: int = SEED) -> list[Calibration]:
    """One Calibration per claim; every figure from one seeded generator per claim."""
    margin = v.EQUIVALENCE_MARGIN
    rows = []

    def rate(make, sub_seed: int) -> float:
        return held_rate(make, np.random.default_rng([seed, sub_seed]), sweeps)

    rows.append(Calibration(
        "SNR rises along the blocks",
        rate(lambda r: snr_sweep(r, 1.0), 1), rate(lambda r: snr_sweep(r, 2.0), 2), sweeps,
        "SNR x2 over CCT-7's 7 blocks; 5 architectures with 7..3 attention blocks x 3 seeds",
    ))  # fmt: skip
    rows.append(Calibration(
        "each head: a small cluster, little noise",
        rate(lambda r: heads_sweep(r, v.HEAD_SHARE), 3), rate(lambda r: heads_sweep(r, 0.85), 4),
        sweeps, "85 % of 24 heads pass (3 trials x 8 heads, 10 labels)",
    ))  # fmt: skip
    rows.append(Calibration(
        "equal accuracy, different head structures",
        rate(lambda r: equal_sweep(r, margin), 5), rate(lambda r: equal_sweep(r, 0.0), 6), sweeps,
        f"equal accuracy vs null at the {100 * margin:g}-point margin, 5,000 validation images",
    ))  # fmt: skip
    rows.append(Calibration(
        "soft committee beats each member",
        rate(lambda r: committee_sweep(r, 0.0), 7), rate(lambda r: committee_sweep(r, 0.01), 8),
        sweeps, "+1 point over the best of 3 members, 10,000 test images",
    ))  # fmt: skip
    fp = max(
        rate(lambda r: conv_sweep(r, v.MIN_SPEEDUP, 0.0), 9),
        rate(lambda r: conv_sweep(r, 0.30, margin), 10),
    )
    rows.append(Calibration(
        "conv blocks cut latency at equal accuracy",
        fp, rate(lambda r: conv_sweep(r, 0.20, 0.0), 11), sweeps,
        "20 % faster over 5+5 timing rounds (5 % spread), equal accuracy on 10,000 test images",
    ))  # fmt: skip
    return rows


def main() -> int:
    t = time.perf_counter()
    rows = calibrate()
    for row in rows:
        print(row.line())
    mc = math.sqrt(v.LEVEL * (1 - v.LEVEL) / SWEEPS)
    print(
        f"level {v.LEVEL:g} (Monte-Carlo standard error of a rate at the level: {mc:.3f}); "
        f"seed {SEED}; {time.perf_counter() - t:.1f} s"
    )
    return 0
