"""Named CCT variants as data, and the one factory that builds any of them.

A name fixes the architecture (`cct_<depth>_<kernel>x<tokenizer layers>_<default size>`);
classes, channels and image size come from the dataset. Overrides change one knob each,
independently: the attention width num_heads*head_dim is not tied to embed_dim.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from cct.config import ConfigError, ModelConfig
from cct.models.cct import CCT, CCTSettings
from cct.models.layers import Tokenizer
from cct.typed_reader import read_fields

_CCT_BASE = dict(
    embed_dim=256,
    num_heads=4,
    mlp_ratio=2.0,
    conv_blocks=0,
    conv_block_norm="batch",
    conv_block_act="relu",
    pos_embedding="learnable",
    attn_dropout=0.1,
    drop_path=0.1,
    dropout=0.0,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "cct_2_3x2_32": dict(_CCT_BASE, depth=2, embed_dim=128, num_heads=2, mlp_ratio=1.0,
                         tokenizer_layers=2, tokenizer_kernel=3, img_size=32),
    "cct_4_3x2_32": dict(_CCT_BASE, depth=4, embed_dim=128, num_heads=2, mlp_ratio=1.0,
                         tokenizer_layers=2, tokenizer_kernel=3, img_size=32),
    "cct_6_3x1_32": dict(_CCT_BASE, depth=6, tokenizer_layers=1, tokenizer_kernel=3, img_size=32),
    "cct_6_3x2_32": dict(_CCT_BASE, depth=6, tokenizer_layers=2, tokenizer_kernel=3, img_size=32),
    "cct_7_3x1_32": dict(_CCT_BASE, depth=7, tokenizer_layers=1, tokenizer_kernel=3, img_size=32),
    "cct_7_3x2_32": dict(_CCT_BASE, depth=7, tokenizer_layers=2, tokenizer_kernel=3, img_size=32),
    "cct_7_7x2_224": dict(_CCT_BASE, depth=7, tokenizer_layers=2, tokenizer_kernel=7, img_size=224),
    "cct_14_7x2_224": dict(_CCT_BASE, depth=14, embed_dim=384, num_heads=6, mlp_ratio=3.0,
                           tokenizer_layers=2, tokenizer_kernel=7, img_size=224),
}  # fmt: skip

# What an override may set: ModelConfig's fields, less the variant name.
OVERRIDABLE = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "variant"]


# The choice fields of a model, with their valid values: read off CCTSettings' Literal types.
CHOICES = {
    name: typing.get_args(hint)
    for name, hint in typing.get_type_hints(CCTSettings).items()
    if typing.get_origin(hint) is typing.Literal
}


def variant_names() -> list[str]:
    return sorted(VARIANTS)


def resolve_settings(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    img_size: int | None = None,
    **overrides: Any,
) -> CCTSettings:
    """Variant defaults + overrides -> concrete settings. Raises ConfigError naming the value."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown model variant {name!r} (known: {', '.join(variant_names())})")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(
            f"unknown model override(s) {', '.join(unknown)} (valid: {', '.join(OVERRIDABLE)})"
        )
    s = {k: v for k, v in VARIANTS[name].items()}
    s.update({k: v for k, v in overrides.items() if v is not None})
    s["img_size"] = s["img_size"] if img_size is None else img_size
    head_dim = s.pop("head_dim", None)
    attn_dim = s.pop("attn_dim", None)
    errors = _check(s, overrides, num_classes, in_channels)
    if errors:
        raise ConfigError("; ".join(errors))
    # Attention width: an explicit head_dim wins; else attn_dim / heads; else embed_dim / heads.
    if head_dim is None:
        head_dim = (attn_dim or s["embed_dim"]) // s["num_heads"]
    settings = CCTSettings(num_classes=num_classes, in_channels=in_channels, head_dim=head_dim, **s)
    _check_grid(name, settings)
    return settings


def _check(
    s: dict[str, Any],
    overrides: dict[str, Any],
    num_classes: int,
    in_channels: int,
) -> list[str]:
    # Types, ranges and choices of the overrides: ModelConfig's fields state them (the
    # variants' own values are known good). Then what no single field can say.
    _, problems = read_fields(ModelConfig, overrides)
    errors = [str(p.under("model")) for p in problems]
    if num_classes < 2:
        errors.append(f"num_classes must be at least 2, got {num_classes}")
    if in_channels < 1:
        errors.append(f"in_channels must be positive, got {in_channels}")
    if not problems and s["conv_blocks"] > s["depth"]:
        errors.append(
            f"model.conv_blocks={s['conv_blocks']!r} must be between 0 and model.depth={s['depth']}"
        )
    head_dim, attn_dim = overrides.get("head_dim"), overrides.get("attn_dim")
    if errors or head_dim is not None:
        return errors
    width, what = (
        (attn_dim, "model.attn_dim")
        if attn_dim is not None
        else (s["embed_dim"], "model.embed_dim")
    )
    if width % s["num_heads"]:
        errors.append(
            f"{what}={width} is not divisible by model.num_heads={s['num_heads']}"
            " (set model.head_dim to decouple the attention width)"
        )
    return errors


def _check_grid(name: str, s: CCTSettings) -> None:

    grid = Tokenizer(
        in_channels=1, embed_dim=1, layers=s.tokenizer_layers, kernel=s.tokenizer_kernel
    ).grid_size(s.img_size)
    if grid < 1:
        raise ConfigError(
            f"image size {s.img_size} is too small for {name}'s tokenizer "
            f"({s.tokenizer_layers} layer(s) of kernel {s.tokenizer_kernel}): no token is left"
        )


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    img_size: int | None = None,
    **overrides: Any,
) -> CCT:
    """Build a named variant; see `resolve_settings` for the overrides."""
    return CCT(
        resolve_settings(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            img_size=img_size,
            **overrides,
        )
    )
