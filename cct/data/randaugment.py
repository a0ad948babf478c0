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


def _levels(device: torch.device) -> Tensor:
    return torch.arange(256, device=device).view(1, 1, 256)


def autocontrast_lut(hist: Tensor) -> Tensor:
    # ImageOps.autocontrast (cutoff 0): int(i * scale + offset), scale = 255 / (hi - lo)
    nz = hist > 0
    lo = nz.int().argmax(-1, keepdim=True)
    hi = 255 - nz.flip(-1).int().argmax(-1, keepdim=True)
    ident = _levels(hist.device).expand_as(hist)
    # a tensor numerator: torch evaluates `scalar / tensor` as scalar * (1 / tensor), which
    # rounds differently from Pillow's 255.0 / (hi - lo) (235 * (255 / 235) is 254.99...)
    scale = torch.full_like(lo, 255).double() / (hi - lo).clamp_min(1).double()
    offset = -lo.double() * scale
    lut = (ident.double() * scale + offset).trunc().clamp(0, 255).long()
    return torch.where(hi > lo, lut, ident)


def equalize_lut(hist: Tensor) -> Tensor:
    # ImageOps.equalize: step = (N - count of the last used level) // 255,
    # lut[i] = (step // 2 + count below i) // step; identity if step == 0
    ident = _levels(hist.device).expand_as(hist)
    hi = 255 - (hist > 0).flip(-1).int().argmax(-1, keepdim=True)
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, hi)) // 255
    below = hist.cumsum(-1) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_max(255)
    return torch.where(step > 0, lut, ident)


def posterize_lut(bits: Tensor) -> Tensor:
    # ImageOps.posterize: keep the top `bits` bits; timm leaves bits >= 8 alone
    unit = 2 ** (8 - bits.clamp(0, 8)).view(-1, 1, 1)
    return _levels(bits.device) // unit * unit


def solarize_lut(thresh: Tensor) -> Tensor:
    i = _levels(thresh.device)
    return torch.where(i < thresh.view(-1, 1, 1), i, 255 - i)


def solarize_add_lut(add: Tensor, thresh: int = 128) -> Tensor:
    i = _levels(add.device)
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
    Integer sums (a 3 x 3 box plus 4 x the centre); S / 13 is never a tie, so the integer
    rounding equals Pillow's float one."""
    v = x.to(torch.int32)
    rows = v[..., :-2] + v[..., 1:-1] + v[..., 2:]  # (B, C, H, W - 2)
    s = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :] + 4 * v[..., 1:-1, 1:-1]
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.div(2 * s + 13, 26, rounding_mode="floor").to(torch.uint8)
    return out


def degenerate(name: str, x: Tensor) -> Tensor:
    """The image ImageEnhance op `name` blends towards, (B, C, H, W) uint8 (or broadcastable)."""
    B, C, H, W = x.shape
    base = name.removesuffix("Increasing")
    if base == "Brightness":
        return torch.zeros_like(x)
    if base == "Sharpness":
        return smooth(x)
    gray = grayscale(x)  # (B, 1, H, W)
    if base == "Color":
        return gray.expand(B, C, H, W).to(torch.uint8)
    n = H * W
    mean = (2 * gray.sum((1, 2, 3)) + n) // (2 * n)  # Contrast: int(mean + 0.5), exactly
    return mean.view(B, 1, 1, 1).expand(B, C, H, W).to(torch.uint8)


# --------------------------------------------------------------------------------------
# Image.transform(AFFINE): output pixel (x, y) samples the input at
# (a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f)


def _horner_bicubic(v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor, d: Tensor) -> Tensor:
    # Pillow's BICUBIC macro (a = -1), in its evaluation order
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _lerp(p: Tensor, q: Tensor, t: Tensor) -> Tensor:
    return p + (q - p) * t  # Pillow's BILINEAR macro


Filter = bool | Tensor  # bicubic? for the whole call (static), or per image (B,) bool


def _tap_offsets(bicubic: Filter) -> range:
    # bicubic reads pixels -1..2 around the sample's floor, bilinear 0..1
    return range(0, 2) if bicubic is False else range(-1, 3)


def _gather(x: Tensor, pix: Tensor) -> Tensor:
    """x (B, C, H, W) uint8, pix (T, B, H, W) int64 pixel indices into each H x W image ->
    (T, B, H, W, C) float64 taps. Channels last: one index per pixel, not per value, and each
    tap a contiguous block (strided views make every op slow)."""
    T, B, H, W = pix.shape
    C = x.shape[1]
    pixels = x.permute(0, 2, 3, 1).reshape(B * H * W, C)
    images = (torch.arange(B, device=x.device) * (H * W)).view(1, B, 1, 1)
    return pixels.index_select(0, (pix + images).view(-1)).view(T, B, H, W, C).double()


