"""RandomResizedCrop (Szegedy et al. 2015) as timm's RandomResizedCropAndInterpolation does it,
per image and batched on the device.

Each image gets its own box (area a fraction in `scale` of the image, log-uniform aspect ratio
in `ratio`, 10 proposals, the first that fits, else the whole image) and its own filter
(bilinear or bicubic, timm's `random` interpolation). The crop is resized back to the image
size with Pillow's resampling arithmetic: separable, horizontal pass first, each tap window
normalised, coefficients in 22-bit fixed point, rounded to uint8 after each pass. The two
passes are batched matrix products whose integer sums float64 holds exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


def sample_boxes(
    B: int,
    H: int,
    W: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Tensor:
    """(B, 4) int64 boxes (top, left, height, width), torchvision's get_params per image."""
    dev = generator.device
    u = torch.rand((4, B, tries), generator=generator, device=dev, dtype=torch.float64)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * (H * W)
    lr = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr[0] + (lr[1] - lr[0]) * u[1])
    w = torch.sqrt(area * aspect).round()  # round half to even, as Python's round
    h = torch.sqrt(area / aspect).round()
    fits = (w <= W) & (h <= H)
    first = fits.int().argmax(1, keepdim=True)  # the first proposal that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = (u[2].gather(1, first).squeeze(1) * (H - h + 1)).floor()
    left = (u[3].gather(1, first).squeeze(1) * (W - w + 1)).floor()
    # none fits: the central crop at the nearest allowed aspect ratio
    hw = _fallback(H, W, ratio)
    fb = torch.tensor([(H - hw[0]) // 2, (W - hw[1]) // 2, *hw], device=dev, dtype=torch.float64)
    box = torch.stack([top, left, h, w], 1)
    return torch.where(fits.any(1, keepdim=True), box, fb).long()


def _fallback(H: int, W: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = W / H
    if in_ratio < min(ratio):
        return int(round(W / min(ratio))), W
    if in_ratio > max(ratio):
        return H, int(round(H * max(ratio)))
    return H, W


def _bilinear(x: Tensor) -> Tensor:
    x = x.abs()
    return (1.0 - x).clamp_min(0.0)


def _bicubic(x: Tensor) -> Tensor:
    a = -0.5  # Pillow's resize bicubic (its affine transform uses a = -1)
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resample_weights(start: Tensor, length: Tensor, size: int, out: int, bicubic: Tensor) -> Tensor:
    """(B, out, size) float64 fixed-point weights mapping a crop [start, start + length) of an
    axis of `size` pixels to `out` pixels (Pillow's precompute_coeffs, then x 2**22, rounded)."""
    dev = start.device
    scale = (length.double() / out).view(-1, 1, 1)  # upsampling or identity: filterscale 1
    center = (torch.arange(out, device=dev, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    j = torch.arange(size, device=dev).view(1, 1, -1) - start.view(-1, 1, 1)  # crop coords
    inside = (j >= 0) & (j < length.view(-1, 1, 1))
    t = j.double() - center + 0.5
    support = torch.where(bicubic, 2.0, 1.0).view(-1, 1, 1)
    lo = torch.floor(center - support + 0.5).clamp_min(0)
    hi = torch.floor(center + support + 0.5)
    inside = inside & (j >= lo) & (j < hi)
    k = torch.where(bicubic.view(-1, 1, 1), _bicubic(t), _bilinear(t))
    k = torch.where(inside, k, torch.zeros_like(k))
    k = k / k.sum(-1, keepdim=True)
    return torch.where(
        k >= 0, (k * 2**PRECISION_BITS + 0.5).trunc(), (k * 2**PRECISION_BITS - 0.5).trunc()
    )


def _fixed_point(acc: Tensor) -> Tensor:
    return torch.floor((acc + 2 ** (PRECISION_BITS - 1)) / 2**PRECISION_BITS).clamp(0, 255)


def resized_crop(x: Tensor, boxes: Tensor, bicubic: Tensor) -> Tensor:
    """x (B, C, H, W) uint8, boxes (B, 4) (top, left, height, width), bicubic (B,) bool ->
    each box resized to (H, W) as Pillow's crop(...).resize(...) does it, uint8."""
    B, C, H, W = x.shape
    top, left, h, w = boxes.unbind(1)
    kx = resample_weights(left, w, W, W, bicubic)  # (B, W_out, W_in)
    ky = resample_weights(top, h, H, H, bicubic)  # (B, H_out, H_in)
    # (B, C, H, W) @ (B, 1, W_in, W_out) -> (B, C, H, W_out): the horizontal pass, rounded
    xh = _fixed_point(torch.matmul(x.double(), kx.transpose(1, 2).unsqueeze(1)))
    # (B, 1, H_out, H_in) @ (B, C, H_in, W) -> the vertical pass
    return _fixed_point(torch.matmul(ky.unsqueeze(1), xh)).to(torch.uint8)


def random_resized_crop(
    x: Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "random",
) -> Tensor:
    """timm's RandomResizedCropAndInterpolation on a batch; interpolation 'random' picks
    bilinear or bicubic per image, else 'bilinear' or 'bicubic' for all."""
    B, C, H, W = x.shape
    boxes = sample_boxes(B, H, W, generator, scale=scale, ratio=ratio)
    if interpolation == "random":
        bicubic = torch.rand(B, generator=generator, device=generator.device) < 0.5
    else:
        bicubic = torch.full((B,), interpolation == "bicubic", device=x.device)
    return resized_crop(x, boxes, bicubic)
