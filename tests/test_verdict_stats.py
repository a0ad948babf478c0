"""The report's verdicts rest on stated tests: the tests against known values, each verdict
on hand-made evidence (including the cases reviews found it calling "held" on noise: seeds
and heads as independent units, a changing share of clustered heads, identical heads,
missing noise, the winner's curse, unmatched conv comparisons), the committee's tolerance
floor, and the calibration (`python -m analysis.report --calibrate`, here with fewer
simulated sweeps): every null family's false-positive rate at or under the level plus three
Monte-Carlo standard errors, and power at 0.8 or more where the design can reach a verdict."""

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
    CommitteeFigures,
    ConvModel,
    HeadBlock,
    HeadCounts,
    ModelAccuracy,
    ModelHeads,
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
# 1. SNR trend, from per-head counts, over architectures


def model(snrs, *, seed=0, arch="a", heads=4, clustered=None, noise=True):
    """A model whose block b's clustered heads have 4 labels and noise 4 / snrs[b]."""
    blocks = []
    for b, snr in enumerate(snrs):
        k = heads if clustered is None else clustered[b]
        labels = (4,) * k + (0,) * (heads - k)
        n = tuple(round(4 / snr) if i < k else 0 for i in range(heads))
        blocks.append(HeadCounts(b, labels, n if noise else None))
    return ModelHeads(f"{arch}{seed}", arch, seed, tuple(blocks))


def test_snr_seeds_of_one_architecture_are_not_independent_units():
    rising = [model([0.5, 1.0, 2.0, 4.0], seed=s, arch=a) for a in "ab" for s in range(3)]
    v = snr_verdict(rising)  # 6 rising models, but 2 architectures
    assert v.status == NO_DATA and "needs >= 5 architectures" in v.reason
    five = [model([0.5, 1.0, 2.0, 4.0], seed=s, arch=a) for a in "abcde" for s in range(2)]
    v = snr_verdict(five)
    assert v.status == HELD and v.p_value == pytest.approx(1 / 32)
    assert "seeds nested" in v.generalises
    falling = [model([4.0, 2.0, 1.0, 0.5], arch=a) for a in "abcdef"]
    assert snr_verdict(falling).status == NOT_HELD


def test_snr_a_rising_share_of_clustered_heads_is_no_trend():
    # every clustered head has SNR 2 in every block; the share clustered rises 1/4 -> 4/4:
    # a block-level ratio of means treated the noise-free/few-clustered blocks unevenly
    models = [model([2.0] * 4, arch=a, clustered=[1, 2, 3, 4]) for a in "abcdef"]
    v = snr_verdict(models)
    assert v.status == NOT_HELD and "mean rho +0.00" in v.reason


def test_snr_without_repeated_seeds_says_what_it_generalises_to():
    trials = [model([0.5, 1.0, 2.0], arch=f"a{i}") for i in range(5)]
    v = snr_verdict(trials)
    assert v.status == HELD and "not for its space" in v.generalises
    assert MIN_SNR_BLOCKS == 3
    short = [model([0.5, 1.0], arch=f"a{i}") for i in range(6)]
    assert snr_verdict(short).status == NO_DATA


def test_snr_runs_logged_without_per_head_noise_are_not_enough_data():
    old = [model([0.5, 1.0, 2.0, 4.0], arch=f"a{i}", noise=False) for i in range(6)]
    v = snr_verdict(old)
    assert v.status == NO_DATA and "6 logged without per-head noise" in v.reason
    assert all("no per-head noise" in d for d in v.details)


def test_snr_subtracts_the_untrained_reference_when_every_model_has_one():
    rising = [0.5, 1.0, 2.0, 4.0]
    plain = [model(rising, arch=f"a{i}") for i in range(6)]
    assert snr_verdict(plain).status == HELD
    # the untrained model rises just as much: the pipeline's own trend, not learning
    ref = model(rising).blocks
    same = [ModelHeads(m.model, m.arch, m.seed, m.blocks, ref) for m in plain]
    v = snr_verdict(same)
    assert v.status == NOT_HELD and "minus the untrained reference" in v.reason
    flat = model([1.0] * 4).blocks
    assert (
        snr_verdict([ModelHeads(m.model, m.arch, m.seed, m.blocks, flat) for m in plain]).status
        == HELD
    )


def test_snr_says_how_many_architectures_would_reach_it():
    mixed = [model([0.5, 1.0, 2.0, 4.0], arch=f"a{i}") for i in range(5)]
    mixed += [model([4.0, 2.0, 1.0, 0.5], arch="z")]
    v = snr_verdict(mixed)
    assert v.status == NO_DATA and re.search(r"~\d+ architectures", v.reason)


# --------------------------------------------------------------------------------------
# 2. head specialisation


def heads(trial, sizes, noise, k=10, arch=""):
    sets = tuple(tuple((3 * h + j) % k for j in range(n)) for h, n in enumerate(sizes))
    return HeadBlock(trial, 2, k, sets, tuple(noise), arch)