def _filtered(rows: list[Tensor], dx: Tensor, bicubic: Filter) -> Tensor:
    """One interpolation along an axis: `rows` the taps of _tap_offsets, dx the fraction."""
    if bicubic is False:
        return _lerp(rows[0], rows[1], dx)
    bic = _horner_bicubic(*rows, dx)
    if bicubic is True:
        return bic
    return torch.where(bicubic.view(-1, 1, 1, 1), bic, _lerp(rows[1], rows[2], dx))


def _finish(v: Tensor, bicubic: Filter, inside: Tensor, fill: Tensor) -> Tensor:
    """v (B, H, W, C) float64 samples -> (B, C, H, W) uint8, `fill` where not `inside`."""
    if bicubic is not False:  # Pillow clips the bicubic sum; a bilinear one cannot leave [0, 255]
        v = v.clamp(0, 255)
    out = torch.where(inside.unsqueeze(-1), v.trunc().to(torch.uint8), fill.to(torch.uint8))
    return out.permute(0, 3, 1, 2)


def affine(x: Tensor, matrix: Tensor, bicubic: Filter, fill: Tensor) -> Tensor:
    """x (B, C, H, W) uint8; matrix (B, 6) float64 output->input as Pillow takes it; bicubic
    (else bilinear) for all images or per image; fill (C,) uint8 for samples outside."""
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
    dx, dy = (xin - 0.5 - x0).unsqueeze(-1), (yin - 0.5 - y0).unsqueeze(-1)  # (B, H, W, 1)
    # taps around (y0, x0), clamped to the image as Pillow's XCLIP/YCLIP
    span = _tap_offsets(bicubic)
    off = torch.arange(span.start, span.stop, device=dev).view(-1, 1, 1, 1)  # no host copy
    T = len(off)
    cols = (x0.long().unsqueeze(0) + off).clamp(0, W - 1)  # (T, B, H, W)
    rows = (y0.long().unsqueeze(0) + off).clamp(0, H - 1)
    # taps[c][r]: column offset first, so the pass along x runs on all rows at once
    pix = (rows.unsqueeze(0) * W + cols.unsqueeze(1)).view(T * T, B, H, W)
    taps = _gather(x, pix).view(T, T, B, H, W, C)
    along_x = _filtered(list(taps), dx, bicubic)  # (T, B, H, W, C): one value per row
    return _finish(_filtered(list(along_x), dy, bicubic), bicubic, inside, fill)


def shift_rows(x: Tensor, a: Tensor, b: Tensor, c: Tensor, bicubic: Filter, fill: Tensor) -> Tensor:
    """`affine` for the matrices (a, b, c, 0, 1, 0) of ShearX and TranslateX: each output row
    samples its own input row (dy = 0), so Pillow's 2-D filter is, exactly, a 1-D one along the
    row: 4 or 2 taps instead of 16 or 4. ShearY and TranslateY take it on transposed images."""
    B, C, H, W = x.shape
    dev = x.device
    xs = torch.arange(W, device=dev, dtype=torch.float64).view(1, 1, W) + 0.5
    ys = torch.arange(H, device=dev, dtype=torch.float64).view(1, H, 1) + 0.5
    xin = a.view(B, 1, 1) * xs + b.view(B, 1, 1) * ys + c.view(B, 1, 1)  # (B, H, W)
    inside = (xin >= 0) & (xin < W)
    x0 = torch.floor(xin - 0.5)
    dx = (xin - 0.5 - x0).unsqueeze(-1)  # (B, H, W, 1)
    span = _tap_offsets(bicubic)
    off = torch.arange(span.start, span.stop, device=dev).view(-1, 1, 1, 1)  # no host copy
    row_start = (torch.arange(H, device=dev) * W).view(1, 1, H, 1)
    pix = (x0.long().unsqueeze(0) + off).clamp(0, W - 1) + row_start  # (T, B, H, W)
    return _finish(_filtered(list(_gather(x, pix)), dx, bicubic), bicubic, inside, fill)


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


