"""State dicts in the CCT authors' layout (SHI-Labs/Compact-Transformers): written by renaming
our own model's keys in reverse (plus their sine quirk), read back, same logits; the
variant and class count read off the shapes; bad files are one clear error."""

import pytest
import torch

from cct.models import create_model
from cct.models.authors import (
    AuthorsCheckpointError,
    load_authors_checkpoint,
    to_ours,
    write_authors_layout,
)
from cct.models.layers import sine_embedding

# key names as they appear in the authors' released CCT-7/3x1 state dict
THEIR_KEYS = (
    "tokenizer.conv_layers.0.0.weight",
    "classifier.positional_emb",
    "classifier.attention_pool.weight",
    "classifier.attention_pool.bias",
    "classifier.blocks.0.pre_norm.weight",
    "classifier.blocks.0.self_attn.qkv.weight",
    "classifier.blocks.0.self_attn.proj.bias",
    "classifier.blocks.0.linear1.weight",
    "classifier.blocks.0.norm1.bias",
    "classifier.blocks.6.linear2.weight",
    "classifier.norm.weight",
    "classifier.fc.bias",
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_their_key_names_map_onto_our_model():
    ours = set(create_model("cct_7_3x1_32", num_classes=100).state_dict())
    assert {to_ours(k) for k in THEIR_KEYS} <= ours


@pytest.mark.parametrize(
    "variant", ["cct_7_3x1_32", "cct_7_3x2_32", "cct_2_3x2_32", "cct_6_3x1_32"]
)
def test_their_layout_loads_with_the_same_logits_and_the_shapes_give_the_variant(variant, tmp_path):
    model = create_model(variant, num_classes=100)
    path = tmp_path / "their.pth"
    write_authors_layout(model, path)
    sd = torch.load(path, weights_only=True)
    assert all(k.startswith(("tokenizer.conv_layers.", "classifier.")) for k in sd)
    loaded = load_authors_checkpoint(path)
    assert (loaded.variant, loaded.num_classes, loaded.pos_embedding) == (
        variant,
        100,
        "learnable",
    )
    assert loaded.inferred == ("variant", "classes")
    x = torch.randn(2, 3, 32, 32)
    assert (logits(loaded.model, x) - logits(model, x)).abs().max() < 3e-7


def test_sine_table_is_recognised_and_their_trained_sine_embedding_is_kept(tmp_path):
    model = create_model("cct_2_3x2_32", num_classes=10, pos_embedding="sine")
    path = tmp_path / "sine.pth"
    write_authors_layout(model, path)  # their sine models store the table as a parameter
    loaded = load_authors_checkpoint(path, variant="cct_2_3x2_32", num_classes=10)
    assert loaded.pos_embedding == "sine" and loaded.inferred == ()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(logits(loaded.model, x), logits(model, x), atol=3e-7)
    assert "fixed sine table" in loaded.describe()
    # their `_sine` models actually learn the embedding: trained values are no longer the
    # table, and must be used as they are, not replaced
    sd = torch.load(path, weights_only=True)
    sd["classifier.positional_emb"] = sine_embedding(64, 128) + 0.05 * torch.randn(1, 64, 128)
    torch.save(sd, path)
    learned = load_authors_checkpoint(path)
    assert learned.pos_embedding == "learnable"
    assert torch.equal(learned.model.pos_embed.detach(), sd["classifier.positional_emb"])


def test_bad_checkpoints_are_one_clear_error(tmp_path):
    model = create_model("cct_2_3x2_32", num_classes=10)
    path = tmp_path / "x.pth"
    write_authors_layout(model, path)
    with pytest.raises(AuthorsCheckpointError, match="classifier.fc has 10 outputs"):
        load_authors_checkpoint(path, num_classes=100)
    sd = torch.load(path, weights_only=True)
    torch.save({**sd, "classifier.class_emb": torch.zeros(1, 1, 128)}, path)
    with pytest.raises(AuthorsCheckpointError, match="not in the CCT authors' layout"):
        load_authors_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(AuthorsCheckpointError, match="not a readable torch file"):
        load_authors_checkpoint(tmp_path / "junk.pth")


def test_shp_cli_analyses_an_authors_file_on_test_and_says_so(tmp_path, capsys):
    import json

    from analysis.shp.cli import main

    model = create_model("cct_2_3x2_32", num_classes=10, img_size=16, embed_dim=32,
                         tokenizer_layers=1, depth=2)  # fmt: skip
    path = tmp_path / "their.pth"
    write_authors_layout(model, path)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(path), "--variant", "cct_2_3x2_32", "--dataset", "synthetic",
            "--blocks", "1", "--no-plots", "--andc", "none", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "validation split was in its training data; analysed on test" in printed
    doc = json.loads((out / "summary.json").read_text())
    assert doc["heldout"] == "test" and "analysed on test" in doc["checkpoint"]["note"]
    assert doc["blocks"][0]["unit"] == "head" and doc["blocks"][0]["num_units"] == 2
    with pytest.raises(SystemExit):  # a wrong class count: one line, exit 2
        main([*argv[:4], "--num-classes", "7", "--dataset", "synthetic", "--out", str(out)])
    assert "classifier.fc has 10 outputs" in capsys.readouterr().err


class KeepWeights:
    """Callbacks that keep each epoch's weights and the start info (the folders are temporary)."""

    def __init__(self) -> None:
        self.info, self.epochs, self.weights = None, [], None

    def on_start(self, info):
        self.info = info

    def on_epoch_end(self, metrics, checkpoint):
        self.epochs.append(metrics["epoch"])
        if checkpoint is not None:
            self.weights = torch.load(checkpoint / "model.pt", weights_only=True)

    def on_end(self, result, artifacts):
        pass


def test_training_starts_from_an_authors_checkpoint_at_epoch_one(tmp_path):
    from cct.config import ConfigError, TrainConfig
    from cct.data import load_dataset
    from cct.engine import build_model, fit

    cfg = TrainConfig().replace(
        **{
            "data.dataset": "digits",
            "model.variant": "cct_2_3x2_32",
            "model.tokenizer_layers": 1,
            "model.embed_dim": 32,
            "optim.epochs": 2,
            "optim.lr": 0.0,  # frozen: the weights trained are the weights loaded
            "optim.min_lr": 0.0,
            "optim.warmup_lr": 0.0,
            "device": "cpu",
            "precision": "fp32",
            "latency_runs": 1,
        }
    )
    torch.manual_seed(123)  # weights no fresh model of the run would draw
    theirs = build_model(cfg, load_dataset(cfg.data))
    write_authors_layout(theirs, tmp_path / "theirs.pth")
    keep = KeepWeights()
    fit(cfg.replace(init_from=str(tmp_path / "theirs.pth")), callbacks=keep)
    assert keep.epochs == [1, 2] and keep.info["first_epoch"] == 1
    assert "CCT authors' checkpoint as cct_2_3x2_32" in keep.info["init_from"]
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(keep.weights[k], v, rtol=0, atol=0)
    # Weights of another shape, or no file: one error naming init_from.
    wide = cfg.replace(**{"model.embed_dim": 64, "init_from": str(tmp_path / "theirs.pth")})
    with pytest.raises(ConfigError, match="init_from: .* does not fit the model"):
        fit(wide, callbacks=KeepWeights())
    with pytest.raises(ConfigError, match="init_from: .* does not exist"):
        fit(cfg.replace(init_from=str(tmp_path / "none.pth")), callbacks=KeepWeights())
