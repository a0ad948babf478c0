"""RandAugment and RandomResizedCrop on the device against Pillow, the library timm's
RandAugment and RandomResizedCropAndInterpolation call, image by image.

The reference (cct/perf/reference/randaugment.py) is timm's op definitions (auto_augment.py):
ImageOps, ImageEnhance and Image.transform / Image.rotate with the same arguments. Every op is
exact except Rotate, where torch's float64 sin/cos can differ from libm's by an ulp and move
one sample across a truncation boundary: at most 1 grey level, in under 0.1 % of pixels.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from cct.config import AugmentConfig, ConfigError, DataConfig
from cct.data import randaugment as ra
from cct.data import resized_crop as rc
from cct.data.augment import AugmentSpec, DeviceAugment, recipe_augment, resolve_augment
from cct.data.loader import _resize
from cct.data.sources import read_digits, read_synthetic
from cct.perf.reference.randaugment import pillow_op as reference_op
from cct.perf.reference.randaugment import timm_argument

FILL = (129, 124, 112)  # CIFAR-100 mean x 255, what timm fills with


def pillow_op(img: Image.Image, name: str, arg: float, bicubic: bool) -> Image.Image:
    return reference_op(img, name, arg, bicubic, FILL)


def to_pil(x: torch.Tensor) -> Image.Image:
    a = x.numpy()
    return Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))


def from_pil(img: Image.Image) -> np.ndarray:
    a = np.array(img)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    digits = _resize(read_digits(DataConfig()).train.x[:3], 32)  # real digits, 8 -> 32 px
    cfg = DataConfig(dataset="synthetic", synthetic_size=32, synthetic_train=3, synthetic_test=1)
    return {
        "digits": torch.from_numpy(digits),
        "rgb": torch.from_numpy(read_synthetic(cfg).train.x),
    }


ALL_OPS = sorted(set(ra.STANDARD_OPS) | set(ra.INCREASING_OPS))
MAGNITUDES = (0.0, 2.0, 9.0, 10.0)


@pytest.mark.parametrize("kind", ["digits", "rgb"])
def test_every_op_matches_pillow(images, kind):
    # Each image of the batch gets its own (magnitude, sign, filter): one batched call per op.
    x0 = images[kind]
    combos = [(m, s, b) for m in MAGNITUDES for s in (1.0, -1.0) for b in (False, True)]
    x = x0.repeat(len(combos), 1, 1, 1)
    n = x0.shape[0]
    m = torch.tensor([c[0] for c in combos], dtype=torch.float64).repeat_interleave(n)
    sign = torch.tensor([c[1] for c in combos], dtype=torch.float64).repeat_interleave(n)
    bic = torch.tensor([c[2] for c in combos]).repeat_interleave(n)
    fill = torch.tensor(FILL[: x.shape[1]], dtype=torch.uint8)
    worst = {}
    for name in ALL_OPS:
        arg = ra.op_argument(name, m, sign)
        expected_arg = [timm_argument(name, float(a), float(b)) for a, b in zip(m, sign)]
        np.testing.assert_allclose(arg.numpy(), expected_arg, rtol=0, atol=1e-12, err_msg=name)
        op = torch.zeros(len(m), dtype=torch.long)
        ours = ra.apply_ops(x, op, arg, bic, (name,), fill).numpy().astype(int)
        ref = np.stack(
            [
                from_pil(pillow_op(to_pil(x[i]), name, expected_arg[i], bool(bic[i])))
                for i in range(len(m))
            ]
        )
        diff = np.abs(ours - ref)
        worst[name] = (int(diff.max()), float((diff > 0).mean()))
    for name, (largest, frac) in worst.items():
        if name == "Rotate":
            assert largest <= 1 and frac < 1e-3, (name, largest, frac)
        else:
            assert largest == 0, (name, largest, frac)


def test_masked_and_subset_paths_agree(images):
    # CUDA computes each kind on the whole batch and masks; the CPU only on the picked images
    x = images["rgb"].repeat(16, 1, 1, 1)
    g = torch.Generator().manual_seed(5)
    policy = ra.parse_policy("rand-m9-mstd0.5-inc1")
    op, m, sign, bic = ra.sample_layer(policy, x.shape[0], g)
    arg = torch.zeros_like(m)
    for k, name in enumerate(policy.ops):
        arg = torch.where(op == k, ra.op_argument(name, m, sign), arg)
    fill = torch.tensor(FILL, dtype=torch.uint8)
    masked = ra.apply_ops(x, op, arg, bic, policy.ops, fill, subset=False)
    assert torch.equal(masked, ra.apply_ops(x, op, arg, bic, policy.ops, fill, subset=True))
    assert not torch.equal(masked, x)


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_one_axis_warps_equal_the_2d_warp(shape):
    # The CPU runs the shears and translations as 1-D resamples, x and y ops together on
    # square images (y ones transposed), and each filter alone when a group has one; CUDA
    # runs the 2-D warp of Image.transform on all. The two must agree bit for bit.
    H, W = shape
    g = torch.Generator().manual_seed(11)
    ops = ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "Rotate")
    x = torch.randint(0, 256, (40, 3, H, W), generator=g, dtype=torch.uint8)
    op = torch.arange(40) % len(ops)
    m = 10 * torch.rand(40, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(40, generator=g) < 0.5, -1.0, 1.0).double()
    arg = ra.op_arguments(ops, op, m, sign)
    fill = torch.tensor(FILL, dtype=torch.uint8)
    for bic in (torch.rand(40, generator=g) < 0.5, torch.ones(40, dtype=torch.bool)):
        masked = ra.apply_ops(x, op, arg, bic, ops, fill, subset=False)
        assert torch.equal(masked, ra.apply_ops(x, op, arg, bic, ops, fill, subset=True))
        for k in range(len(ops)):  # one op at a time: the x-only and y-only forms
            pick = op == k
            sub = ra.apply_ops(x[pick], op[pick], arg[pick], bic[pick], ops, fill, subset=True)
            assert torch.equal(masked[pick], sub), ops[k]


def test_op_none_leaves_the_image(images):
    x = images["rgb"]
    op = torch.full((x.shape[0],), -1)
    z = torch.zeros(x.shape[0], dtype=torch.float64)
    out = ra.apply_ops(x, op, z, op > 0, ra.INCREASING_OPS, torch.tensor(FILL, dtype=torch.uint8))
    assert torch.equal(out, x)


def test_rand_augment_equals_pillow_with_the_same_draws(images):
    # The whole policy: replay the generator's per-image draws through Pillow, layer by layer.
    policy = ra.parse_policy("rand-m9-mstd0.5-inc1")
    x = images["rgb"].repeat(16, 1, 1, 1)  # 48 images
    g = torch.Generator().manual_seed(3)
    replay = torch.Generator()
    replay.set_state(g.get_state())
    ours = ra.rand_augment(x, policy, g, torch.tensor(FILL, dtype=torch.uint8)).numpy()
    pil = [to_pil(img) for img in x]
    fired = 0
    for _ in range(policy.num_ops):
        op, m, sign, bic = ra.sample_layer(policy, x.shape[0], replay)
        for i in range(x.shape[0]):
            if op[i] >= 0:
                name = policy.ops[int(op[i])]
                arg = timm_argument(name, float(m[i]), float(sign[i]))
                pil[i] = pillow_op(pil[i], name, arg, bool(bic[i]))
                fired += 1
    diff = np.abs(ours.astype(int) - np.stack([from_pil(p) for p in pil]))
    assert fired > 20  # about half of 2 x 48
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_policy_draws_follow_the_policy():
    # 40,000 draws: ops uniform over 15, each firing with p = 0.5; magnitude N(9, 0.5)
    # clipped to [0, 10]; signs and filters fair coins. Fixed seed: the verdict is stable.
    policy = ra.parse_policy("rand-m9-mstd0.5-inc1")
    g = torch.Generator().manual_seed(0)
    op, m, sign, bic = ra.sample_layer(policy, 40_000, g)
    fired = op >= 0
    assert stats.binomtest(int(fired.sum()), len(op), 0.5).pvalue > 0.01
    counts = torch.bincount(op[fired], minlength=15).numpy()
    assert stats.chisquare(counts).pvalue > 0.01
    # below the clip, N(9, 0.5) truncated at 10; at the clip, its upper tail 1 - Phi(2)
    below = stats.truncnorm(-np.inf, 2.0, loc=9, scale=0.5).cdf
    assert stats.kstest(m[m < 10].numpy(), below).pvalue > 0.01
    assert stats.binomtest(int((m == 10).sum()), len(m), stats.norm.sf(2.0)).pvalue > 0.01
    assert stats.binomtest(int((sign > 0).sum()), len(op), 0.5).pvalue > 0.01
    assert stats.binomtest(int(bic.sum()), len(op), 0.5).pvalue > 0.01
    # the wrong distribution is rejected by the same tests: they can fail
    wrong = 9 + 0.4 * torch.randn(len(m), generator=g, dtype=torch.float64)
    assert stats.kstest(wrong[wrong < 10].numpy(), below).pvalue < 0.01
    assert ra.parse_policy("rand-m9-n3-mstd101").magnitude_std == math.inf
    _, u, _, _ = ra.sample_layer(ra.parse_policy("rand-m9-mstd101"), 20_000, g)
    assert stats.kstest(u.numpy(), stats.uniform(0, 9).cdf).pvalue > 0.01


def test_policy_grammar():
    p = ra.parse_policy("rand-m9-mstd0.5-inc1")
    assert (p.magnitude, p.num_ops, p.magnitude_std, p.increasing) == (9, 2, 0.5, True)
    assert p.ops == ra.INCREASING_OPS
    q = ra.parse_policy("rand-m7-n3-mmax8-inc0-p0.8")
    assert (q.magnitude, q.num_ops, q.magnitude_max, q.prob, q.ops) == (
        7, 3, 8, 0.8, ra.STANDARD_OPS,
    )  # fmt: skip
    for bad in ("rnd-m9", "rand-m9-x3", "rand-n0", "rand-mstd"):
        with pytest.raises(ConfigError, match="augment.randaugment"):
            ra.parse_policy(bad)


def test_seeded_generator_reproduces_a_batch(images):
    x = images["rgb"].repeat(4, 1, 1, 1)  # 12 images
    aug = DeviceAugment(recipe_augment("cct300", 32), 10, (0.5,) * 3, (0.25,) * 3)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    a, ta = aug(x, y, torch.Generator().manual_seed(7))
    b, tb = aug(x, y, torch.Generator().manual_seed(7))
    c, _ = aug(x, y, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert a.shape == (12, 3, 32, 32) and a.dtype == torch.float32 and torch.isfinite(a).all()


def test_resized_crop_matches_pillow(images):
    g = torch.Generator().manual_seed(0)
    for x in images.values():
        x = x.repeat(8, 1, 1, 1)
        boxes = rc.sample_boxes(x.shape[0], 32, 32, g, scale=(0.5, 1.0))
        bic = torch.rand(x.shape[0], generator=g) < 0.5
        ours = rc.resized_crop(x, boxes, bic).numpy()
        for i in range(x.shape[0]):
            t, left, h, w = boxes[i].tolist()
            crop = to_pil(x[i]).crop((left, t, left + w, t + h))
            ref = crop.resize((32, 32), Image.BICUBIC if bic[i] else Image.BILINEAR)
            assert np.array_equal(ours[i], from_pil(ref)), (i, boxes[i], bool(bic[i]))


def test_resized_crop_boxes_follow_scale_and_ratio():
    g = torch.Generator().manual_seed(1)
    boxes = rc.sample_boxes(20_000, 32, 32, g, scale=(0.8, 1.0))
    top, left, h, w = boxes.T
    assert (h <= 32).all() and (w <= 32).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).double() / 1024
    assert area.min() >= 0.75 and area.max() <= 1.0  # rounding of the sides moves it a little
    aspect = w.double() / h
    assert aspect.min() >= 0.74 and aspect.max() <= 1.36
    assert len(set(map(tuple, boxes.tolist()))) > 100  # per image, not one box for the batch


def test_recipes_resolve():
    s300 = resolve_augment(AugmentConfig(), recipe_augment("cct300", 32))
    assert (s300.crop, s300.crop_scale_min, s300.randaugment) == (
        "resized", 0.8, "rand-m9-mstd0.5-inc1",
    )  # fmt: skip
    assert (s300.mixup, s300.cutmix, s300.erase_prob, s300.label_smoothing) == (0.8, 1.0, 0.25, 0.1)
    digits = AugmentSpec(1, False, 0.0, 0.0, 0.0, 0.1)
    s200 = resolve_augment(AugmentConfig(recipe="cct200"), digits, 32)
    assert (s200.crop, s200.crop_padding, s200.randaugment) == ("pad", 4, "")
    assert resolve_augment(AugmentConfig(), digits) == digits  # no recipe: the dataset's own
    with pytest.raises(ConfigError, match="cannot read section 'q1'"):
        resolve_augment(AugmentConfig(randaugment="rand-q1"), digits)


def test_no_torchvision_import():
    root = Path(__file__).resolve().parents[1] / "cct" / "data"
    for path in [root / f for f in ("augment.py", "randaugment.py", "resized_crop.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "torchvision" for n in names), path


def test_recipe_schedule_warms_up_from_warmup_lr_and_cools_down():
    from cct.config import OptimConfig
    from cct.optim import lr_at

    cfg = OptimConfig(epochs=310, cooldown_epochs=10, warmup_epochs=10, warmup_lr=1e-6)
    spe = 4
    lrs = [lr_at(i, steps_per_epoch=spe, cfg=cfg) for i in range(310 * spe)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[10 * spe] == pytest.approx(6e-4)
    assert all(a < b for a, b in zip(lrs[: 10 * spe], lrs[1 : 10 * spe + 1]))
    assert lrs[300 * spe - 1] == pytest.approx(1e-5, rel=1e-3)
    assert all(v == pytest.approx(1e-5) for v in lrs[300 * spe :])  # the cooldown


def test_preview_draws_the_uint8_stage_and_the_model_input(tmp_path, images):
    from cct.data import preview

    x = images["rgb"].repeat(2, 1, 1, 1)
    y = torch.arange(x.shape[0])
    aug = DeviceAugment(recipe_augment("cct300", 32), 10, (0.5,) * 3, (0.25,) * 3)
    stored, mid, out = preview.augmented_rows(x, y, aug, seed=4)
    assert torch.equal(stored, x) and not torch.equal(mid, x)
    # the middle row is exactly the recipe's uint8 stage: the full call without erase and mix
    plain = dataclasses.replace(aug.spec, erase_prob=0.0, mixup=0.0, cutmix=0.0)
    alone, _ = DeviceAugment(plain, 10, aug.mean, aug.std)(x, y, torch.Generator().manual_seed(4))
    assert torch.equal(mid, ((alone * 0.25 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8))
    assert not torch.equal(out, mid)  # mixing touched the model's input
    png = tmp_path / "batch.png"
    assert preview.main(["--out", str(png), "--images", "4"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
