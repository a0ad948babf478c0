"""RandAugment (Cubuk et al. 2020) as timm implements it, per image and batched on the device.

timm's `rand_augment_transform` applies, to each image on its own, `num_ops` ops drawn
uniformly with replacement from 15; each op fires with probability 0.5, with a magnitude drawn
per call from N(m, mstd) clipped to [0, mmax], a random sign for the signed ops and a random
bilinear/bicubic filter for the geometric ones — all through Pillow, one image at a time, in
DataLoader workers. Here every draw is a (B,) tensor from the generator passed in and every op
runs on the whole uint8 batch at once; an image takes an op's result through a mask. Nothing
reads a value back to the host.

The ops reproduce Pillow's arithmetic (the library timm calls): integer LUTs for the histogram
and bit ops, Pillow's float32 blend with truncation for the ImageEnhance ops, and the affine
sampler of Image.transform (pixel centres at +0.5, clamped taps, fill outside, bilinear and
the a = -1 bicubic in float64, truncated). tests/test_randaugment.py checks each op against
Pillow image by image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cct.config import ConfigError

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitudes live in [0, 10]

OpKind = Literal["lut", "enhance", "affine"]

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in timm's order.
STANDARD_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip
INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip


@dataclass(frozen=True)
class RandAugmentPolicy:
    """A parsed timm RandAugment string, e.g. `rand-m9-mstd0.5-inc1`."""

    magnitude: float = 9.0
    num_ops: int = 2
    magnitude_std: float = 0.0  # inf: magnitude ~ U(0, m) (timm: mstd > 100)
    magnitude_max: float = LEVEL_DENOM
    prob: float = 0.5
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return INCREASING_OPS if self.increasing else STANDARD_OPS


def parse_policy(text: str) -> RandAugmentPolicy:
    """timm's grammar: `rand` then `-`-separated m<int>, n<int>, mstd<float>, mmax<int>,
    inc<0|1>, p<float>. timm reads `inc0` as increasing too (bool of a non-empty string);
    here inc0 means the standard set, as the grammar reads."""
    parts = text.split("-")
    if parts[0] != "rand":
        raise ConfigError(
            f"augment.randaugment {text!r}: must start with 'rand', e.g. rand-m9-mstd0.5-inc1"
        )
    fields: dict = {"magnitude_std": 0.0, "increasing": False}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d+)?)", part)
        if m is None:
            raise ConfigError(
                f"augment.randaugment {text!r}: cannot read section {part!r}"
                " (valid: m<int>, n<int>, mstd<float>, mmax<int>, inc<0|1>, p<float>)"
            )
        key, val = m.group(1), float(m.group(2))
        if key == "m":
            fields["magnitude"] = val
        elif key == "n":
            fields["num_ops"] = int(val)
        elif key == "mstd":
            fields["magnitude_std"] = math.inf if val > 100 else val
        elif key == "mmax":
            fields["magnitude_max"] = val
        elif key == "inc":
            fields["increasing"] = val != 0
        else:
            fields["prob"] = val
    policy = RandAugmentPolicy(**fields)
    if policy.num_ops < 1 or not 0 <= policy.prob <= 1 or policy.magnitude_max <= 0:
        raise ConfigError(f"augment.randaugment {text!r}: need n >= 1, 0 <= p <= 1, mmax > 0")
    return policy


# --------------------------------------------------------------------------------------
# LUT ops: (B, C, H, W) uint8 -> per image and channel a table (B, C, 256) of int64


def histogram(x: Tensor) -> Tensor:
    """(B, C, H, W) uint8 -> (B, C, 256) int64 counts, without a host sync (no bincount)."""
    B, C = x.shape[:2]
    flat = x.reshape(B * C, -1).long()
    h = torch.zeros(B * C, 256, dtype=torch.int64, device=x.device)
    return h.scatter_add_(1, flat, torch.ones_like(flat)).view(B, C, 256)


def _levels(x: Tensor) -> Tensor:
    return torch.arange(256, device=x.device).view(1, 1, 256)


def autocontrast_lut(hist: Tensor) -> Tensor:
    # ImageOps.autocontrast (cutoff 0): int(i * scale + offset), scale = 255 / (hi - lo)
    nz = hist > 0
    lo = nz.int().argmax(-1, keepdim=True)
    hi = 255 - nz.flip(-1).int().argmax(-1, keepdim=True)
    ident = _levels(hist).expand_as(hist)
    # a tensor numerator: torch evaluates `scalar / tensor` as scalar * (1 / tensor), which
    # rounds differently from Pillow's 255.0 / (hi - lo) (235 * (255 / 235) is 254.99...)
    scale = torch.full_like(lo, 255).double() / (hi - lo).clamp_min(1).double()
    offset = -lo.double() * scale
    lut = (ident.double() * scale + offset).trunc().clamp(0, 255).long()
    return torch.where(hi > lo, lut, ident)


def equalize_lut(hist: Tensor) -> Tensor:
    # ImageOps.equalize: step = (N - count of the last used level) // 255,
    # lut[i] = (step // 2 + count below i) // step; identity if step == 0
    ident = _levels(hist).expand_as(hist)
    hi = 255 - (hist > 0).flip(-1).int().argmax(-1, keepdim=True)
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, hi)) // 255
    below = hist.cumsum(-1) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_max(255)
    return torch.where(step > 0, lut, ident)


def posterize_lut(ref: Tensor, bits: Tensor) -> Tensor:
    # ImageOps.posterize: keep the top `bits` bits; timm leaves bits >= 8 alone
    unit = 2 ** (8 - bits.clamp(0, 8)).view(-1, 1, 1)
    return _levels(ref) // unit * unit


def solarize_lut(ref: Tensor, thresh: Tensor) -> Tensor:
    i = _levels(ref)
    return torch.where(i < thresh.view(-1, 1, 1), i, 255 - i)


def solarize_add_lut(ref: Tensor, add: Tensor, thresh: int = 128) -> Tensor:
    i = _levels(ref)
    return torch.where(i < thresh, (i + add.view(-1, 1, 1)).clamp_max(255), i)


def apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """x (B, C, H, W) uint8, lut (B, C, 256) -> lut[b, c, x[b, c]] as uint8."""
    B, C, H, W = x.shape
    out = lut.to(torch.uint8).gather(-1, x.reshape(B, C, H * W).long())
    return out.view(B, C, H, W)


# --------------------------------------------------------------------------------------
# ImageEnhance ops: blend(degenerate, image, factor)


def grayscale(x: Tensor) -> Tensor:
    """Pillow's RGB -> L (ITU-R 601-2 in 16-bit fixed point), (B, 1, H, W) int64."""
    if x.shape[1] == 1:
        return x.long()
    r, g, b = x.long().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """Image.blend: float32 in1 + alpha * (in2 - in1), clipped to [0, 255] and truncated."""
    alpha = factor.float().view(-1, 1, 1, 1)
    d = degenerate.float()
    out = d + alpha * (x.float() - d)
    return out.clamp(0, 255).trunc().to(torch.uint8)


