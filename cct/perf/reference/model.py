"""The reference model: the same CCT written the usual way, as in the CCT authors' repository
(SHI-Labs/Compact-Transformers) and timm — explicit attention matmuls
(q @ k^T * scale -> softmax -> dropout -> @ v), no scaled_dot_product_attention.

It takes its numbers from a resolved `CCTSettings` and names its parameters as `cct.models`
does, so the benchmark can assert equal parameter counts and load our weights into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cct.measure import count_params
from cct.models import CCTSettings, create_model
from cct.models.layers import sine_embedding


class DropPath(nn.Module):
    """Stochastic depth exactly as the CCT repository writes it."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask


class ExplicitAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, attn_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=False)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, dh) each
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class EncoderLayer(nn.Module):
    """The CCT repository's TransformerEncoderLayer (norm1 normalises the residual stream)."""

    def __init__(self, s: CCTSettings, drop_path: float) -> None:
        super().__init__()
        d = s.embed_dim
        self.pre_norm = nn.LayerNorm(d)
        self.attn = ExplicitAttention(d, s.num_heads, s.head_dim, s.attn_dropout)
        self.norm1 = nn.LayerNorm(d)
        self.mlp = Mlp(d, int(d * s.mlp_ratio), s.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.pre_norm(x)))
        x = self.norm1(x)
        return x + self.drop_path(self.mlp(x))


class ConvLayer(nn.Module):
    """The conv replacement block on the token grid: conv -> norm -> act, residual."""

    def __init__(self, s: CCTSettings, drop_path: float) -> None:
        super().__init__()
        d = s.embed_dim
        self.conv = nn.Conv2d(d, d, 3, padding=1, bias=s.conv_block_norm == "none")
        norms = {"batch": lambda: nn.BatchNorm2d(d), "group": lambda: nn.GroupNorm(1, d)}
        self.norm = norms.get(s.conv_block_norm, nn.Identity)()
        self.act = nn.ReLU() if s.conv_block_act == "relu" else nn.GELU()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.act(self.norm(self.conv(x))))


class ConvTokenizer(nn.Module):
    """(Conv -> ReLU -> MaxPool) x layers, the CCT repository's Tokenizer."""

    def __init__(self, s: CCTSettings) -> None:
        super().__init__()
        k = s.tokenizer_kernel
        stride, padding = max(1, k // 2 - 1), max(1, k // 2)
        widths = [s.in_channels] + [64] * (s.tokenizer_layers - 1) + [s.embed_dim]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], k, stride, padding, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            for i in range(s.tokenizer_layers)
        )
        size = s.img_size
        for _ in range(s.tokenizer_layers):
            size = (size + 2 * padding - k) // stride + 1  # conv
            size = (size - 1) // 2 + 1  # max pool 3, stride 2, pad 1
        self.grid = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x  # (B, d, h, w)


class ReferenceCCT(nn.Module):
    """Tokenizer -> positions -> blocks -> LayerNorm -> sequence pooling -> classifier."""

    def __init__(self, s: CCTSettings) -> None:
        super().__init__()
        self.settings = s
        self.tokenizer = ConvTokenizer(s)
        self.grid = self.tokenizer.grid
        num_tokens = self.grid * self.grid
        self.pos_embed = None
        if s.pos_embedding == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, s.embed_dim))
        elif s.pos_embedding == "sine":
            self.register_buffer("pos_embed", sine_embedding(num_tokens, s.embed_dim), False)
        self.dropout = nn.Dropout(s.dropout)
        rates = torch.linspace(0, s.drop_path, s.depth).tolist()
        self.blocks = nn.ModuleList(
            ConvLayer(s, rates[i]) if i < s.conv_blocks else EncoderLayer(s, rates[i])
            for i in range(s.depth)
        )
        self.norm = nn.LayerNorm(s.embed_dim)
        self.pool_score = nn.Linear(s.embed_dim, 1)
        self.head = nn.Linear(s.embed_dim, s.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x)
        B, d = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, d, h, w) -> (B, N, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.dropout(x)
        for block in self.blocks:
            if isinstance(block, ConvLayer):
                grid = x.transpose(1, 2).reshape(B, d, self.grid, self.grid)
                x = block(grid).flatten(2).transpose(1, 2)
            else:
                x = block(x)
        x = self.norm(x)
        weights = F.softmax(self.pool_score(x), dim=1)  # (B, N, 1)
        x = (weights.transpose(-1, -2) @ x).squeeze(-2)  # sequence pooling -> (B, d)
        return self.head(x)


def reference_model(
    variant: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    img_size: int | None = None,
    **overrides,
) -> tuple[ReferenceCCT, nn.Module]:
    """(reference model, our model) of one variant, our weights copied into the reference.

    Raises AssertionError when the parameter counts differ: the comparison is only fair
    between models of the same size.
    """
    ours = create_model(
        variant, num_classes=num_classes, in_channels=in_channels, img_size=img_size, **overrides
    )
    ref = ReferenceCCT(ours.settings)
    n_ours, n_ref = count_params(ours), count_params(ref)
    assert n_ours == n_ref, (
        f"{variant} {overrides}: reference has {n_ref:,} params, ours {n_ours:,}"
    )
    ref.load_state_dict(ours.state_dict())
    return ref, ours
