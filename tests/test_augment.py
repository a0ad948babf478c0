"""Device-side augmentation: shapes, value ranges, per-sample randomness, determinism, and
each transform checked against what it claims to do."""

import pytest
import torch

from cct.config import DataConfig
from cct.data import AugmentSpec, DeviceAugment, load_dataset, normalize
from cct.data.augment import sample_beta

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
CIFAR_LIKE = AugmentSpec(
    crop_padding=4, flip=True, mixup=0.8, cutmix=1.0, erase_prob=0.25, label_smoothing=0.1
)
NONE = AugmentSpec(
    crop_padding=0, flip=False, mixup=0.0, cutmix=0.0, erase_prob=0.0, label_smoothing=0.0
)


def spec(**kw) -> AugmentSpec:
    return AugmentSpec(**{**vars(NONE), **kw})


def batch(b=16, c=3, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)
    y = torch.arange(b) % 10
    return x, y


def run(sp, x, y, seed=0, k=10):
    return DeviceAugment(sp, k, MEAN[: x.shape[1]], STD[: x.shape[1]])(
        x, y, torch.Generator().manual_seed(seed)
    )


def partnered(b=8, s=12):
    # every pixel differs from its partner in the reversed batch, so a pasted pixel is
    # recognizable
    x, _ = batch(b=b, s=s)
    x[b // 2 :] = ((x[: b // 2].int() + 128) % 256).to(torch.uint8).flip(0)
    return x, torch.arange(b)


def unnormalize(x):
    m = torch.tensor(MEAN).view(1, -1, 1, 1)
    s = torch.tensor(STD).view(1, -1, 1, 1)
    return x * s + m


def test_shapes_dtypes_and_targets_are_distributions():
    x, y = batch()
    out, t = run(CIFAR_LIKE, x, y)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert t.shape == (16, 10) and t.dtype == torch.float32
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(16))
    assert torch.isfinite(out).all()


def test_values_stay_in_pixel_range_without_erasing():
    x, y = batch()
    for seed in range(5):
        out, _ = run(spec(crop_padding=4, flip=True, mixup=0.8, cutmix=1.0), x, y, seed)
        px = unnormalize(out)
        assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5


def test_normalize_matches_formula():
    x, _ = batch()
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(normalize(x, MEAN, STD), ref)
    out, _ = run(NONE, x, torch.zeros(16, dtype=torch.long))
    torch.testing.assert_close(out, ref)


def test_crop_is_a_zero_padded_shift_per_sample():
    p = 3
    x, y = batch(b=24)
    x = x.clamp_min(1)  # so the zero padding is recognizable
    out, _ = run(spec(crop_padding=p), x, y)
    px = (unnormalize(out) * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = set()
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(px[i], padded[i, :, dy : dy + 12, dx : dx + 12])
        ]
        assert len(found) == 1, f"sample {i} is not a shifted copy of its input"
        shifts.add(found[0])
    assert len(shifts) > 5  # each sample draws its own shift


