"""AdamW with the CCT recipe's parameter groups, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from cct.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No decay on norms, biases and the positional embedding (CCT reference recipe):
    # in practice every parameter with fewer than two dimensions, plus pos_embed.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("pos_embed"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",  # one kernel for all parameters on GPU
    )


def lr_at(step: int, *, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Linear warmup from warmup_lr to lr, cosine down to min_lr, then min_lr for the last
    cooldown_epochs (timm's cosine schedule with warmup_lr and cooldown_epochs, moved per step
    rather than per epoch)."""
    total = (cfg.epochs - cfg.cooldown_epochs) * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