def smooth(x: Tensor) -> Tensor:
    """ImageFilter.SMOOTH ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded); border pixels copied.
    S / 13 is never a tie, so the integer rounding equals Pillow's float one."""
    B, C, H, W = x.shape
    k = torch.ones(1, 1, 3, 3, dtype=torch.float32, device=x.device)
    k[0, 0, 1, 1] = 5.0
    s = F.conv2d(x.float().reshape(B * C, 1, H, W), k).view(B, C, H - 2, W - 2)
    inner = torch.floor((2 * s + 13) / 26)  # exact: S is an integer < 2**24
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner.to(torch.uint8)
    return out


def enhance_degenerates(x: Tensor) -> dict[str, Tensor]:
    """The image each ImageEnhance op blends towards, (B, C, H, W) uint8 (or broadcastable)."""
    B, C, H, W = x.shape
    gray = grayscale(x)  # (B, 1, H, W)
    n = H * W
    mean = (2 * gray.sum((1, 2, 3)) + n) // (2 * n)  # int(mean + 0.5), exactly
    return {
        "Color": gray.expand(B, C, H, W).to(torch.uint8),
        "Contrast": mean.view(B, 1, 1, 1).expand(B, C, H, W).to(torch.uint8),
        "Brightness": torch.zeros_like(x),
        "Sharpness": smooth(x),
    }


