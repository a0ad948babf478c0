"""State dicts in the layout of the CCT authors' code (SHI-Labs/Compact-Transformers), read
into our CCT, so a released model (e.g. CCT-7/3x1 on CIFAR-100, 80.92 %) can be analysed.

Their keys map to ours by renaming alone (the layers compute the same thing; with weights
copied so, our cct_7_3x1_32, cct_7_3x2_32, cct_2_3x2_32 and cct_6_3x1_32 give their logits
to 3e-7):

    tokenizer.conv_layers.<i>.0.weight   -> tokenizer.stages.<i>.0.weight
    classifier.positional_emb            -> pos_embed
    classifier.attention_pool.*          -> pool_score.*
    classifier.blocks.<i>.self_attn.*    -> blocks.<i>.attn.*
    classifier.blocks.<i>.linear1/2.*    -> blocks.<i>.mlp.fc1/2.*
    classifier.blocks.<i>.pre_norm/norm1 -> blocks.<i>.pre_norm/norm1
    classifier.norm.*                    -> norm.*
    classifier.fc.*                      -> head.*

Their `_sine` variants in fact build a *learnable* positional embedding (their `_cct` does
not pass `positional_embedding` on) and, on loading, replace the checkpoint's embedding with
the fresh model's random one. Here the checkpoint's own `classifier.positional_emb` is used:
as our fixed sine table when its values are that table, else as a learnable embedding; the
result says which.

The variant (which fixes the head count: no tensor shape shows it) and the number of classes
can be given; otherwise they are read off the shapes: depth, width, MLP ratio, tokenizer
layers and kernel, classes and input channels, with the head count from the one variant of
the registry that matches. Torch only; `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cct.config import ConfigError
from cct.models.cct import CCT
from cct.models.layers import Tokenizer, sine_embedding
from cct.models.registry import VARIANTS, create_model

# (their prefix, our prefix), applied to the start of a key, then the block-internal names
PREFIXES = (
    ("tokenizer.conv_layers.", "tokenizer.stages."),
    ("classifier.positional_emb", "pos_embed"),
    ("classifier.attention_pool.", "pool_score."),
    ("classifier.blocks.", "blocks."),
    ("classifier.norm.", "norm."),
    ("classifier.fc.", "head."),
)
BLOCK_PARTS = ((".self_attn.", ".attn."), (".linear1.", ".mlp.fc1."), (".linear2.", ".mlp.fc2."))
SINE_ATOL = 1e-5  # the checkpoint's embedding counts as the sine table within this


class AuthorsCheckpointError(ValueError):
    """Not a state dict in the authors' layout, or one our model cannot hold; names the key."""


@dataclass(frozen=True)
class AuthorsModel:
    model: CCT  # in eval mode
    variant: str
    num_classes: int
    pos_embedding: str  # "sine" (the checkpoint's values are our table), "learnable", "none"
    inferred: tuple[str, ...]  # what was read off the shapes rather than given

    def describe(self) -> str:
        pe = {
            "sine": "the checkpoint's positional embedding is the fixed sine table",
            "learnable": "the checkpoint's own positional embedding, loaded as learnable",
            "none": "no positional embedding",
        }[self.pos_embedding]
        how = f" (inferred from the shapes: {', '.join(self.inferred)})" if self.inferred else ""
        return f"CCT authors' checkpoint as {self.variant}, {self.num_classes} classes{how}; {pe}"


def to_ours(key: str) -> str:
    """One key of their layout in ours; AuthorsCheckpointError when it has no counterpart."""
    for theirs, ours in PREFIXES:
        if key.startswith(theirs):
            key = ours + key[len(theirs) :]
            break
    else:
        raise AuthorsCheckpointError(f"key {key!r} is not in the CCT authors' layout")
    if key.startswith("blocks."):
        for theirs, ours in BLOCK_PARTS:
            key = key.replace(theirs, ours)
    return key


def to_theirs(key: str) -> str:
    """The inverse of `to_ours` (used to write their layout, e.g. in tests)."""
    if key.startswith("blocks."):
        for theirs, ours in BLOCK_PARTS:
            key = key.replace(ours, theirs)
    for theirs, ours in PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise AuthorsCheckpointError(f"key {key!r} has no counterpart in the CCT authors' layout")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, or under "state_dict"/"model"; DDP's "module." off."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise AuthorsCheckpointError(f"{path}: not a readable torch file ({e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AuthorsCheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_shapes(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Depth, width, MLP ratio, tokenizer layers/kernel, channels, classes, token count."""
    try:
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"classifier\.blocks\.(\d+)\.", k))}
        convs = {
            int(m.group(1)) for k in sd if (m := re.match(r"tokenizer\.conv_layers\.(\d+)\.", k))
        }
        first = sd["tokenizer.conv_layers.0.0.weight"]  # (out, in, k, k)
        d = int(sd["classifier.norm.weight"].shape[0])
        return {
            "depth": max(blocks) + 1,
            "embed_dim": d,
            "mlp_ratio": sd["classifier.blocks.0.linear1.weight"].shape[0] / d,
            "tokenizer_layers": max(convs) + 1,
            "tokenizer_kernel": int(first.shape[-1]),
            "in_channels": int(first.shape[1]),
            "num_classes": int(sd["classifier.fc.weight"].shape[0]),
            "num_tokens": int(sd["classifier.positional_emb"].shape[1])
            if "classifier.positional_emb" in sd
            else None,
        }
    except (KeyError, ValueError, IndexError) as e:
        raise AuthorsCheckpointError(f"not a CCT state dict in the authors' layout ({e})") from None


