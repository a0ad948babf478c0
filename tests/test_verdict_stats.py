"""The report's verdicts rest on stated tests: the tests against known values, each verdict
on hand-made evidence (including the cases a review found it calling "held" on noise), the
committee's tolerance floor, and the calibration (`python -m analysis.report --calibrate`):
every claim's false-positive rate at or under the level and its power at 0.8 or more."""

import math
import re

import numpy as np
import pytest

from analysis.committee.select import default_tolerance
from analysis.report import stats
from analysis.report.verdicts import (
    HELD,
    MIN_SNR_BLOCKS,
    NO_DATA,
    NOT_HELD,
    NOT_JUDGED,
    BlockSnr,
    CommitteeFigures,
    ConvModel,
    HeadBlock,
    ModelAccuracy,
    SnrSeries,
    committee_verdict,
    conv_verdict,
    equal_accuracy_verdict,
    snr_verdict,
    specialisation_verdict,
)

# --------------------------------------------------------------------------------------
# the tests against values worked out by hand


def test_exact_mcnemar_and_binomial_tails():
    assert stats.mcnemar_exact(8, 2) == pytest.approx(56 / 1024)  # P(X >= 8), X ~ B(10, 1/2)
    assert stats.mcnemar_exact(1, 0) == 0.5  # one test image won: no evidence
    assert stats.mcnemar_exact(0, 0) == 1.0
    # the log-space path agrees with the exact integer sum
    exact = sum(math.comb(300, i) for i in range(170, 301)) / 2**300
    assert stats.binom_sf(170, 300) == pytest.approx(exact, rel=1e-9)
    assert stats.binom_sf_p(3, 3, 0.5) == pytest.approx(1 / 8)


def test_sign_flip_test_is_exact_and_the_monte_carlo_path_is_seeded():
    assert stats.sign_flip_test([0.5, 1.0, 0.2, 0.9, 0.3]) == pytest.approx(1 / 32)
    assert stats.sign_flip_test([1.0, -1.0]) == pytest.approx(3 / 4)
    assert stats.min_units_for(0.05) == 5
    many = list(np.linspace(-0.2, 1.0, 20))
    assert stats.sign_flip_test(many) == stats.sign_flip_test(many)  # seeded
    assert stats.sign_flip_test(many) < 0.01


def test_paired_equivalence_uses_score_tests():
    # 40 images only A gets right, 35 only B, of 5000: 0.1 points apart, well within 2
    d = stats._paired(5000, 40, 35)
    assert stats.equivalence(d, 0.02).outcome == "equivalent"
    far = stats._paired(5000, 400, 35)  # 7.3 points apart
    assert stats.equivalence(far, 0.02).outcome == "different"
    # the score statistic is 0 exactly at the margin
    assert stats.tango_z(110, 10, 5000, 0.02) == pytest.approx(0.0)