# --------------------------------------------------------------------------------------
# Image.transform(AFFINE): output pixel (x, y) samples the input at
# (a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f)


def _horner_bicubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    # Pillow's BICUBIC macro (a = -1), in its evaluation order
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(x: Tensor, matrix: Tensor, bicubic: Tensor, fill: Tensor) -> Tensor:
    """x (B, C, H, W) uint8; matrix (B, 6) float64 output->input as Pillow takes it; bicubic
    (B,) bool (else bilinear); fill (C,) uint8 for samples outside the image."""
    B, C, H, W = x.shape
    dev = x.device
    ys, xs = torch.meshgrid(
        torch.arange(H, device=dev, dtype=torch.float64) + 0.5,
        torch.arange(W, device=dev, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    a, b, c, d, e, f = (matrix[:, i].view(B, 1, 1) for i in range(6))
    xin, yin = a * xs + b * ys + c, d * xs + e * ys + f  # (B, H, W)
    inside = (xin >= 0) & (xin < W) & (yin >= 0) & (yin < H)
    x0, y0 = torch.floor(xin - 0.5), torch.floor(yin - 0.5)
    dx, dy = (xin - 0.5 - x0).unsqueeze(1), (yin - 0.5 - y0).unsqueeze(1)  # (B, 1, H, W)
    # 4 x 4 taps around (y0, x0): offsets -1..2, clamped to the image as Pillow's XCLIP/YCLIP
    off = torch.arange(-1, 3, device=dev).view(4, 1, 1, 1)
    cols = (x0.long().unsqueeze(0) + off).clamp(0, W - 1)  # (4, B, H, W)
    rows = (y0.long().unsqueeze(0) + off).clamp(0, H - 1)
    base = (torch.arange(B * C, device=dev) * (H * W)).view(1, 1, B, C, 1)
    pix = (rows.unsqueeze(1) * W + cols.unsqueeze(0)).view(4, 4, B, 1, H * W)
    # taps[r][c]: (B, C, H, W), each a contiguous block (strided views make every op slow)
    taps = x.reshape(-1)[(pix + base).view(16, -1)].view(4, 4, B, C, H, W).double()

    def lerp(p: Tensor, q: Tensor, t: Tensor) -> Tensor:
        return p + (q - p) * t  # Pillow's BILINEAR macro

    bil = lerp(lerp(taps[1, 1], taps[1, 2], dx), lerp(taps[2, 1], taps[2, 2], dx), dy)
    rows4 = [_horner_bicubic(*taps[r], dx) for r in range(4)]
    bic = _horner_bicubic(*rows4, dy).clamp(0, 255)
    out = torch.where(bicubic.view(B, 1, 1, 1), bic, bil).trunc().to(torch.uint8)
    return torch.where(inside.unsqueeze(1), out, fill.view(1, C, 1, 1).to(torch.uint8))


def rotate_matrix(degrees: Tensor, H: int, W: int) -> Tensor:
    """Image.rotate(degrees) about the centre, counter-clockwise, as its affine matrix."""
    t = -torch.deg2rad(degrees.double())
    cos, sin = torch.cos(t).round(decimals=15), torch.sin(t).round(decimals=15)  # as Pillow
    cx, cy = W / 2.0, H / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], 1)


# --------------------------------------------------------------------------------------
# the policy: magnitudes -> op arguments (timm's _LEVEL_TO_ARG), then one layer of ops


