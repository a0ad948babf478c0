"""The untrained SNR reference (issue 29 item 10): the trial's architecture with its initial
weights, analysed by the same pipeline and logged apart from `shp/`; off by default in the
sweep file, and a sweep without it keeps its hash."""

import json
from pathlib import Path

import pytest
import torch

from analysis.shp.options import ShpOptions
from analysis.shp.reference import REFERENCE, analyse_reference, run_reference, untrained_model
from cct.checkpoint import save_checkpoint
from cct.config import TrainConfig
from cct.data import load_dataset
from cct.models import create_model
from search_spaces.spec import AnalysisSpec, _analysis_part

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = TrainConfig.from_dict(
        {
            "seed": 3,
            "model": {"variant": "cct_2_3x2_32", "tokenizer_layers": 1, "embed_dim": 16,
                      "num_heads": 2, "depth": 2},
            "data": {"dataset": "synthetic", "synthetic_train": 200, "synthetic_test": 60,
                     "synthetic_size": 8, "val_size": 60},
        }
    )  # fmt: skip
    data = load_dataset(cfg.data, torch.device("cpu"))
    torch.manual_seed(cfg.seed)  # as cct.engine.fit does, then its build_model
    model = create_model("cct_2_3x2_32", num_classes=data.num_classes, in_channels=data.in_channels,
                         img_size=data.img_size, embed_dim=16, tokenizer_layers=1, num_heads=2,
                         depth=2)  # fmt: skip
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # "training": every weight moves
        for p in model.parameters():
            p.add_(1.0)
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint", model=model, cfg=cfg,
                           epoch=1, metrics={})  # fmt: skip
    return path, data, initial


def test_the_untrained_model_has_the_trials_initial_weights(tiny):
    path, data, initial = tiny
    state = untrained_model(path, data).state_dict()
    assert all(torch.equal(state[k], initial[k]) for k in initial)


def test_the_reference_is_the_same_analysis_and_is_off_unless_asked(tiny, tmp_path):
    path, data, _ = tiny
    summary = analyse_reference(
        path, out_dir=tmp_path, data=data, blocks="all", options=ShpOptions(units="heads")
    )
    assert summary["reference"] == REFERENCE and len(summary["blocks"]) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["blocks"]
    assert all("unit_noise" in b and "label_sets" in b for b in summary["blocks"])
    calls = []

    class Tracker:  # no run_id: analysed, not logged
        pass

    run_reference(Tracker(), path, {"blocks": "all", "reference": False}, data)
    assert not calls  # off: nothing analysed (and no error about the extra key)
    assert not Path(tmp_path / "missing").exists()


def test_the_sweep_option_keeps_old_hashes():
    assert "reference" not in _analysis_part(AnalysisSpec())
    assert _analysis_part(AnalysisSpec(reference=True))["reference"] is True