def test_specialisation_thresholds_refuse_half_the_labels_and_snr_one():
    small_quiet = [heads(f"t{i}", [2, 1, 2, 2], [0, 0, 1, 0]) for i in range(5)]
    v = specialisation_verdict(small_quiet)
    assert v.status == HELD and "100% over 5 architectures" in v.reason
    half = [heads(f"t{i}", [5, 5, 5, 5], [0, 0, 0, 0]) for i in range(5)]  # 50 % of the labels
    assert specialisation_verdict(half).status == NOT_HELD
    snr_one = [heads(f"t{i}", [2, 2, 2, 2], [2, 2, 2, 2]) for i in range(5)]  # noise = signal
    assert specialisation_verdict(snr_one).status == NOT_HELD
    assert specialisation_verdict([heads("t", [1, 1], [0, 0])]).status == NO_DATA


def test_specialisation_units_are_architectures_and_heads_must_differ():
    seeds = [heads(f"t{s}", [2, 1, 2, 2], [0, 0, 0, 0], arch="a") for s in range(8)]
    assert specialisation_verdict(seeds).status == NO_DATA  # one architecture, 8 seeds
    same = ((0, 1),) * 8  # 8 identical heads, each a small quiet cluster
    alike = [HeadBlock(f"t{i}", 2, 10, same, (0,) * 8) for i in range(6)]
    v = specialisation_verdict(alike)
    assert v.status == NOT_HELD and "overlap 1.00" in v.details[0]


def test_specialisation_without_noise_is_not_enough_data_never_noise_free():
    no_noise = [HeadBlock(f"t{i}", 2, 10, ((0,), (1,), (2,)), ()) for i in range(6)]
    v = specialisation_verdict(no_noise)
    assert v.status == NO_DATA and "without per-head noise" in v.reason


# --------------------------------------------------------------------------------------
# 3. equal accuracy


def correct(n, wrong, rng):
    out = np.ones(n, bool)
    out[rng.choice(n, wrong, replace=False)] = False
    return out


def acc(trial, heads, val, test, **kw):
    return ModelAccuracy(trial, heads, 64 // heads, val, None, test.mean(), test, **kw)


def test_equal_accuracy_is_an_equivalence_test_on_test_after_selection_on_validation():
    rng = np.random.default_rng(0)
    a = correct(10_000, 2000, rng)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 30, replace=False)] = False
    v = equal_accuracy_verdict([acc("a", 2, 0.80, a), acc("b", 8, 0.79, b)], 10_000)
    assert v.status == HELD and v.p_value < 0.05 and "on test" in v.reason
    assert "chosen on validation" in v.generalises
    far = a.copy()
    far[rng.choice(np.flatnonzero(a), 1000, replace=False)] = False  # 10 points worse
    v = equal_accuracy_verdict([acc("a", 2, 0.80, a), acc("c", 8, 0.79, far)], 10_000)
    assert v.status == NOT_HELD
    # a 1-point difference on 360 test images (digits): too few to show it is < 2
    full = np.ones(360, bool)
    full[:8] = False
    less = full.copy()
    less[8:12] = False
    v = equal_accuracy_verdict([acc("a", 2, 0.97, full), acc("b", 4, 0.96, less)], 360)
    assert v.status == NO_DATA and "test images would tell" in v.reason
    same = [acc("a", 4, 0.95, full), acc("b", 4, 0.95, full)]
    assert equal_accuracy_verdict(same, 360).status == NO_DATA


def test_equal_accuracy_structures_cover_every_varied_knob_and_need_other_heads():
    rng = np.random.default_rng(3)
    a = correct(10_000, 2000, rng)
    # same heads, different depth: two structures, but not two head structures
    deep = acc("a", 4, 0.80, a, structure=(("num_heads", 4), ("depth", 7)))
    shallow = acc("b", 4, 0.79, a, structure=(("num_heads", 4), ("depth", 5)))
    v = equal_accuracy_verdict([deep, shallow], 10_000)
    assert v.status == NO_DATA and "none with other heads" in v.reason


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
    assert v.status == HELD and v.p_value < 1e-4 and "lower bound" in v.reason
    assert "replicated over seeds" not in v.reason and "over seeds" in v.generalises
    assert committee_verdict(committee([m1, m2], c, by_rule=False)).status == NOT_JUDGED
    worse = committee_verdict(committee([m1, m2], m1 & m2))
    assert worse.status == NOT_HELD
    assert committee_verdict(None).status == NO_DATA


def test_committee_a_tiny_gain_on_many_images_is_below_the_minimum():
    # +0.05 points on 10,000 images: significant against 0 once, meaningless
    rng = np.random.default_rng(4)
    m = correct(10_000, 2000, rng)
    c = m.copy()
    c[np.flatnonzero(~m)[:5]] = True
    v = committee_verdict(committee([m, m], c))
    assert v.status == NOT_HELD
    # the bound and the test agree: held exactly when the lower bound clears the minimum
    d = stats._paired(10_000, 400, 250)
    g = stats.gain_above(d, 0.0025)
    assert (g.p_value < 0.05) == (g.lower > 0.0025)


