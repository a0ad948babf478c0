"""The reference for the cct300 recipe's data path: timm's per-sample Pillow pipeline.

timm's RandomResizedCropAndInterpolation -> flip -> rand_augment_transform (auto_augment.py)
-> ToTensor + Normalize -> RandomErasing, one image at a time in DataLoader workers, then
Mixup on the batch. The op functions follow timm's definitions call for call (the same Pillow
functions with the same arguments); tests/test_randaugment.py uses them as the oracle for
cct.data.randaugment, and `python -m cct.perf` times this pipeline against the batched one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor

from cct.data.augment import AugmentSpec
from cct.data.randaugment import RandAugmentPolicy, parse_policy
from cct.perf.reference.data import erase


def timm_argument(name: str, m: float, sign: float) -> float:
    """timm's _LEVEL_TO_ARG in plain Python; sign -1 is _randomly_negate's negation."""
    u = m / 10
    if name == "Rotate":
        return u * 30 * sign
    if name == "Posterize":
        return int(u * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(u * 4)
    if name == "Solarize":
        return min(256, int(u * 256))
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(u * 256))
    if name == "SolarizeAdd":
        return min(128, int(u * 110))
    if name in ("ShearX", "ShearY"):
        return u * 0.3 * sign
    if name.startswith("Translate"):
        return u * 0.45 * sign
    if name.endswith("Increasing"):
        return max(0.1, 1.0 + sign * u * 0.9)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return u * 1.8 + 0.1
    return 0.0


def pillow_op(
    img: Image.Image, name: str, arg: float, bicubic: bool, fill: Sequence[int]
) -> Image.Image:
    """timm's NAME_TO_OP[name](img, arg) with fillcolor `fill` and the given filter."""
    base = name.removesuffix("Increasing")
    resample = Image.BICUBIC if bicubic else Image.BILINEAR
    fillcolor = fill[0] if img.mode == "L" else tuple(fill)
    if base == "AutoContrast":
        return ImageOps.autocontrast(img)
    if base == "Equalize":
        return ImageOps.equalize(img)
    if base == "Invert":
        return ImageOps.invert(img)
    if base == "Posterize":
        if arg >= 8:
            return img
        if arg == 0:  # Pillow >= 11 refuses 0 bits; older Pillow (timm's era): all zero
            return img.point([0] * 256 * len(img.getbands()))
        return ImageOps.posterize(img, int(arg))
    if base == "Solarize":
        return ImageOps.solarize(img, arg)
    if base == "SolarizeAdd":
        lut = [min(255, i + int(arg)) if i < 128 else i for i in range(256)]
        return img.point(lut * len(img.getbands()))
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, base)(img).enhance(arg)
    if base == "Rotate":
        return img.rotate(arg, resample=resample, fillcolor=fillcolor)
    w, h = img.size
    matrix = {
        "ShearX": (1, arg, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, arg, 1, 0),
        "TranslateXRel": (1, 0, arg * w, 0, 1, 0),
        "TranslateYRel": (1, 0, 0, 0, 1, arg * h),
    }[base]
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fillcolor)


def rand_augment_pil(img: Image.Image, policy: RandAugmentPolicy, fill: Sequence[int]):
    """timm's RandAugment.__call__: num_ops ops with replacement, each AugmentOp.__call__."""
    for name in random.choices(policy.ops, k=policy.num_ops):
        if random.random() > policy.prob:
            continue
        m = policy.magnitude
        if math.isinf(policy.magnitude_std):
            m = random.uniform(0, m)
        elif policy.magnitude_std > 0:
            m = random.gauss(m, policy.magnitude_std)
        m = max(0.0, min(m, policy.magnitude_max))
        sign = -1.0 if random.random() > 0.5 else 1.0
        img = pillow_op(img, name, timm_argument(name, m, sign), random.random() < 0.5, fill)
    return img


def resized_crop_pil(img: Image.Image, scale: tuple[float, float]) -> Image.Image:
    """timm's RandomResizedCropAndInterpolation(scale, ratio (3/4, 4/3), 'random')."""
    W, H = img.size
    box = (0, 0, W, H)  # the fallback for a square image
    for _ in range(10):
        area = random.uniform(*scale) * W * H
        aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if w <= W and h <= H:
            top, left = random.randint(0, H - h), random.randint(0, W - w)
            box = (left, top, left + w, top + h)
            break
    resample = random.choice((Image.BILINEAR, Image.BICUBIC))
    return img.crop(box).resize((W, H), resample)


class PillowRecipeTransform:
    """uint8 (C, H, W) -> normalised float32 (C, H, W): the cct300 recipe through Pillow."""

    def __init__(self, spec: AugmentSpec, mean: Sequence[float], std: Sequence[float]) -> None:
        self.spec = spec
        self.policy = parse_policy(spec.randaugment) if spec.randaugment else None
        self.fill = [min(255, round(255 * m)) for m in mean]
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, img: Tensor) -> Tensor:
        s = self.spec
        a = img.numpy()
        pil = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        if s.crop == "resized":
            pil = resized_crop_pil(pil, (s.crop_scale_min, 1.0))
        if s.flip and random.random() < 0.5:
            pil = ImageOps.mirror(pil)
        if self.policy is not None:
            pil = rand_augment_pil(pil, self.policy, self.fill)
        x = torch.from_numpy(np.array(pil)).float().div_(255)  # ToTensor
        x = (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)).sub_(self.mean).div_(self.std)
        if s.erase_prob > 0 and random.random() < s.erase_prob:
            x = erase(x)
        return x