def test_crop_reaches_every_shift_in_range():
    x, y = batch(b=300, s=6)
    x = x.clamp_min(1)
    out, _ = run(spec(crop_padding=1), x, y)
    px = (unnormalize(out) * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    seen = {
        (dy, dx)
        for dy in range(3)
        for dx in range(3)
        if (px == padded[:, :, dy : dy + 6, dx : dx + 6]).flatten(1).all(1).any()
    }
    assert len(seen) == 9


def test_identical_images_get_different_crops_and_flips():
    x, y = batch(b=32)
    x = x[:1].expand(32, -1, -1, -1).contiguous()
    out, _ = run(spec(crop_padding=4, flip=True), x, y)
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct >= 16


def test_flip_is_per_sample_and_exact():
    x, y = batch(b=32)
    out, _ = run(spec(flip=True), x, y)
    ref = normalize(x, MEAN, STD)
    same = (out == ref).flatten(1).all(1)
    flipped = (out == ref.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert same.any() and flipped.any()


def test_same_seed_same_output_other_seed_differs():
    x, y = batch()
    a, ta = run(CIFAR_LIKE, x, y, seed=1)
    b, tb = run(CIFAR_LIKE, x, y, seed=1)
    c, tc = run(CIFAR_LIKE, x, y, seed=2)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(a, c)


def test_label_smoothing_exact_without_mixing():
    x, y = batch()
    _, t = run(spec(label_smoothing=0.1), x, y)
    expected = torch.full((16, 10), 0.01)
    expected[torch.arange(16), y] = 0.91
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-7)


def test_mixup_mixes_with_reversed_batch_by_target_lambda():
    x, y = batch(b=8)
    y = torch.arange(8)  # distinct labels, so lam can be read off the targets
    for seed in range(4):
        out, t = run(spec(mixup=1.0), x, y, seed)
        lam = t[0, 0]
        assert 0 < lam < 1
        ref = normalize(x, MEAN, STD)
        torch.testing.assert_close(out, lam * ref + (1 - lam) * ref.flip(0))
        torch.testing.assert_close(t[0, 7], 1 - lam)


def test_cutmix_pastes_one_box_and_lambda_is_its_area():
    x, y = partnered(s=16)
    ref = normalize(x, MEAN, STD)
    areas = []
    for seed in range(8):
        out, t = run(spec(cutmix=1.0), x, y, seed)
        from_rev = (out == ref.flip(0)) & (out != ref)
        assert ((out == ref) | from_rev).all()
        box = from_rev.all(dim=(0, 1))  # one box for the whole batch: (H, W)
        assert torch.equal(from_rev, box.expand_as(from_rev))
        rows, cols = box.any(1), box.any(0)
        assert box.sum() == rows.sum() * cols.sum()  # a rectangle
        area = box.float().mean()
        torch.testing.assert_close(t[0, 0], 1 - area)
        areas.append(area.item())
    assert max(areas) > 0


def test_mixup_and_cutmix_both_get_picked():
    x, y = partnered()
    ref = normalize(x, MEAN, STD)
    modes = set()
    for seed in range(24):
        out, t = run(spec(mixup=0.8, cutmix=1.0), x, y, seed)
        exact = ((out == ref) | (out == ref.flip(0))).all()
        modes.add("cutmix" if exact else "mixup")
        # the targets' lambda is the picked candidate's (the CPU computes only that one)
        lam = t[0, 0]  # no smoothing; sample 0's partner is sample 7
        if exact:
            kept = ((out == ref) & (out != ref.flip(0))).all(dim=(0, 1)).float().mean()
            torch.testing.assert_close(lam, kept)
        else:
            torch.testing.assert_close(out, lam * ref + (1 - lam) * ref.flip(0))
    assert modes == {"cutmix", "mixup"}


def test_random_erasing_rectangles_per_sample():
    x, y = batch(b=200, s=16)
    ref = normalize(x, MEAN, STD)
    out, _ = run(spec(erase_prob=0.5), x, y)
    changed = (out != ref).any(1)  # (B, H, W)
    erased = changed.flatten(1).any(1)
    assert 0.35 < erased.float().mean() < 0.65
    for i in torch.nonzero(erased).flatten().tolist():
        m = changed[i]
        rows, cols = m.any(1), m.any(0)
        assert m.sum() == rows.sum() * cols.sum()  # one rectangle
        frac = m.float().mean().item()
        assert 0.01 <= frac <= 0.45  # 2%-33% of the area, up to rounding of the sides
    out2, _ = run(spec(erase_prob=1.0), x, y)
    hit = out2 != ref
    assert hit.flatten(1).any(1).float().mean() > 0.9
    noise = out2[hit]  # filled with N(0, 1) noise in normalized space, as timm's "pixel" mode
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0, 2.0])
def test_beta_sampler_matches_scipy(alpha):
    from scipy import stats

    lam = sample_beta(alpha, (20000,), torch.Generator().manual_seed(0)).double().numpy()
    assert stats.kstest(lam, stats.beta(alpha, alpha).cdf).statistic < 0.02


def test_digits_defaults_are_gentle():
    s = load_dataset(DataConfig(dataset="digits")).augment
    assert s == AugmentSpec(
        crop_padding=1, flip=False, mixup=0.0, cutmix=0.0, erase_prob=0.0, label_smoothing=0.1
    )


def test_one_channel_batches_work():
    x, y = batch(c=1, s=8)
    out, t = run(AugmentSpec(1, False, 0.8, 1.0, 0.25, 0.1), x, y)
    assert out.shape == (16, 1, 8, 8) and t.shape == (16, 10)


def test_resolve_augment_fills_defaults_and_refuses_what_the_fields_rule_out():
    from cct.config import AugmentConfig, ConfigError
    from cct.data import resolve_augment

    assert resolve_augment(AugmentConfig(mixup=0.2), NONE) == spec(mixup=0.2)
    with pytest.raises(ConfigError) as e:
        resolve_augment(AugmentConfig(mixup=-1.0, erase_prob=1.5), NONE)
    assert str(e.value) == (
        "data.augment.mixup: must be at least 0, got -1.0; "
        "data.augment.erase_prob: must be in [0, 1], got 1.5"
    )