def op_kind(name: str) -> OpKind:
    base = name.removesuffix("Increasing")
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        return "enhance"
    if base in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        return "affine"
    return "lut"


def op_argument(name: str, m: Tensor, sign: Tensor) -> Tensor:
    """timm's level -> argument map for op `name`, on (B,) float64 magnitudes and signs +-1."""
    u = m / torch.full_like(m, LEVEL_DENOM)  # true division (CUDA multiplies by 1 / scalar)
    table = {
        "Rotate": lambda: u * 30.0 * sign,
        "Posterize": lambda: torch.floor(u * 4),
        "PosterizeIncreasing": lambda: 4 - torch.floor(u * 4),
        "Solarize": lambda: torch.floor(u * 256).clamp_max(256),
        "SolarizeIncreasing": lambda: 256 - torch.floor(u * 256).clamp_max(256),
        "SolarizeAdd": lambda: torch.floor(u * 110).clamp_max(128),
        "ShearX": lambda: u * 0.3 * sign,
        "ShearY": lambda: u * 0.3 * sign,
        "TranslateXRel": lambda: u * 0.45 * sign,
        "TranslateYRel": lambda: u * 0.45 * sign,
    }
    if name in table:
        return table[name]()
    if name.endswith("Increasing"):  # enhance ops: factor 1 -+ 0.9 u, at least 0.1
        return (1.0 + sign * u * 0.9).clamp_min(0.1)
    if op_kind(name) == "enhance":
        return u * 1.8 + 0.1
    return torch.zeros_like(m)  # AutoContrast, Equalize, Invert take no argument


def op_lut(name: str, x: Tensor, hist: Tensor, arg: Tensor) -> Tensor:
    base = name.removesuffix("Increasing")
    if base == "AutoContrast":
        return autocontrast_lut(hist)
    if base == "Equalize":
        return equalize_lut(hist)
    if base == "Invert":
        return (255 - _levels(hist)).expand_as(hist)
    if base == "Posterize":
        return posterize_lut(hist, arg.long()).expand_as(hist)
    if base == "Solarize":
        return solarize_lut(hist, arg.long()).expand_as(hist)
    if base == "SolarizeAdd":
        return solarize_add_lut(hist, arg.long()).expand_as(hist)
    raise ValueError(f"{name} is not a LUT op")


def op_matrix(name: str, arg: Tensor, H: int, W: int) -> Tensor:
    """(B, 6) float64 affine matrices of a geometric op, as timm passes them to Pillow."""
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "Rotate":
        return rotate_matrix(arg, H, W)
    rows = {
        "ShearX": (one, arg, zero, zero, one, zero),
        "ShearY": (one, zero, zero, arg, one, zero),
        "TranslateXRel": (one, zero, arg * W, zero, one, zero),
        "TranslateYRel": (one, zero, zero, zero, one, arg * H),
    }
    return torch.stack(rows[name], 1)


def _take(t: Tensor, i: Tensor | None) -> Tensor:
    return t if i is None else t[i]


def _over_images(sel: Tensor, fn, out: Tensor, subset: bool) -> Tensor:
    """`out` with fn(i)'s images over the ones `sel` picks. Masked (the default on CUDA), fn
    runs on the whole batch (i None) and a mask picks: no host sync. As a subset (the default
    on the CPU, where a sync costs nothing), fn runs only on the picked images (index i):
    the same result for a fraction of the work."""
    if not subset:
        return torch.where(sel.view(-1, 1, 1, 1), fn(None), out)
    i = sel.nonzero().squeeze(1)
    return out.index_copy(0, i, fn(i))