# timm's _LEVEL_TO_ARG, as one formula over u = magnitude / 10 with a row of coefficients per
# op: v = u * scale, times the sign if signed, floored if integral, capped; then
# offset + direction * v, at least `least`. Every op's argument is then a few tensor ops on
# the whole batch, in the same floating-point order as timm's per-op expressions.
_INF = math.inf
_ARGUMENT = {  # name: (scale, signed, floored, cap, offset, direction, least)
    "Rotate": (30.0, 1, 0, _INF, 0.0, 1.0, -_INF),
    "Posterize": (4.0, 0, 1, _INF, 0.0, 1.0, -_INF),
    "PosterizeIncreasing": (4.0, 0, 1, _INF, 4.0, -1.0, -_INF),
    "Solarize": (256.0, 0, 1, 256.0, 0.0, 1.0, -_INF),
    "SolarizeIncreasing": (256.0, 0, 1, 256.0, 256.0, -1.0, -_INF),
    "SolarizeAdd": (110.0, 0, 1, 128.0, 0.0, 1.0, -_INF),
    "ShearX": (0.3, 1, 0, _INF, 0.0, 1.0, -_INF),
    "ShearY": (0.3, 1, 0, _INF, 0.0, 1.0, -_INF),
    "TranslateXRel": (0.45, 1, 0, _INF, 0.0, 1.0, -_INF),
    "TranslateYRel": (0.45, 1, 0, _INF, 0.0, 1.0, -_INF),
}
for _name in ("Color", "Contrast", "Brightness", "Sharpness"):
    _ARGUMENT[_name] = (1.8, 0, 0, _INF, 0.1, 1.0, -_INF)  # factor 0.1 + 1.8 u
    _ARGUMENT[_name + "Increasing"] = (0.9, 1, 0, _INF, 1.0, 1.0, 0.1)  # 1 -+ 0.9 u, >= 0.1
for _name in ("AutoContrast", "Equalize", "Invert"):
    _ARGUMENT[_name] = (0.0, 0, 0, _INF, 0.0, 1.0, -_INF)  # no argument

_COEFFICIENTS: dict[tuple, Tensor] = {}


def op_arguments(ops: tuple[str, ...], op: Tensor, m: Tensor, sign: Tensor) -> Tensor:
    """timm's level -> argument map: image i's argument of op ops[op[i]] (any value where
    op[i] == -1), on (B,) float64 magnitudes and signs +-1."""
    key = (ops, str(m.device))
    if key not in _COEFFICIENTS:  # cached: no host -> device copy per batch
        rows = [_ARGUMENT[name] for name in ops]
        _COEFFICIENTS[key] = torch.tensor(rows, dtype=torch.float64, device=m.device)
    scale, signed, floored, cap, offset, direction, least = _COEFFICIENTS[key][
        op.clamp_min(0)
    ].unbind(1)
    u = m / torch.full_like(m, LEVEL_DENOM)  # true division (CUDA multiplies by 1 / scalar)
    v = u * scale
    v = torch.where(signed > 0, v * sign, v)
    v = torch.where(floored > 0, torch.floor(v), v)
    return torch.maximum(offset + direction * torch.minimum(v, cap), least)


def op_argument(name: str, m: Tensor, sign: Tensor) -> Tensor:
    """op_arguments for one op on every image."""
    return op_arguments((name,), torch.zeros_like(m, dtype=torch.long), m, sign)


def op_lut(name: str, shape: tuple[int, int], hist: Tensor | None, arg: Tensor) -> Tensor:
    """(B, C, 256) tables of LUT op `name` for images of `shape` (B, C); the histogram-based
    ops (AutoContrast, Equalize) read `hist`, the others their (B,) argument."""
    base = name.removesuffix("Increasing")
    if base == "AutoContrast":
        return autocontrast_lut(hist)
    if base == "Equalize":
        return equalize_lut(hist)
    if base == "Invert":
        table = 255 - _levels(arg.device)
    elif base == "Posterize":
        table = posterize_lut(arg.long())
    elif base == "Solarize":
        table = solarize_lut(arg.long())
    elif base == "SolarizeAdd":
        table = solarize_add_lut(arg.long())
    else:
        raise ValueError(f"{name} is not a LUT op")
    return table.expand(*shape, 256)


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


# The geometric ops in their cheapest exact form: the shears and translations along x resample
# each row on its own (shift_rows), those along y each column, the rotation in 2-D (affine).
ROW_OPS = ("ShearX", "TranslateXRel")
COLUMN_OPS = ("ShearY", "TranslateYRel")


def lut_ops(x: Tensor, op: Tensor, arg: Tensor, ops: tuple[str, ...], ks: list[int]) -> Tensor:
    """x with each image's LUT op among ops[k] for k in ks (others unchanged): one gather."""
    B, C = x.shape[:2]
    needs_hist = any(ops[k] in ("AutoContrast", "Equalize") for k in ks)
    hist = histogram(x) if needs_hist else None
    lut = _levels(x.device).expand(B, C, 256)
    for k in ks:
        lut = torch.where((op == k).view(B, 1, 1), op_lut(ops[k], (B, C), hist, arg), lut)
    return apply_lut(x, lut)


def enhance_ops(x: Tensor, op: Tensor, arg: Tensor, ops: tuple[str, ...], ks: list[int]) -> Tensor:
    """x with each image's ImageEnhance op among ops[k] for k in ks: one blend (factor 1, the
    others, gives back the image exactly)."""
    B = x.shape[0]
    target, factor = x, torch.ones_like(arg)
    for k in ks:
        pick = op == k
        target = torch.where(pick.view(B, 1, 1, 1), degenerate(ops[k], x), target)
        factor = torch.where(pick, arg, factor)
    return blend(target, x, factor)


