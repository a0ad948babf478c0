"""Building blocks of a CCT: tokenizer, attention, transformer and convolutional blocks.

Every block's forward takes an optional `taps` dict. When it is None (training) nothing
extra is computed or kept; when it is a dict the block writes its internals into it for
analysis (SPEC section 2), from the very same code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample.
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    # Scale the (B, 1, ..) mask, not x: one pass over the activations instead of two.
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
    return x * mask


class Tokenizer(nn.Module):
    """Conv -> ReLU -> MaxPool, `layers` times; the last layer outputs `embed_dim` channels."""

    def __init__(
        self,
        *,
        in_channels: int,
        embed_dim: int,
        layers: int,
        kernel: int,
        mid_channels: int = 64,
    ) -> None:
        super().__init__()
        # As in the CCT reference: stride 1 and padding 1 for 3x3, stride 2 / padding 3 for 7x7.
        stride = max(1, kernel // 2 - 1)
        padding = max(1, kernel // 2)
        widths = [in_channels] + [mid_channels] * (layers - 1) + [embed_dim]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], kernel, stride, padding, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            for i in range(layers)
        )
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def grid_size(self, img_size: int) -> int:
        size = img_size
        for _ in self.stages:
            size = (size + 2 * self.padding - self.kernel) // self.stride + 1  # conv
            size = (size + 2 - 3) // 2 + 1  # max pool 3, stride 2, pad 1
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: the CPU conv and max-pool kernels are vectorised over channels (max
        # pool ~10x faster than on NCHW), and the (B, N, d) tokens come out contiguous.
        x = x.contiguous(memory_format=torch.channels_last)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, d, h, w)


class Attention(nn.Module):
    """Multi-head self-attention whose width H*dh is independent of the stream width d."""

    def __init__(self, *, dim: int, num_heads: int, head_dim: int, attn_dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.attn_dropout = attn_dropout
        self.fused = True  # False: the explicit-matmul reference path (tests, benchmarks)
        # Zero-pad head_dim up to a multiple of this for the fused kernels; None: automatic
        # (8 on CUDA, what flash / memory-efficient attention need; none elsewhere), 0: never.
        self.pad_head_dim: int | None = None

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        H, dh = self.num_heads, self.head_dim
        p = self.attn_dropout if self.training else 0.0
        qkv = self.qkv(x).view(B, N, 3, H, dh)
        # On the CPU the fused kernels take no dropout, and SDPA's fallback then costs more
        # passes over the N x N weights than the written-out path.
        if self.fused and not (p > 0 and x.device.type == "cpu"):
            out = fused_attention(qkv, dropout_p=p, pad_to=self._pad_to(x.device))
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, H, N, dh)
            out = reference_attention(q, k, v, dropout_p=p)
        out = out.transpose(1, 2)  # (B, H, N, dh) -> (B, N, H, dh)
        if taps is not None:
            taps["heads"] = out
        return self.proj(out.reshape(B, N, H * dh))

    def _pad_to(self, device: torch.device) -> int:
        if self.pad_head_dim is not None:
            return self.pad_head_dim
        return 8 if device.type == "cuda" else 0


def fused_attention(qkv: torch.Tensor, *, dropout_p: float, pad_to: int = 0) -> torch.Tensor:
    """scaled_dot_product_attention of qkv (B, N, 3, H, dh) -> (B, H, N, dh).

    With `pad_to`, head_dim is zero-padded up to a multiple of it first: head widths of 4 or
    5 (large-scale MHA) have no fused kernel. Zero columns in q and k leave q k^T unchanged,
    the scale stays 1/sqrt(dh), and v's zero columns give zero output columns, sliced off.
    """
    dh = qkv.shape[-1]
    pad = -dh % pad_to if pad_to else 0
    if pad:
        qkv = F.pad(qkv, (0, pad))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, H, N, dh + pad)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=dh**-0.5)
    return out[..., :dh] if pad else out


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh)) v, written out; the fused path must match it."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # scale q, not the N x N scores
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v


class Mlp(nn.Module):
    def __init__(self, *, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """The CCT reference block. Note the order: the second LayerNorm (norm1) normalises the
    residual stream itself, not just the MLP input — kept exactly as the reference does it."""

    kind = "transformer"

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_hidden: int,
        attn_dropout: float,
        dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(
            dim=dim, num_heads=num_heads, head_dim=head_dim, attn_dropout=attn_dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=mlp_hidden, dropout=dropout)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        x = x + drop_path(self.attn(self.pre_norm(x), taps), self.drop_path, self.training)
        x = self.norm1(x)
        ff = self.mlp(x)
        if taps is not None:
            taps["ff"] = ff
        x = x + drop_path(ff, self.drop_path, self.training)
        if taps is not None:
            taps["out"] = x
        return x


class ConvBlock(nn.Module):
    """3x3 conv d->d, norm, activation, residual — on the token grid (B, d, h, w).

    [reconstructed] The papers do not say what replaces the first transformer blocks; the
    norm and activation are config choices (BatchNorm becomes SyncBatchNorm under DDP).
    """

    kind = "conv"

    NORMS = {
        "batch": nn.BatchNorm2d,
        "group": lambda dim: nn.GroupNorm(1, dim),  # batch-independent: one group over (d, h, w)
        "none": lambda dim: nn.Identity(),
    }
    ACTS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}

    def __init__(self, *, dim: int, norm: str, act: str, drop_path: float) -> None:
        super().__init__()
        for what, value, table in (("norm", norm, self.NORMS), ("act", act, self.ACTS)):
            if value not in table:
                raise ValueError(f"conv_block_{what}={value!r}: expected one of {', '.join(table)}")
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=norm == "none")
        self.norm: nn.Module = self.NORMS[norm](dim)
        self.act = self.ACTS[act]()
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        y = self.act(self.norm(self.conv(x)))
        if taps is not None:
            taps["features"] = y
        x = x + drop_path(y, self.drop_path, self.training)
        if taps is not None:
            taps["out"] = x
        return x


def sine_embedding(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoidal positions (Vaswani et al. 2017), shape (1, N, d)."""
    pos = torch.arange(num_tokens, dtype=torch.float32)[:, None]
    i = torch.arange(dim, dtype=torch.float32)[None, :]
    angle = pos / torch.pow(10000.0, 2 * (i // 2) / dim)
    pe = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    return pe[None]