def match_variant(shapes: dict[str, Any]) -> str:
    """The one registered variant with these shapes (the head count comes with it)."""
    keys = ("depth", "embed_dim", "mlp_ratio", "tokenizer_layers", "tokenizer_kernel")
    found = [n for n, v in VARIANTS.items() if all(v[k] == shapes[k] for k in keys)]
    if len(found) != 1:
        want = ", ".join(f"{k}={shapes[k]:g}" for k in keys)
        raise AuthorsCheckpointError(
            f"no single variant has {want} (matches: {', '.join(found) or 'none'}): give --variant"
        )
    return found[0]


def image_size(variant: str, layers: int, kernel: int, num_tokens: int | None) -> int:
    """The variant's default size when its grid gives `num_tokens`, else the smallest that does."""
    default = int(VARIANTS[variant]["img_size"])
    if num_tokens is None:
        return default
    tok = Tokenizer(in_channels=1, embed_dim=1, layers=layers, kernel=kernel)
    for size in (default, 32, 224, 16, 8, 64, 96, 128, 256, *range(4, 1025)):  # usual ones first
        if tok.grid_size(size) ** 2 == num_tokens:
            return size
    raise AuthorsCheckpointError(f"no image size gives {num_tokens} tokens for {variant}")


def load_authors_checkpoint(
    path: Path, *, variant: str | None = None, num_classes: int | None = None
) -> AuthorsModel:
    """Our CCT holding the weights of a state dict in the authors' layout (see the module
    docstring), on the CPU, in eval mode."""
    sd = read_state_dict(path)
    shapes = infer_shapes(sd)
    inferred = []
    if variant is None:
        variant = match_variant(shapes)
        inferred.append("variant")
    elif variant not in VARIANTS:
        raise AuthorsCheckpointError(f"--variant {variant!r}: known {', '.join(sorted(VARIANTS))}")
    if num_classes is None:
        num_classes = shapes["num_classes"]
        inferred.append("classes")
    elif num_classes != shapes["num_classes"]:
        raise AuthorsCheckpointError(
            f"--num-classes {num_classes}: the checkpoint's classifier.fc has "
            f"{shapes['num_classes']} outputs"
        )
    ours = {to_ours(k): v for k, v in sd.items()}
    pe = _pos_embedding(ours.get("pos_embed"), shapes["embed_dim"])
    s = VARIANTS[variant]
    overrides = {k: shapes[k] for k in ("depth", "embed_dim", "mlp_ratio", "tokenizer_layers",
                                        "tokenizer_kernel") if shapes[k] != s[k]}  # fmt: skip
    try:
        model = create_model(
            variant,
            num_classes=num_classes,
            in_channels=shapes["in_channels"],
            img_size=image_size(variant, shapes["tokenizer_layers"], shapes["tokenizer_kernel"],
                                shapes["num_tokens"]),
            pos_embedding=pe,
            **overrides,
        )  # fmt: skip
    except ConfigError as e:
        raise AuthorsCheckpointError(str(e)) from None
    if pe != "learnable":
        ours.pop("pos_embed", None)  # sine: our buffer holds the same table
    missing, unexpected = model.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise AuthorsCheckpointError(
            f"the checkpoint does not fit {variant}: missing {missing[:5]}, unexpected "
            f"{[to_theirs(k) for k in unexpected[:5]]}"
        )
    return AuthorsModel(model.eval(), variant, num_classes, pe, tuple(inferred))


def init_weights(model: CCT, path: str | Path, *, variant: str) -> str:
    """Load the weights at `path` into `model` (built from the run's config), in place, and
    say where they came from: a folder of ours (its model.pt) or a state dict in the authors'
    layout. ConfigError naming `init_from` when they do not fit the model."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"init_from: {str(path)!r} does not exist")
    try:
        if path.is_dir():
            sd = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
            how = f"our checkpoint {path}"
        else:
            s = model.settings
            theirs = load_authors_checkpoint(path, variant=variant, num_classes=s.num_classes)
            sd, how = theirs.model.state_dict(), theirs.describe()
        model.load_state_dict(sd)
    except (AuthorsCheckpointError, RuntimeError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"init_from: {str(path)!r} does not fit the model: {first}") from None
    return how


def _pos_embedding(table: torch.Tensor | None, dim: int) -> str:
    if table is None:
        return "none"
    sine = sine_embedding(table.shape[1], dim)
    same = table.shape == sine.shape and torch.allclose(table.float(), sine, atol=SINE_ATOL)
    return "sine" if same else "learnable"


def write_authors_layout(model: CCT, path: Path, *, sine_as_parameter: bool = True) -> None:
    """Save our model's weights in the authors' layout. Their sine models keep the table as
    a parameter, `classifier.positional_emb`; ours keep it as a buffer outside the state dict,
    so `sine_as_parameter` writes it in as they do."""
    sd = {to_theirs(k): v for k, v in model.state_dict().items()}
    if model.settings.pos_embedding == "sine" and sine_as_parameter:
        sd["classifier.positional_emb"] = model.pos_embed.detach().clone()
    torch.save(sd, Path(path))
