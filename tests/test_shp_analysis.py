"""The SHP pipeline end to end: planted features with a known answer, and small real CCTs
(fields add up to the readout's own logits, heads vs nodes, conv filters, block choice)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import cct
from analysis.shp.features import AnalysisError, BlockUnits
from analysis.shp.pipeline import ShpOptions, analyze_features, analyze_model
from analysis.shp.readout import FaithfulRecipe
from cct.config import DataConfig
from cct.data import AugmentSpec, DeviceData, load_dataset, normalize

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------
# planted: 9 labels on a 3x3 grid; heads 0-2 carry a row, heads 3-5 a column, head 6 nothing.
# Label (r, c) switches on heads r and 3 + c only, so head h's features are non-zero only for
# images of its label subset S_h; by the grid's symmetry the readout's weights are positive
# for S_h and negative elsewhere, so head h must show exactly the square cluster S_h.

K, H, DH, N_TOK = 9, 7, 2, 4
SETS = (
    [[3 * r, 3 * r + 1, 3 * r + 2] for r in range(3)] + [[c, 3 + c, 6 + c] for c in range(3)] + [[]]
)


def planted_sets() -> np.ndarray:
    s = np.zeros((H, K), dtype=bool)
    for h, labels in enumerate(SETS):
        s[h, labels] = True
    return s


def planted_problem(per_label_train=20, per_label_val=10, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.5, 1.5, size=(H, DH))
    on = planted_sets().T  # (K, H)

    def draw(per_label):
        y = np.repeat(np.arange(K), per_label)
        noise = 1 + 0.1 * rng.normal(size=(len(y), N_TOK, H, DH))
        tok = v[None, None] * noise * on[y][:, None, :, None]  # (n, N, H, dh)
        return y, tok.reshape(len(y), N_TOK, H * DH)

    ty, ttok = draw(per_label_train)
    vy, vtok = draw(per_label_val)
    table = torch.tensor(np.concatenate([ttok, vtok]), dtype=torch.float32)

    def images(offset, n):  # each "image" encodes its row in `table` in two bytes
        idx = np.arange(offset, offset + n)
        return torch.tensor(np.stack([idx // 256, idx % 256], 1), dtype=torch.uint8).view(
            n, 1, 1, 2
        )

    def extract(x):  # mean 0, std 1/255: normalize() hands back the raw byte values
        idx = x[:, 0, 0, 0].round().long() * 256 + x[:, 0, 0, 1].round().long()
        return {0: table[idx]}

    t = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    data = DeviceData(
        name="planted",
        train_x=images(0, len(ty)),
        train_y=t(ty),
        train_ids=t(np.arange(len(ty))),
        val_x=images(len(ty), len(vy)),
        val_y=t(vy),
        val_ids=t(np.arange(len(vy))),
        test_x=images(len(ty), len(vy)),
        test_y=t(vy),
        test_ids=t(np.arange(len(vy))),
        num_classes=K,
        in_channels=1,
        img_size=2,
        mean=(0.0,),
        std=(1 / 255,),
        augment=AugmentSpec(0, False, 0.0, 0.0, 0.0, 0.0),
        split_hash="planted",
    )
    return extract, data


@pytest.mark.parametrize(
    ("pooling", "fit", "andc"),
    [
        ("mean", "fast", "diagonal"),
        ("mean", "fast", "clusters"),
        ("seqpool", "fast", "diagonal"),
        ("mean", "faithful", "diagonal"),
    ],
)
def test_planted_heads_yield_exactly_their_clusters_with_zero_noise(tmp_path, pooling, fit, andc):
    extract, data = planted_problem()
    layout = BlockUnits(0, "transformer", "head", H * DH, DH)
    opts = ShpOptions(
        pooling=pooling, fit=fit, andc=andc, plots=False, faithful=FaithfulRecipe(epochs=60)
    )
    summary = analyze_features(extract, [layout], data, out_dir=tmp_path, options=opts)
    (b,) = summary["blocks"]
    z = np.load(tmp_path / "block_0.npz")
    sets = planted_sets()

    assert b["readout_accuracy"] == 1.0
    for h in range(H):
        np.testing.assert_array_equal(z["binary"][h], np.outer(sets[h], sets[h]).astype(np.uint8))
        want = np.where(sets[h], 0, -1)  # one cluster (number 0) holding exactly S_h
        np.testing.assert_array_equal(z["clusters"][h], want)
    assert b["units_with_cluster"] == 6 and b["clusters_per_clustered_unit"] == 1.0
    assert b["mean_cluster_size"] == 3.0 and b["mean_labels_in_clusters"] == 3.0
    assert b["mean_noise"] == 0.0 and b["noise_free"] is True
    assert b["snr_labels"] is None and b["snr_area"] is None
    assert b["label_sets"] == SETS
    assert b["coverage"] == 1.0 and b["heads_per_label"] == [2] * K
    assert b["pairwise_overlap_max"] == 1  # a row and a column share one label

    # ANDC prunes exactly the planted off-diagonal weights: W[j, n] survives iff j in S_head(n)
    want_mask = np.repeat(sets.T, DH, axis=1)  # (K, H*dh)
    np.testing.assert_array_equal(z["andc_mask"], want_mask)
    assert b["andc"]["pruned_fraction"] == pytest.approx(1 - want_mask.mean())
    assert b["andc"]["accuracy_after"] == 1.0
    assert (z["andc_weight"][~want_mask] == 0).all()
    # and the summary on disk is strict JSON with the nulls
    text = (tmp_path / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["blocks"][0]["snr_labels"] is None


# --------------------------------------------------------------------------------------
# small real models


@pytest.fixture(scope="module")
def synthetic():
    cfg = DataConfig(
        dataset="synthetic",
        synthetic_train=300,
        synthetic_test=60,
        synthetic_classes=5,
        synthetic_size=8,
    )
    return load_dataset(cfg)


def small_model(data, **overrides):
    torch.manual_seed(0)
    kw = dict(
        embed_dim=16,
        num_heads=4,
        depth=3,
        conv_blocks=1,
        tokenizer_layers=1,
        conv_block_norm="group",
    )
    kw.update(overrides)
    return cct.create_model(
        "cct_2_3x2_32", num_classes=data.num_classes, in_channels=3, img_size=8, **kw
    ).eval()


FAST = ShpOptions(plots=False, andc_iters=10)


@pytest.mark.parametrize("pooling", ["mean", "seqpool"])
def test_per_unit_fields_add_up_to_the_readout_logits(tmp_path, synthetic, pooling):
    model = small_model(synthetic)
    summary = analyze_model(
        model,
        synthetic,
        blocks="all",
        out_dir=tmp_path,
        options=dataclasses.replace(FAST, pooling=pooling),
    )
    assert [b["kind"] for b in summary["blocks"]] == ["conv", "transformer", "transformer"]
    for b in summary["blocks"]:
        z = np.load(tmp_path / f"block_{b['block']}.npz")
        assert z["fields"].shape == (b["num_units"], 5, 5)
        np.testing.assert_allclose(z["fields"].sum(0), z["logits"], rtol=1e-4, atol=1e-5)
        assert b["fields_check_max_abs_error"] < 1e-5
        if pooling != "mean":
            continue
        # independently: the frozen model's tokens, mean-pooled, through the saved readout
        taps = model.internals(normalize(synthetic.val_x, synthetic.mean, synthetic.std))
        tap = taps[b["block"]]
        tokens = (
            tap["features"].flatten(2).transpose(1, 2)
            if b["kind"] == "conv"
            else tap["heads"].flatten(2)
        )
        logits = tokens.mean(1) @ torch.from_numpy(z["readout_weight"]).t()
        y = synthetic.val_y
        mean_logits = torch.stack([logits[y == i].mean(0) for i in range(5)])
        np.testing.assert_allclose(z["logits"], mean_logits.numpy(), rtol=1e-4, atol=1e-5)
        assert b["readout_accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_the_analysis_shows_its_progress_block_by_block(tmp_path, synthetic, monkeypatch, capsys):
    monkeypatch.setenv("CCT_PROGRESS", "1")  # stderr is no terminal here
    analyze_model(small_model(synthetic), synthetic, blocks=[1, 2], out_dir=tmp_path, options=FAST)
    err = capsys.readouterr().err
    # two passes (training features and readouts, held-out), then each block
    assert "SHP analysis:" in err and "/4 [" in err and "held-out pass" in err, err
    assert "3/4" in err and "block 2" in err, err


def test_seqpool_streams_token_features_when_they_do_not_fit(tmp_path, synthetic):
    model = small_model(synthetic)
    seqpool = dataclasses.replace(FAST, pooling="seqpool", fit="fast")
    cached = analyze_model(model, synthetic, blocks=[1, 2], out_dir=tmp_path / "a", options=seqpool)
    streamed = analyze_model(
        model,
        synthetic,
        blocks=[1, 2],
        out_dir=tmp_path / "b",
        options=dataclasses.replace(seqpool, token_cache_bytes=0),
    )
    assert cached["seqpool_tokens"] == "cached" and streamed["seqpool_tokens"] == "streamed"
    for a, b in zip(cached["blocks"], streamed["blocks"]):  # same batches, same order: close
        assert a["readout_accuracy"] == pytest.approx(b["readout_accuracy"], abs=0.05)


def test_units_nodes_and_heads_agree_when_a_head_has_one_node(tmp_path, synthetic):
    model = small_model(synthetic, head_dim=1, num_heads=6)
    heads, nodes = (
        analyze_model(
            model,
            synthetic,
            blocks=[1, 2],
            out_dir=tmp_path / units[0],
            options=dataclasses.replace(FAST, units=units),
        )
        for units in ("heads", "nodes")
    )
    for bh, bn in zip(heads["blocks"], nodes["blocks"]):
        assert (bh["unit"], bn["unit"]) == ("head", "node")
        assert bh["num_units"] == bn["num_units"] == 6
        for b in (bh, bn):  # timings and the unit's name may differ; nothing else
            del b["unit"], b["seconds"], b["andc"]["seconds"]
        assert bh == bn
        zh, zn = (np.load(tmp_path / d / f"block_{bh['block']}.npz") for d in ("h", "n"))
        for key in ("fields", "logits", "binary", "clusters", "andc_mask"):
            np.testing.assert_array_equal(zh[key], zn[key])


def test_conv_blocks_are_analysed_per_filter_and_ff_units_are_nodes(tmp_path, synthetic):
    model = small_model(synthetic)
    ff = dataclasses.replace(FAST, units="ff")
    s = analyze_model(model, synthetic, blocks=[0, 2], out_dir=tmp_path, options=ff)
    conv, tr = s["blocks"]
    assert (conv["kind"], conv["unit"], conv["num_units"], conv["unit_size"]) == (
        "conv",
        "filter",
        16,
        1,
    )
    assert (tr["kind"], tr["unit"], tr["num_units"]) == ("transformer", "ff-node", 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "block_0.npz",
        "block_2.npz",
        "summary.json",
    ]


def test_block_choice_none_and_out_of_range(tmp_path, synthetic):
    model = small_model(synthetic)
    s = analyze_model(model, synthetic, blocks="none", out_dir=tmp_path, options=FAST)
    assert s["blocks"] == [] and json.loads((tmp_path / "summary.json").read_text())["blocks"] == []
    with pytest.raises(AnalysisError, match="3 blocks"):
        analyze_model(model, synthetic, blocks=[3], out_dir=tmp_path, options=FAST)
    with pytest.raises(AnalysisError, match="units"):
        bad = dataclasses.replace(FAST, units="filters")
        analyze_model(model, synthetic, out_dir=tmp_path, options=bad)
    assert model.training is False
