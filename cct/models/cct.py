"""The Compact Convolutional Transformer (Hassani et al. 2021), read top to bottom.

image -> conv tokenizer -> (+ positions) -> conv blocks on the grid -> transformer blocks
on the tokens -> LayerNorm -> sequence pooling -> linear classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cct.config import ConvBlockAct, ConvBlockNorm, PosEmbedding
from cct.models.layers import ConvBlock, Tokenizer, TransformerBlock, sine_embedding


@dataclass(frozen=True)
class CCTSettings:
    """Every architectural number, resolved (see cct/models/registry.py)."""

    num_classes: int
    in_channels: int
    img_size: int
    embed_dim: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_ratio: float
    conv_blocks: int
    conv_block_norm: ConvBlockNorm
    conv_block_act: ConvBlockAct
    tokenizer_layers: int
    tokenizer_kernel: int
    pos_embedding: PosEmbedding
    attn_dropout: float
    drop_path: float
    dropout: float


class CCT(nn.Module):
    def __init__(self, s: CCTSettings) -> None:
        super().__init__()
        self.settings = s
        d = s.embed_dim
        self.tokenizer = Tokenizer(
            in_channels=s.in_channels,
            embed_dim=d,
            layers=s.tokenizer_layers,
            kernel=s.tokenizer_kernel,
        )
        self.grid = self.tokenizer.grid_size(s.img_size)
        num_tokens = self.grid * self.grid
        if s.pos_embedding == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, d))
            nn.init.trunc_normal_(self.pos_embed, std=0.2)
        elif s.pos_embedding == "sine":
            self.register_buffer("pos_embed", sine_embedding(num_tokens, d), persistent=False)
        elif s.pos_embedding == "none":
            self.pos_embed = None
        else:
            raise ValueError(f"pos_embedding={s.pos_embedding!r}: expected learnable, sine or none")
        self.dropout = nn.Dropout(s.dropout)

        rates = torch.linspace(
            0, s.drop_path, s.depth, device="cpu"
        ).tolist()  # 0 -> max; "cpu": on meta too
        blocks: list[nn.Module] = []
        for i in range(s.depth):
            if i < s.conv_blocks:
                blocks.append(
                    ConvBlock(
                        dim=d,
                        norm=s.conv_block_norm,
                        act=s.conv_block_act,
                        drop_path=rates[i],
                    )
                )
            else:
                blocks.append(
                    TransformerBlock(
                        dim=d,
                        num_heads=s.num_heads,
                        head_dim=s.head_dim,
                        mlp_hidden=int(d * s.mlp_ratio),
                        attn_dropout=s.attn_dropout,
                        dropout=s.dropout,
                        drop_path=rates[i],
                    )
                )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d)
        self.pool_score = nn.Linear(d, 1)  # sequence pooling: softmax-weighted token average
        self.head = nn.Linear(d, s.num_classes)
        self.apply(_init_weights)

    @property
    def block_kinds(self) -> list[str]:
        return [b.kind for b in self.blocks]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x)  # (B, d, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, d, h, w) -> (B, N, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.dropout(x)

    def run_blocks(
        self, x: torch.Tensor, taps: list[dict] | None = None, upto: int | None = None
    ) -> torch.Tensor:
        """Blocks 0..upto (all by default); conv blocks see the grid, transformers the tokens."""
        B, N, d = x.shape
        last = len(self.blocks) - 1 if upto is None else upto
        for i, block in enumerate(self.blocks[: last + 1]):
            tap = taps[i] if taps is not None else None
            if block.kind == "conv":
                grid = x.transpose(1, 2).reshape(
                    B, d, self.grid, self.grid
                )  # (B, N, d) -> (B, d, h, w)
                x = block(grid, tap).flatten(2).transpose(1, 2)
            else:
                x = block(x, tap)
        return x  # (B, N, d)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        weights = F.softmax(self.pool_score(x), dim=1)  # (B, N, 1)
        return (weights * x).sum(dim=1)  # (B, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.run_blocks(self.embed(x))))

    @torch.no_grad()
    def internals(self, x: torch.Tensor, upto: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Per-block internals for analysis, computed by the same forward as training.

        Transformer block i gives `heads` (B, N, H, dh) — the per-head outputs before the
        output projection — `ff` (B, N, d) and `out` (B, N, d); a conv block gives
        `features` (B, d, h, w) and `out`. Blocks after `upto` are not run.
        """
        last = len(self.blocks) - 1 if upto is None else upto
        taps: list[dict] = [{} for _ in range(last + 1)]
        self.run_blocks(self.embed(x), taps, upto=last)
        return taps


def _init_weights(m: nn.Module) -> None:
    # As the CCT reference: truncated-normal linear weights, kaiming convs, zero biases.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
