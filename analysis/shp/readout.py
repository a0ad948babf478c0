"""The fresh readout trained on frozen features (SPEC 4.2), and the two ways to fit it.

Readout = pooling over tokens + Linear(width -> classes) without bias.
- pooling "mean": exactly linear, so each unit's contribution to a logit separates.
- pooling "seqpool" [reconstructed]: as CCT's sequence pooling — softmax over tokens of a
  Linear(width -> 1) score, weighted token sum — without CCT's LayerNorm (a norm mixes the
  units). A unit's field then uses the pooling weights computed from all units.

Fitting:
- "fast": full-batch L-BFGS on the mean-pooled features cached on the device (seconds), with
  the same L2 as the faithful recipe's weight decay. seqpool then refines on token features
  with a few epochs of Adam (cached in half precision when they fit, else streamed).
- "faithful": the group's recipe — SGD Nesterov, lr 0.01, momentum 0.975, weight decay 1e-3,
  lr x0.975 per epoch, 200 epochs, batch 100 — on augmented images, re-running the frozen
  network each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cct.config import ShpFit, ShpPooling
from cct.engine import soft_cross_entropy

Pooling = ShpPooling
Fit = ShpFit


class Readout(nn.Module):
    """Pooling over tokens + Linear(width -> classes), no bias; zero-initialised (a fresh
    head, deterministic; seqpool's zero score starts as mean pooling)."""

    def __init__(self, width: int, num_classes: int, pooling: Pooling) -> None:
        super().__init__()
        if pooling not in ("mean", "seqpool"):
            raise ValueError(f"pooling={pooling!r}: choose from mean, seqpool")
        self.pooling = pooling
        self.weight = nn.Parameter(torch.zeros(num_classes, width))
        self.score = nn.Linear(width, 1) if pooling == "seqpool" else None
        if self.score is not None:
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)

    def pool(self, tokens: Tensor) -> Tensor:
        if self.score is None:
            return tokens.mean(1)  # (B, N, W) -> (B, W)
        a = F.softmax(self.score(tokens), dim=1)  # (B, N, 1)
        return (a * tokens).sum(1)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.pool(tokens) @ self.weight.t()  # (B, W) -> (B, K)


@dataclass(frozen=True)
class FaithfulRecipe:
    """The group's readout recipe (Koresh et al. 2025, Gross et al. 2025)."""

    lr: float = 0.01
    momentum: float = 0.975
    weight_decay: float = 1e-3
    lr_decay: float = 0.975  # per epoch
    epochs: int = 200
    batch_size: int = 100
    # [reconstructed] "the dataset's augmentation": "geometric" = the dataset's shifts and
    # flips with hard labels; "train" = the full training augmentation (mixup, cutmix,
    # erasing, label smoothing); "none".
    augment: Literal["geometric", "train", "none"] = "geometric"


@dataclass(frozen=True)
class FastRecipe:
    weight_decay: float = 1e-3  # L2 as (wd / 2) * ||W||^2: the faithful recipe's weight decay
    max_iter: int = 300  # L-BFGS iterations (stops earlier on convergence)
    seqpool_epochs: int = 5  # Adam epochs on token features, seqpool only
    seqpool_lr: float = 1e-2  # 1e-3 hardly moves the score from mean pooling in 5 epochs
    seqpool_batch_size: int = 256


def fit_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    weight_decay: float,
    max_iter: int,
    init: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Full-batch L-BFGS of softmax regression without bias on pooled features x (n, W).

    Minimises mean cross-entropy + (wd / 2) ||W * mask||^2 over W (K, W); entries where
    `mask` is False stay zero (ANDC). Convex, so the result hardly depends on the start.
    """
    w0 = torch.zeros(num_classes, x.shape[1], device=x.device) if init is None else init
    w = w0.detach().clone().float().requires_grad_(True)
    m = None if mask is None else mask.to(w.dtype)
    opt = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        we = w if m is None else w * m
        loss = F.cross_entropy(x @ we.t(), y) + 0.5 * weight_decay * we.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = w.detach() if m is None else (w * m).detach()
    if not torch.isfinite(out).all():
        raise RuntimeError("readout fit diverged: non-finite weights")
    return out


# (epoch) -> iterable of (tokens per block, soft targets (B, K))
BatchStream = Callable[[int], Iterable[tuple[dict[int, Tensor], Tensor]]]


def train_readouts(
    readouts: dict[int, Readout],
    stream: BatchStream,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
) -> None:
    """Minibatch training of every block's readout on the same batches.

    The readouts share no parameters, so one summed loss and one optimizer train each
    exactly as if alone — and the frozen network runs once per batch for all blocks.
    """
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch)
        for tokens, targets in stream(epoch):
            loss = sum(soft_cross_entropy(r(tokens[b]), targets) for b, r in readouts.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for r in readouts.values():
        if not all(torch.isfinite(p).all() for p in r.parameters()):
            raise RuntimeError("readout training diverged: non-finite weights")


def faithful_optimizer(params: Iterable[Tensor], recipe: FaithfulRecipe) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
