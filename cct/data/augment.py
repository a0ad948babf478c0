"""Batched, per-sample augmentation on the device.

One call turns a uint8 batch into normalized float32 images and soft targets:
crop (padded shift or RandomResizedCrop) -> horizontal flip -> RandAugment -> normalize ->
random erasing -> mixup/cutmix, with label smoothing folded into the targets. The order is
timm's training transform (RandAugment on uint8 images after crop and flip, erasing after
normalization, mixup/cutmix last, on the whole batch). Every random draw comes from the
generator passed in, so a seeded generator reproduces a batch exactly; nothing here reads a
value back to the host (no .item(), no Python branch on a tensor), so it never stalls the GPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cct.config import AugmentConfig, AugmentRecipe, ConfigError, CropKind
from cct.data.randaugment import parse_policy, rand_augment
from cct.data.resized_crop import random_resized_crop
from cct.typed_reader import read_fields


@dataclass(frozen=True)
class AugmentSpec:
    """AugmentConfig with the recipe's defaults filled in: every field concrete."""

    crop_padding: int
    flip: bool
    mixup: float
    cutmix: float
    erase_prob: float
    label_smoothing: float
    crop: CropKind = "pad"
    crop_scale_min: float = 1.0
    randaugment: str = ""  # "" off


def recipe_augment(recipe: AugmentRecipe, size: int) -> AugmentSpec:
    """The CCT authors' CIFAR recipes (SPEC 3), at image size `size`.

    cct300: their cct_7-3x1_cifar100_300epochs config: RandomResizedCrop scale (0.8, 1),
    bilinear/bicubic at random, flip, RandAugment rand-m9-mstd0.5-inc1, erasing 0.25 (pixel),
    mixup 0.8 / cutmix 1.0, smoothing 0.1. cct200: their examples/ (4-pixel padded crop and
    flip at 32 px); its AutoAugment is not implemented here.
    """
    if recipe == "cct300":
        return AugmentSpec(
            round(size / 8), True, 0.8, 1.0, 0.25, 0.1, "resized", 0.8, "rand-m9-mstd0.5-inc1"
        )
    return AugmentSpec(round(size / 8), True, 0.8, 1.0, 0.25, 0.1, "pad", 1.0, "")


def _policy_problem(policy: str) -> str | None:
    if not policy:
        return None
    try:
        parse_policy(policy)
    except ConfigError as e:
        return str(e)
    return None


def resolve_augment(cfg: AugmentConfig, defaults: AugmentSpec, size: int = 32) -> AugmentSpec:
    """Fill the None fields of `cfg` from `cfg.recipe` at image size `size` when set, else
    from `defaults` (the dataset's); reject impossible values (the fields' ranges)."""
    base = defaults if cfg.recipe is None else recipe_augment(cfg.recipe, size)
    given = {k: v for k, v in vars(cfg).items() if k != "recipe"}
    spec = AugmentSpec(**{k: (getattr(base, k) if v is None else v) for k, v in given.items()})
    _, problems = read_fields(
        AugmentConfig, dataclasses.asdict(spec), checks={"randaugment": _policy_problem}
    )
    if problems:
        raise ConfigError("; ".join(str(p.under("data.augment")) for p in problems))
    return spec