def test_tost_rank_sum_and_wilson():
    assert stats.tost(0.0, 0.005, 0.02).outcome == "equivalent"
    assert stats.tost(0.05, 0.005, 0.02).outcome == "different"
    assert stats.tost(0.0, 0.02, 0.02).outcome == "inconclusive"
    # at the margin exactly, TOST's p is one half
    assert stats.tost(0.02, 0.01, 0.02).p_value == pytest.approx(0.5)
    assert stats.rank_sum_less([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(1 / 70)
    assert stats.rank_sum_less([5, 6, 7, 8], [1, 2, 3, 4]) == 1.0
    lo, hi = stats.wilson(10, 10)
    assert hi == 1.0 and 0.69 < lo < 0.73  # 100 % on 10 images is not certainty
    d = stats.paired_difference(np.array([1, 1, 0, 1], bool), np.array([1, 0, 1, 0], bool))
    assert (d.wins, d.losses, d.diff) == (2, 1, 0.25) and d.se > 0


def test_default_tolerance_has_a_floor_of_one_validation_image():
    assert default_tolerance(1.0, 180) == pytest.approx(1 / 180)
    assert default_tolerance(0.9, 200) == pytest.approx(math.sqrt(0.9 * 0.1 / 200))


# --------------------------------------------------------------------------------------
# 1. SNR trend


def series(values, *, seed=0, arch="a", clustered=4):
    blocks = tuple(
        BlockSnr(b, "head", None if v is None else v, None if v is None else 2 * v,
                 v is None, 4, clustered)
        for b, v in enumerate(values)
    )  # fmt: skip
    return SnrSeries(f"{arch}{seed}", arch, seed, blocks)


def test_snr_three_noisy_blocks_of_one_architecture_are_not_enough():
    # the review's example: [1.0, 0.5, 1.2] once passed as "rises"
    v = snr_verdict([series([1.0, 0.5, 1.2])])
    assert v.status == NO_DATA and "add seeds" in v.reason
    assert MIN_SNR_BLOCKS >= 4


def test_snr_rising_in_every_seed_is_held_with_its_p_value():
    rising = [series([0.5, 1.0, 2.0, 3.0], seed=s, arch=a) for a in "ab" for s in range(3)]
    v = snr_verdict(rising)
    assert v.status == HELD and v.p_value == pytest.approx(1 / 64)
    assert "architectures x seeds" in v.reason
    falling = [series([3.0, 2.0, 1.0, 0.5], seed=s) for s in range(6)]
    assert snr_verdict(falling).status == NOT_HELD


def test_snr_without_repeated_seeds_says_what_it_resamples():
    trials = [series([0.5, 1.0, 2.0, 3.0], seed=None, arch=f"a{i}") for i in range(5)]
    v = snr_verdict(trials)
    assert v.status == HELD and "not in any one architecture" in v.reason


def test_snr_noise_free_needs_most_heads_clustered_and_drops_are_named():
    # block 3 noise-free with 4/4 heads clustered: +inf, the highest
    good = [series([0.5, 1.0, 2.0, None], seed=s) for s in range(5)]
    assert snr_verdict(good).status == HELD
    # with 1/4 heads clustered it is dropped, leaving 3 blocks: too few, and said so
    few = [series([0.5, 1.0, 2.0, None], seed=s, clustered=1) for s in range(5)]
    v = snr_verdict(few)
    assert v.status == NO_DATA
    assert any("noise-free but 1/4 heads clustered" in d for d in v.details)


def test_snr_reads_head_units_only():
    nodes = SnrSeries("t", "a", 0, tuple(BlockSnr(b, "node", 1.0 + b, 1.0) for b in range(6)))
    assert snr_verdict([nodes] * 6).status == NO_DATA


# --------------------------------------------------------------------------------------
# 2. head specialisation


def heads(trial, sizes, noise, k=10):
    return HeadBlock(trial, 2, k, tuple(tuple(range(n)) for n in sizes), tuple(noise))


def test_specialisation_thresholds_refuse_half_the_labels_and_snr_one():
    small_quiet = [heads(f"t{i}", [2, 1, 2, 2], [0, 0, 1, 0]) for i in range(3)]
    v = specialisation_verdict(small_quiet)
    assert v.status == HELD and "12 of 12 heads pass" in v.reason
    half = [heads(f"t{i}", [5, 5, 5, 5], [0, 0, 0, 0]) for i in range(3)]  # 50 % of the labels
    assert specialisation_verdict(half).status == NOT_HELD
    snr_one = [heads(f"t{i}", [2, 2, 2, 2], [2, 2, 2, 2]) for i in range(3)]  # noise = signal
    assert specialisation_verdict(snr_one).status == NOT_HELD
    assert specialisation_verdict([heads("t", [1, 1], [0, 0])]).status == NO_DATA  # 2 heads


# --------------------------------------------------------------------------------------
# 3. equal accuracy


def correct(n, wrong, rng):
    out = np.ones(n, bool)
    out[rng.choice(n, wrong, replace=False)] = False
    return out


def test_equal_accuracy_is_an_equivalence_test_not_a_tolerance():
    rng = np.random.default_rng(0)
    a = correct(5000, 1000, rng)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 30, replace=False)] = False
    models = [ModelAccuracy("a", 2, 32, a.mean(), a), ModelAccuracy("b", 8, 8, b.mean(), b)]
    v = equal_accuracy_verdict(models, 5000)
    assert v.status == HELD and v.p_value < 0.05
    far = a.copy()
    far[rng.choice(np.flatnonzero(a), 500, replace=False)] = False  # 10 points worse
    v = equal_accuracy_verdict([models[0], ModelAccuracy("c", 8, 8, far.mean(), far)], 5000)
    assert v.status == NOT_HELD
    # a 1-point difference on 180 validation images (digits): too few to show it is < 2
    full = np.ones(180, bool)
    full[:4] = False
    less = full.copy()
    less[4:6] = False
    tiny = [
        ModelAccuracy("a", 2, 32, full.mean(), full),
        ModelAccuracy("b", 4, 16, less.mean(), less),
    ]
    v = equal_accuracy_verdict(tiny, 180)
    assert v.status == NO_DATA and "validation images would tell" in v.reason
    same = [ModelAccuracy("a", 4, 16, 0.95), ModelAccuracy("b", 4, 16, 0.95)]
    assert equal_accuracy_verdict(same, 1000).status == NO_DATA