# --------------------------------------------------------------------------------------
# 5. conv substitution


def conv(trial, c, ms, rounds, acc_correct, others=()):
    r = tuple(ms * (1 + 0.01 * i) for i in range(rounds))
    return ConvModel(trial, c, 0.9, acc_correct.mean(), ms, "re-measured", r, acc_correct, others)


def test_conv_needs_re_measured_rounds_and_both_tests():
    rng = np.random.default_rng(2)
    a = correct(10_000, 2000, rng)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 20, replace=False)] = False
    held = conv_verdict([conv("t0", 0, 2.0, 5, a), conv("t1", 1, 1.4, 5, b)], 10_000)
    assert held.status == HELD and "30% faster" in held.reason
    logged = ConvModel("t1", 1, 0.9, b.mean(), 1.0, "logged in-sweep", (), b)
    v = conv_verdict([conv("t0", 0, 2.0, 5, a), logged], 10_000)
    assert v.status == NO_DATA and "timing rounds" in v.reason
    slow = conv_verdict([conv("t0", 0, 2.0, 5, a), conv("t1", 1, 1.98, 5, b)], 10_000)
    assert slow.status == NOT_HELD
    assert conv_verdict([conv("t0", 0, 2.0, 5, a)], 10_000).status == NO_DATA


def test_conv_compares_matched_pairs_and_rounds_follow_the_corrected_level():
    rng = np.random.default_rng(5)
    a = correct(10_000, 2000, rng)
    four, sixteen = (("num_heads", 4),), (("num_heads", 16),)
    # conv only with 16 heads: no matched pair, whatever the speed-up
    v = conv_verdict([conv("t0", 0, 2.0, 5, a, four), conv("t1", 1, 1.0, 5, a, sixteen)], 10_000)
    assert v.status == NO_DATA and "shares its other knobs" in v.reason
    # 4 conv values at level 0.05/4 need rounds_for(0.0125) = 5 rounds; 4 are too few
    assert stats.rounds_for(0.05 / 4) == 5 and stats.rounds_for(0.05) == 4
    models = [conv("t0", 0, 2.0, 4, a)] + [conv(f"c{c}", c, 1.4, 4, a) for c in (1, 2, 3, 4)]
    v = conv_verdict(models, 10_000)
    assert v.status == NO_DATA and ">= 5 re-measured timing rounds" in v.reason
    models = [conv("t0", 0, 2.0, 5, a)] + [conv(f"c{c}", c, 1.4, 5, a) for c in (1, 2, 3, 4)]
    assert conv_verdict(models, 10_000).status == HELD
    # a matched group the report did not re-measure (beyond its best groups) is left out
    eight = (("num_heads", 8),)
    extra = [conv("e0", 0, 2.0, 0, a, eight), conv("e1", 1, 1.4, 0, a, eight)]
    v = conv_verdict(models + extra, 10_000)
    assert v.status == HELD and "1 matched pair(s) of lower-ranked groups" in v.details[-1]


# --------------------------------------------------------------------------------------
# calibration, through the CLI


CALIBRATION_SWEEPS = 150  # per row here; the command line runs 1,000


def test_calibration_keeps_every_null_family_at_the_level_and_power_at_0_8(capsys):
    from analysis.report.calibrate import main

    assert main(CALIBRATION_SWEEPS) == 0
    out = capsys.readouterr().out
    rows = re.findall(
        r"^(.+) \| (null|power) \| (.+): (?:false-positive rate|power) ([\d.]+) "
        r"\((\d+) simulated sweeps\)( \(no verdict expected\))?$",
        out,
        re.M,
    )
    assert len(rows) >= 30, out
    assert {c for c, *_ in rows} == {
        "SNR rises along the blocks",
        "each head: a small cluster, little noise",
        "equal accuracy, different head structures",
        "soft committee beats each member",
        "conv blocks cut latency at equal accuracy",
    }
    mc = 3 * math.sqrt(0.05 * 0.95 / CALIBRATION_SWEEPS)  # three Monte-Carlo standard errors
    for claim, kind, family, rate, n, unreachable in rows:
        assert int(n) == CALIBRATION_SWEEPS
        if kind == "null":
            assert float(rate) <= 0.05 + mc, (claim, family, rate)
        elif not unreachable:
            power_mc = 3 * math.sqrt(0.8 * 0.2 / CALIBRATION_SWEEPS)
            assert float(rate) >= 0.8 - power_mc, (claim, family, rate)
    assert "rules version 2" in out


def test_calibrate_on_the_command_line_runs_1000_sweeps_per_row():
    from analysis.report import calibrate

    assert calibrate.SWEEPS >= 1000


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
