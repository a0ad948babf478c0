"""The model family: every registered variant, golden sizes, the fast attention path
against the written-out reference, internals, and the errors for impossible shapes."""

import re

import pytest
import torch

import cct
from cct.measure import count_macs, count_params
from cct.models import create_model
from cct.models.layers import reference_attention
from cct.models.registry import CHOICES

GOLDEN_PARAMS = {
    ("cct_7_3x1_32", 10): 3_760_139,
    ("cct_7_3x2_32", 10): 3_853_259,
    ("cct_7_3x1_32", 100): 3_783_269,
    ("cct_7_3x2_32", 100): 3_876_389,
}


@pytest.mark.parametrize("name", cct.variant_names())
def test_every_variant_trains_one_step(name):
    torch.manual_seed(0)
    small = 64 if name.endswith("_224") else None  # keep the 224 px variants cheap on CPU
    model = cct.create_model(name, num_classes=7, img_size=small)
    size = model.settings.img_size
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("name", "classes"), list(GOLDEN_PARAMS))
def test_golden_parameter_counts(name, classes):
    assert (
        count_params(cct.create_model(name, num_classes=classes)) == GOLDEN_PARAMS[(name, classes)]
    )


def test_golden_macs_of_cct_7_3x1_32():
    macs = count_macs(cct.create_model("cct_7_3x1_32"), (3, 32, 32))
    assert round(macs.without_attn_matmuls / 1e9, 3) == 0.947
    assert round(macs.total / 1e9, 2) == 1.18
    # 7 blocks x (QK^T + AV) over 256 tokens of width 256
    assert macs.attn_matmuls == 7 * 2 * 256 * 256 * 256


@pytest.mark.parametrize(("heads", "head_dim"), [(4, 64), (25, 4), (32, 8), (3, 5)])
def test_fused_attention_matches_reference(heads, head_dim):
    torch.manual_seed(0)
    model = cct.create_model("cct_2_3x2_32", num_heads=heads, head_dim=head_dim).eval()
    x = torch.randn(3, 3, 32, 32)
    fused = model(x)
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = False
    torch.testing.assert_close(model(x), fused, rtol=1e-4, atol=1e-5)
    q, k, v = torch.randn(3, 2, heads, 16, head_dim).unbind(0)
    torch.testing.assert_close(
        torch.nn.functional.scaled_dot_product_attention(q, k, v), reference_attention(q, k, v)
    )


def test_attention_width_is_independent_of_embed_dim():
    m = cct.create_model("cct_7_3x1_32", num_heads=25, head_dim=4)
    attn = m.blocks[0].attn
    assert attn.qkv.weight.shape == (3 * 25 * 4, 256)
    assert attn.proj.weight.shape == (256, 100)
    fixed = cct.resolve_settings("cct_7_3x1_32", num_heads=16, attn_dim=128)
    assert (fixed.num_heads, fixed.head_dim, fixed.embed_dim) == (16, 8, 256)
    default = cct.resolve_settings("cct_7_3x1_32", num_heads=8)
    assert default.head_dim == 32


def test_overrides_are_independent():
    base = cct.resolve_settings("cct_7_3x1_32")
    for key, value in [
        ("embed_dim", 128),
        ("depth", 5),
        ("mlp_ratio", 3.0),
        ("conv_blocks", 2),
        ("tokenizer_layers", 2),
        ("tokenizer_kernel", 5),
        ("pos_embedding", "sine"),
    ]:
        s = cct.resolve_settings("cct_7_3x1_32", **{key: value})
        changed = {f for f in base.__dataclass_fields__ if getattr(s, f) != getattr(base, f)}
        # embed_dim also moves the derived head width; nothing else moves with any knob
        assert changed <= {key, "head_dim"} and key in changed, (key, changed)


def test_conv_blocks_replace_the_first_blocks_at_the_same_depth():
    m = cct.create_model("cct_7_3x1_32", conv_blocks=3, conv_block_norm="group")
    assert m.block_kinds == ["conv"] * 3 + ["transformer"] * 4
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_positional_embedding_follows_the_real_input():
    m = cct.create_model("cct_7_3x1_32", in_channels=1, img_size=8)
    assert m.pos_embed.shape == (1, 16, 256)  # 8x8 -> 4x4 tokens
    assert cct.create_model("cct_7_3x1_32", pos_embedding="none").pos_embed is None


def test_internals_come_from_the_training_forward():
    torch.manual_seed(0)
    m = cct.create_model("cct_4_3x2_32", num_heads=8, head_dim=4, conv_blocks=1).eval()
    x = torch.randn(2, 3, 32, 32)
    taps = m.internals(x)
    assert set(taps[0]) == {"features", "out"} and taps[0]["features"].shape == (2, 128, 8, 8)
    assert taps[1]["heads"].shape == (2, 64, 8, 4)
    assert taps[1]["ff"].shape == (2, 64, 128)
    # the last block's output, pooled and classified, is the model's forward
    torch.testing.assert_close(m.head(m.pool(taps[-1]["out"])), m(x))
    # the per-head outputs are exactly what the output projection consumes
    blk = m.blocks[1]
    heads = taps[1]["heads"]
    x1 = taps[0]["out"].flatten(2).transpose(1, 2)
    attn_out = blk.attn.proj(heads.reshape(2, 64, -1))
    torch.testing.assert_close(attn_out, blk.attn(blk.pre_norm(x1)))
    assert len(m.internals(x, upto=1)) == 2  # later blocks are not run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": 0}, "model.num_heads: must be at least 1, got 0"),
        ({"head_dim": -4}, "model.head_dim: must be at least 1, got -4"),
        ({"dropout": 1.0}, "model.dropout: must be in [0, 1), got 1.0"),
        ({"num_heads": True}, "model.num_heads: expected an integer, got True"),
        ({"conv_blocks": 8}, "model.conv_blocks=8 must be between 0 and model.depth=7"),
        ({"num_heads": 5}, "model.embed_dim=256 is not divisible by model.num_heads=5"),
        ({"img_size": 0}, "image size 0 is too small for cct_7_3x1_32"),
    ],
)
def test_impossible_shapes_are_named(overrides, message):
    with pytest.raises(cct.ConfigError, match=re.escape(message)):
        cct.create_model("cct_7_3x1_32", **overrides)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(cct.ConfigError, match="unknown model variant 'cct_9'.*cct_7_3x1_32"):
        cct.create_model("cct_9")


# The model factory refuses what it cannot build: every choice field, one bad value each,
# and every valid value of it builds.
FACTORY_CASES = [(key, "bogus", False) for key in CHOICES] + [
    (key, value, True) for key, values in CHOICES.items() for value in values
]


@pytest.mark.parametrize(("key", "value", "valid"), FACTORY_CASES, ids=str)
def test_factory_refuses_an_unknown_choice_and_builds_every_known_one(key, value, valid):
    kwargs = dict(num_classes=10, in_channels=3, img_size=16, embed_dim=16, depth=2,
                  num_heads=2, conv_blocks=1, **{key: value})  # fmt: skip
    if valid:
        model = create_model("cct_2_3x2_32", **kwargs)
        assert getattr(model.settings, key) == value
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
        return
    with pytest.raises(ValueError) as e:
        create_model("cct_2_3x2_32", **kwargs)
    message = str(e.value)
    assert f"model.{key}: invalid value 'bogus'" in message
    assert all(choice in message for choice in CHOICES[key]), message


def test_choice_fields_are_the_typed_ones():
    assert set(CHOICES) == {"pos_embedding", "conv_block_norm", "conv_block_act"}
