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
    fh, fw = _fallback(H, W, ratio)
    fallback = ((H - fh) // 2, (W - fw) // 2, fh, fw)
    ok = fits.any(1)  # Python scalars for the fallback: no host -> device copy per batch
    box = [torch.where(ok, v, float(f)) for v, f in zip((top, left, h, w), fallback, strict=True)]
    return torch.stack(box, 1).long()


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


TAPS = 4  # an upsampling window: bicubic (support 2) reads 4 input pixels, bilinear 2


def resample_weights(start: Tensor, length: Tensor, size: int, out: int, bicubic: Tensor) -> Tensor:
    """(B, out, size) float64 fixed-point weights mapping a crop [start, start + length) of an
    axis of `size` pixels to `out` pixels (Pillow's precompute_coeffs, then x 2**22, rounded).
    A crop is never larger than the image, so this only upsamples: filterscale 1, and each
    output pixel's window is computed as its 4 taps, then placed in the dense matrix."""
    dev = start.device
    scale = (length.double() / out).view(-1, 1, 1)
    center = (torch.arange(out, device=dev, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    support = torch.where(bicubic, 2.0, 1.0).view(-1, 1, 1)
    lo = torch.floor(center - support + 0.5).clamp_min(0)  # (B, out, 1), crop coordinates
    hi = torch.minimum(torch.floor(center + support + 0.5), length.view(-1, 1, 1).double())
    j = lo + torch.arange(TAPS, device=dev, dtype=torch.float64)  # (B, out, TAPS)
    t = j - center + 0.5
    k = torch.where(bicubic.view(-1, 1, 1), _bicubic(t), _bilinear(t))
    k = torch.where(j < hi, k, torch.zeros_like(k))
    total = k[..., 0:1]
    for i in range(1, TAPS):  # summed in Pillow's order
        total = total + k[..., i : i + 1]
    k = k / total
    k = torch.where(
        k >= 0, (k * 2**PRECISION_BITS + 0.5).trunc(), (k * 2**PRECISION_BITS - 0.5).trunc()
    )
    cols = (j.long() + start.view(-1, 1, 1)).clamp_max(size - 1)  # a clipped tap weighs 0
    dense = torch.zeros(k.shape[0], out, size, dtype=torch.float64, device=dev)
    return dense.scatter_add_(2, cols, k)


def _fixed_point(acc: Tensor) -> Tensor:
    # (acc + 2**21) >> 22, clipped: a power of two scales exactly, and in place, since on the
    # CPU a fresh batch-sized buffer per step is page faults
    return acc.add_(2 ** (PRECISION_BITS - 1)).mul_(2.0**-PRECISION_BITS).floor_().clamp_(0, 255)


def resized_crop(x: Tensor, boxes: Tensor, bicubic: Tensor) -> Tensor:
    """x (B, C, H, W) uint8, boxes (B, 4) (top, left, height, width), bicubic (B,) bool ->
    each box resized to (H, W) as Pillow's crop(...).resize(...) does it, uint8."""
    B, C, H, W = x.shape
    top, left, h, w = boxes.unbind(1)
    if H == W:  # both axes' weights in one call
        k = resample_weights(torch.cat([left, top]), torch.cat([w, h]), W, W, bicubic.repeat(2))
        kx, ky = k[:B], k[B:]  # (B, W_out, W_in), (B, H_out, H_in)
    else:
        kx = resample_weights(left, w, W, W, bicubic)
        ky = resample_weights(top, h, H, H, bicubic)
    # rows laid out (B, H, C, W): both passes are then one batched product per image
    rows = x.permute(0, 2, 1, 3).reshape(B, H * C, W).double()
    xh = _fixed_point(torch.bmm(rows, kx.transpose(1, 2)))  # the horizontal pass, rounded
    out = _fixed_point(torch.bmm(ky, xh.view(B, H, C * W)))  # then the vertical one
    return out.view(B, H, C, W).permute(0, 2, 1, 3).to(torch.uint8).contiguous()


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