def warp_ops(
    x: Tensor,
    op: Tensor,
    arg: Tensor,
    bicubic: Filter,
    ops: tuple[str, ...],
    ks: list[int],
    fill: Tensor,
) -> Tensor:
    """x with each image's geometric op among ops[k] for k in ks (others unchanged)."""
    B, C, H, W = x.shape
    names = {ops[k] for k in ks}
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    rows_only, columns_only = names <= set(ROW_OPS), names <= set(COLUMN_OPS)
    if rows_only or columns_only or (names <= set(ROW_OPS + COLUMN_OPS) and H == W):
        # one shift_rows for all: a y op is an x op on the transposed image, (a, b, c) = (e, d, f)
        shear, move, along_y = zero, zero, torch.zeros_like(op, dtype=torch.bool)
        for k in ks:
            pick = op == k
            if ops[k].startswith("Shear"):
                shear = torch.where(pick, arg, shear)
            else:
                move = torch.where(pick, arg * (W if ops[k] in ROW_OPS else H), move)
            if ops[k] in COLUMN_OPS:
                along_y = along_y | pick
        if rows_only:
            return shift_rows(x, one, shear, move, bicubic, fill)
        if columns_only:
            return shift_rows(x.transpose(2, 3), one, shear, move, bicubic, fill).transpose(2, 3)
        flip = along_y.view(B, 1, 1, 1)
        out = shift_rows(torch.where(flip, x.transpose(2, 3), x), one, shear, move, bicubic, fill)
        return torch.where(flip, out.transpose(2, 3), out)
    matrix = torch.stack([one, zero, zero, zero, one, zero], 1)
    for k in ks:
        matrix = torch.where((op == k).view(B, 1), op_matrix(ops[k], arg, H, W), matrix)
    return affine(x, matrix, bicubic, fill)


def _family(name: str) -> str:
    # on the CPU each family runs on its own images: the shears and translations together
    if name in ROW_OPS or name in COLUMN_OPS:
        return "axis"
    return op_kind(name)


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

    On CUDA (masked) nothing is read back: each kind of op is computed once for the whole
    batch with per-image parameters (one LUT gather, one blend, one 2-D warp) and a mask picks
    each image's. On the CPU (subset, the default there) the ops are read to the host once (a
    sync costs nothing there) and each family of ops runs only on its own images: LUT,
    enhance, the shears and translations (1-D), rotation (2-D). tests/test_randaugment.py
    checks that the two agree.
    """
    B = x.shape[0]
    subset = x.device.type == "cpu" if subset is None else subset
    if not subset:
        kinds: dict[str, list[int]] = {}
        for k, name in enumerate(ops):
            kinds.setdefault(op_kind(name), []).append(k)
        out = x
        for kind, ks in kinds.items():
            picked = op == ks[0]  # compared with Python ints: no host -> device copy
            for k in ks[1:]:
                picked = picked | (op == k)
            picked = picked.view(B, 1, 1, 1)
            out = torch.where(picked, _kind_result(kind, x, op, arg, bicubic, ops, ks, fill), out)
        return out
    picks: dict[str, list[int]] = {}
    present: dict[str, set[int]] = {}
    filters: dict[str, set[bool]] = {}
    for i, (k, bic) in enumerate(zip(op.tolist(), bicubic.tolist(), strict=True)):
        if k >= 0:
            fam = _family(ops[k])
            picks.setdefault(fam, []).append(i)
            present.setdefault(fam, set()).add(k)
            filters.setdefault(fam, set()).add(bic)
    out = x.clone()
    for fam, images in picks.items():
        i = torch.tensor(images, device=x.device)
        one_filter = len(filters[fam]) == 1 and fam not in ("lut", "enhance")
        bic: Filter = next(iter(filters[fam])) if one_filter else bicubic[i]  # no unused taps
        out[i] = _kind_result(fam, x[i], op[i], arg[i], bic, ops, sorted(present[fam]), fill)
    return out


def _kind_result(
    family: str,
    x: Tensor,
    op: Tensor,
    arg: Tensor,
    bicubic: Filter,
    ops: tuple[str, ...],
    ks: list[int],
    fill: Tensor,
) -> Tensor:
    if family == "lut":
        return lut_ops(x, op, arg, ops, ks)
    if family == "enhance":
        return enhance_ops(x, op, arg, ops, ks)
    return warp_ops(x, op, arg, bicubic, ops, ks, fill)


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
        arg = op_arguments(policy.ops, op, m, sign)
        x = apply_ops(x, op, arg, bicubic, policy.ops, fill)
    return x