_STATS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _stats(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[Tensor, Tensor]:
    # Cached per device: building a tiny tensor from a list on every step is a host->device copy.
    key = (tuple(float(m) for m in mean), tuple(float(s) for s in std), str(device))
    if key not in _STATS:
        m = torch.tensor(key[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(key[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        _STATS[key] = (m, s)
    return _STATS[key]


def normalize(x_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std."""
    m, s = _stats(mean, std, x_uint8.device)
    return (x_uint8.float() / 255.0 - m) / s


def smooth_one_hot(y: Tensor, num_classes: int, smoothing: float) -> Tensor:
    # timm's convention: the true class gets 1 - smoothing + smoothing / K, the others smoothing / K.
    off = smoothing / num_classes
    t = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
    return t.scatter_(1, y.long().unsqueeze(1), 1.0 - smoothing + off)


# --------------------------------------------------------------------------------------
# per-sample geometric augmentation (on uint8, before normalization)


def random_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Shift each image by its own (dy, dx) in [-pad, pad], filling with zeros.

    Equivalent to torchvision RandomCrop(size, padding=pad) as in the CCT reference, but one
    gather for the whole batch instead of a loop over samples.
    """
    B, C, H, W = x.shape
    shift = torch.randint(0, 2 * pad + 1, (2, B, 1), generator=generator, device=x.device)
    xp = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    rows = torch.arange(H, device=x.device) + shift[0]  # (B, H)
    cols = torch.arange(W, device=x.device) + shift[1]  # (B, W)
    b = torch.arange(B, device=x.device).view(B, 1, 1)
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


# --------------------------------------------------------------------------------------
# random erasing (Zhong et al. 2017; timm RandomErasing mode="pixel"), on normalized images


def random_erase(
    x: Tensor,
    prob: float,
    generator: torch.Generator,
    *,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    tries: int = 10,
) -> Tensor:
    """With probability `prob` per sample, fill one random rectangle with N(0, 1) noise.

    timm retries up to 10 times until the rectangle fits; here the 10 proposals are drawn at
    once and the first that fits is used (none fits -> the sample is left alone, as in timm).
    """
    B, C, H, W = x.shape
    dev = x.device
    u = torch.rand((4, B, tries), generator=generator, device=dev)
    area = H * W * (min_area + (max_area - min_area) * u[0])
    log_aspect = math.log(min_aspect) + (math.log(1 / min_aspect) - math.log(min_aspect)) * u[1]
    aspect = torch.exp(log_aspect)
    h = torch.sqrt(area * aspect).round()
    w = torch.sqrt(area / aspect).round()
    fits = (h < H) & (w < W)
    first = fits.int().argmax(1, keepdim=True)  # argmax returns the first maximum
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)  # (B,)
    top = (u[2].gather(1, first).squeeze(1) * (H - h + 1)).floor()
    left = (u[3].gather(1, first).squeeze(1) * (W - w + 1)).floor()
    erase = (torch.rand(B, generator=generator, device=dev) < prob) & fits.any(1)

    r = torch.arange(H, device=dev).view(1, H)
    c = torch.arange(W, device=dev).view(1, W)
    in_rows = (r >= top[:, None]) & (r < (top + h)[:, None])  # (B, H)
    in_cols = (c >= left[:, None]) & (c < (left + w)[:, None])  # (B, W)
    mask = erase.view(B, 1, 1) & in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    if dev.type == "cpu":  # noise for the erased images only: on the CPU a sync costs nothing
        i = erase.nonzero().squeeze(1)
        noise = torch.randn((len(i), C, H, W), generator=generator, dtype=x.dtype)
        out = x.clone()
        out[i] = torch.where(mask[i].unsqueeze(1), noise, x[i])
        return out
    noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    return torch.where(mask.unsqueeze(1), noise, x)


# --------------------------------------------------------------------------------------
# mixup (Zhang et al. 2018) / cutmix (Yun et al. 2019), per batch as in timm's Mixup


def sample_gamma(
    alpha: float, shape: tuple[int, ...], generator: torch.Generator, tries: int = 16
) -> Tensor:
    """Gamma(alpha, 1) drawn from `generator` (torch's own gamma sampler takes no generator).

    Marsaglia & Tsang (2000): each proposal is accepted with probability > 0.95, so drawing
    `tries` proposals at once and keeping the first accepted one fails with probability
    < 0.05**16 — a fixed amount of work and no data-dependent loop. alpha < 1 uses the
    boost Gamma(alpha) = Gamma(alpha + 1) * U**(1 / alpha).
    """
    dev = generator.device
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((*shape, tries), generator=generator, device=dev)
    u = torch.rand((*shape, tries), generator=generator, device=dev)
    v = (1.0 + c * z) ** 3
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = accept.int().argmax(-1, keepdim=True)
    g = d * v.gather(-1, first).squeeze(-1)
    if alpha < 1.0:
        g = g * torch.rand(shape, generator=generator, device=dev) ** (1.0 / alpha)
    return g.clamp_min(1e-30)


def sample_beta(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Beta(alpha, alpha) = G1 / (G1 + G2) with G1, G2 ~ Gamma(alpha)."""
    g1 = sample_gamma(alpha, shape, generator)
    g2 = sample_gamma(alpha, shape, generator)
    return g1 / (g1 + g2)


def cutmix_box(lam: Tensor, H: int, W: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """timm's rand_bbox: a box of side sqrt(1 - lam) at a uniform centre, clipped to the image.

    Returns the (H, W) bool mask of the box and lam corrected to the kept area.
    """
    dev = lam.device
    ratio = torch.sqrt(1.0 - lam)
    half_h, half_w = (H * ratio).floor().div(2).floor(), (W * ratio).floor().div(2).floor()
    cy = torch.randint(0, H, (), generator=generator, device=dev)
    cx = torch.randint(0, W, (), generator=generator, device=dev)
    y0, y1 = (cy - half_h).clamp(0, H), (cy + half_h).clamp(0, H)
    x0, x1 = (cx - half_w).clamp(0, W), (cx + half_w).clamp(0, W)
    r, c = torch.arange(H, device=dev), torch.arange(W, device=dev)
    box = ((r >= y0) & (r < y1)).view(H, 1) & ((c >= x0) & (c < x1)).view(1, W)
    return box, 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


def mix_batch(
    x: Tensor, target: Tensor, mixup: float, cutmix: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Mix each sample with its partner in the reversed batch (timm's batch mode).

    When both alphas are > 0, cutmix or mixup is picked with probability 0.5. On CUDA both
    candidates are computed and the pick is a torch.where on a device scalar, so there is no
    host sync; on the CPU, where a sync costs nothing, only the picked one (the same draws).
    """
    B, C, H, W = x.shape
    x_rev, t_rev = x.flip(0), target.flip(0)
    candidates = []  # (images, lam), the images computed on demand
    if mixup > 0:
        lam_mix = sample_beta(mixup, (), generator)
        candidates.append((lambda: lam_mix * x + (1 - lam_mix) * x_rev, lam_mix))
    if cutmix > 0:
        box, lam_cut = cutmix_box(sample_beta(cutmix, (), generator), H, W, generator)
        candidates.append((lambda: torch.where(box, x_rev, x), lam_cut))
    if len(candidates) == 2:
        use_cut = torch.rand((), generator=generator, device=x.device) < 0.5
        lam = torch.where(use_cut, candidates[1][1], candidates[0][1])
        if x.device.type == "cpu":
            mixed = candidates[int(use_cut)][0]()
        else:
            mixed = torch.where(use_cut, candidates[1][0](), candidates[0][0]())
    else:
        images, lam = candidates[0]
        mixed = images()
    return mixed, lam * target + (1 - lam) * t_rev


# --------------------------------------------------------------------------------------


class DeviceAugment:
    """The training-time transform: uint8 batch -> (normalized float32 images, soft targets)."""

    def __init__(
        self, spec: AugmentSpec, num_classes: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.spec = spec
        self.num_classes = num_classes
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.policy = parse_policy(spec.randaugment) if spec.randaugment else None
        # timm fills what the geometric ops bring in with the dataset mean (img_mean)
        self._fill = [min(255, round(255 * m)) for m in self.mean]
        self._fill_on: dict[str, Tensor] = {}  # per device: no host->device copy per step

    def __call__(
        self, x_uint8: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Returns (normalized float32 images (B, C, H, W), soft targets float32 (B, K))."""
        if generator.device.type != x_uint8.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the batch is on {x_uint8.device}"
            )
        s = self.spec
        x = x_uint8
        if s.crop == "resized":
            x = random_resized_crop(x, generator, scale=(s.crop_scale_min, 1.0))
        elif s.crop_padding > 0:
            x = random_crop(x, s.crop_padding, generator)
        if s.flip:
            x = random_flip(x, generator)
        if self.policy is not None:
            key = str(x.device)
            if key not in self._fill_on:
                self._fill_on[key] = torch.tensor(self._fill, dtype=torch.uint8, device=x.device)
            x = rand_augment(x, self.policy, generator, self._fill_on[key])
        x = normalize(x, self.mean, self.std)
        if s.erase_prob > 0:
            x = random_erase(x, s.erase_prob, generator)
        target = smooth_one_hot(y, self.num_classes, s.label_smoothing)
        if s.mixup > 0 or s.cutmix > 0:
            x, target = mix_batch(x, target, s.mixup, s.cutmix, generator)
        return x, target