# --------------------------------------------------------------------------------------
# 4. committee


def committee(member_correct, committee_correct, by_rule=True):
    names = tuple(f"m{i}" for i in range(len(member_correct)))
    return CommitteeFigures(
        "run123456", "max_size=5", by_rule, names, (0.9,) * len(names),
        tuple(member_correct), committee_correct,
    )  # fmt: skip


def test_committee_one_more_test_image_is_not_a_win():
    m = np.ones(100, bool)
    m[:10] = False
    c = m.copy()
    c[0] = True  # one image better than each member
    v = committee_verdict(committee([m, m], c))
    assert v.status == NO_DATA and "test images would tell" in v.reason
    assert "vs m0: +1.00 points" in v.details[0]


def test_committee_held_by_mcnemar_against_every_member_and_hand_picked_is_not_judged():
    rng = np.random.default_rng(1)
    m1, m2 = correct(10_000, 2000, rng), correct(10_000, 2100, rng)
    c = m1 | m2  # right wherever a member is: far above both
    v = committee_verdict(committee([m1, m2], c))
    assert v.status == HELD and v.p_value < 1e-4 and "[" in v.reason
    assert committee_verdict(committee([m1, m2], c, by_rule=False)).status == NOT_JUDGED
    worse = committee_verdict(committee([m1, m2], m1 & m2))
    assert worse.status == NOT_HELD
    assert committee_verdict(None).status == NO_DATA


# --------------------------------------------------------------------------------------
# 5. conv substitution


def conv(trial, c, ms, rounds, acc_correct):
    r = tuple(ms * (1 + 0.01 * i) for i in range(rounds))
    return ConvModel(trial, c, 0.9, acc_correct.mean(), ms, "re-measured", r, acc_correct)


def test_conv_needs_re_measured_rounds_and_both_tests():
    rng = np.random.default_rng(2)
    a = correct(10_000, 2000, rng)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 20, replace=False)] = False
    held = conv_verdict([conv("t0", 0, 2.0, 5, a), conv("t1", 1, 1.4, 5, b)], 10_000)
    assert held.status == HELD and "30% faster" in held.reason
    logged = ConvModel("t1", 1, 0.9, b.mean(), 1.0, "logged in-sweep", (), b)
    v = conv_verdict([conv("t0", 0, 2.0, 5, a), logged], 10_000)
    assert v.status == NO_DATA and "--no-remeasure" in v.reason
    slow = conv_verdict([conv("t0", 0, 2.0, 5, a), conv("t1", 1, 1.98, 5, b)], 10_000)
    assert slow.status == NOT_HELD
    assert conv_verdict([conv("t0", 0, 2.0, 5, a)], 10_000).status == NO_DATA


# --------------------------------------------------------------------------------------
# calibration, through the CLI


def test_calibration_keeps_false_positives_at_the_level_and_power_at_0_8(capsys):
    from analysis.report.calibrate import SWEEPS
    from analysis.report.cli import main

    assert main(["--calibrate"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(
        r"^(.+): false-positive rate ([\d.]+), power ([\d.]+) \((\d+) simulated", out, re.M
    )
    assert len(rows) == 5, out
    mc = 2 * math.sqrt(0.05 * 0.95 / SWEEPS)  # two Monte-Carlo standard errors
    for claim, fp, power, n in rows:
        assert int(n) == SWEEPS
        assert float(fp) <= 0.05 + mc, (claim, fp)
        assert float(power) >= 0.8, (claim, power)


def test_latency_is_timed_in_rounds_the_models_taking_turns():
    import torch

    from analysis.report.latency import ROUNDS, time_rounds
    from cct.models import create_model

    small = dict(num_classes=10, img_size=8, embed_dim=16, tokenizer_layers=1, depth=1)
    models = {name: create_model("cct_2_3x2_32", **small).eval() for name in ("a", "b")}
    with torch.no_grad():
        lat = time_rounds(models, runs=10)
    for x in lat.values():
        assert len(x.rounds) == ROUNDS >= 4 and x.source == "re-measured" and not x.shared
        assert x.latency_ms == pytest.approx(float(np.median(x.rounds)))