def apply_ops(
    x: Tensor,
    op: Tensor,
    arg: Tensor,
    bicubic: Tensor,
    ops: tuple[str, ...],
    fill: Tensor,
    *,
    subset: bool | None = None,
) -> Tensor:
    """One layer: image i gets ops[op[i]] with argument arg[i]; op[i] == -1 leaves it alone.

    The ops fall in three kinds, each computed once for the whole batch with per-image
    parameters: one LUT gather, one blend, one affine warp; a mask picks each image's.
    """
    B, C, H, W = x.shape
    subset = x.device.type == "cpu" if subset is None else subset
    kinds = {op_kind(name) for name in ops}  # static: a policy without a kind skips its work
    sel = {k: torch.zeros(B, dtype=torch.bool, device=x.device) for k in kinds}
    out = x
    if "lut" in kinds:
        hist = histogram(x)
        lut = _levels(hist).expand_as(hist)
        for k, name in enumerate(ops):
            if op_kind(name) == "lut":
                lut = torch.where((op == k).view(B, 1, 1), op_lut(name, x, hist, arg), lut)
                sel["lut"] = sel["lut"] | (op == k)
        out = apply_lut(x, lut)  # identity table for the images without a LUT op
    if "enhance" in kinds:
        is_enh = [k for k, name in enumerate(ops) if op_kind(name) == "enhance"]
        sel["enhance"] = torch.isin(op, torch.tensor(is_enh, device=x.device))

        def enhance(i: Tensor | None) -> Tensor:
            xs, ops_i, arg_i = _take(x, i), _take(op, i), _take(arg, i)
            degenerates, degenerate = enhance_degenerates(xs), xs
            for k in is_enh:
                pick = (ops_i == k).view(-1, 1, 1, 1)
                degenerate = torch.where(
                    pick, degenerates[ops[k].removesuffix("Increasing")], degenerate
                )
            return blend(degenerate, xs, arg_i)

        out = _over_images(sel["enhance"], enhance, out, subset)
    if "affine" in kinds:
        matrix = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64, device=x.device)
        matrix = matrix.expand(B, 6)
        for k, name in enumerate(ops):
            if op_kind(name) == "affine":
                matrix = torch.where((op == k).view(B, 1), op_matrix(name, arg, H, W), matrix)
                sel["affine"] = sel["affine"] | (op == k)

        def warp(i: Tensor | None) -> Tensor:
            return affine(_take(x, i), _take(matrix, i), _take(bicubic, i), fill)

        out = _over_images(sel["affine"], warp, out, subset)
    return out


def sample_layer(
    policy: RandAugmentPolicy, batch: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer's draws, per image: (op index or -1 when the op does not fire, magnitude,
    sign +-1, bicubic?). timm draws the same quantities per image in Python's `random`."""
    dev = generator.device
    op = torch.randint(0, len(policy.ops), (batch,), generator=generator, device=dev)
    fires = torch.rand(batch, generator=generator, device=dev, dtype=torch.float64) < policy.prob
    m = torch.full((batch,), policy.magnitude, dtype=torch.float64, device=dev)
    noise = torch.randn(batch, generator=generator, device=dev, dtype=torch.float64)
    unif = torch.rand(batch, generator=generator, device=dev, dtype=torch.float64)
    if math.isinf(policy.magnitude_std):
        m = unif * policy.magnitude
    elif policy.magnitude_std > 0:
        m = m + policy.magnitude_std * noise
    m = m.clamp(0.0, policy.magnitude_max)
    sign = torch.where(torch.rand(batch, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    bicubic = torch.rand(batch, generator=generator, device=dev) < 0.5
    return torch.where(fires, op, -1), m, sign.double(), bicubic


def rand_augment(
    x: Tensor, policy: RandAugmentPolicy, generator: torch.Generator, fill: Tensor
) -> Tensor:
    """(B, C, H, W) uint8 -> the same, each image through its own `policy.num_ops` ops.

    fill (C,) uint8: the colour the geometric ops bring in (timm: the dataset mean x 255).
    """
    for _ in range(policy.num_ops):
        op, m, sign, bicubic = sample_layer(policy, x.shape[0], generator)
        arg = torch.zeros_like(m)
        for k, name in enumerate(policy.ops):
            arg = torch.where(op == k, op_argument(name, m, sign), arg)
        x = apply_ops(x, op, arg, bicubic, policy.ops, fill)
    return x
