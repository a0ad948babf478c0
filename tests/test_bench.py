"""`cct.perf.bench`: the JSON it writes and the values in it (no timing assertions: the CPU is
shared), the peak table behind MFU, its bad-input errors, and that what it times (and what
analysis/bench/shp.py times) is the engine's own training step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cct.config import OptimConfig, TrainConfig
from cct.data import load_dataset
from cct.measure import count_macs, count_params
from cct.models import create_model
from cct.perf import bench, workload

TINY = ["--set", "model.embed_dim=32", "--set", "model.tokenizer_layers=1"]
FAST = ["--runs", "3", "--batch-size", "4", "--train-batch-size", "4"]
FAST += ["--train-steps", "2", "--train-warmup", "1", "--device", "cpu"]
NUMBERS = (
    "params macs macs_with_attn latency_ms throughput train_step_ms train_samples_per_s "
    "model_tflops_per_s"
).split()
# In warm-up the learning rate changes every step; the clip norm is far below the gradients'.
SCHEDULED = OptimConfig(lr=1e-3, grad_clip=1e-3)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_writes_json_with_positive_finite_values(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    assert bench.main(["--variant", "cct_2_3x2_32", *TINY, *FAST, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {
        *NUMBERS,
        "variant",
        "device",
        "precision",
        "settings",
        "peak_tflops",
        "mfu",
    } <= r.keys()
    for key in NUMBERS:
        assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, key
    assert r["precision"] == "fp32" and r["mfu"] is None  # no peak known for a CPU
    assert r["overrides"] == {"embed_dim": 32, "tokenizer_layers": 1}

    # Size figures are the deterministic ones from cct.measure, for the same model.
    model = create_model("cct_2_3x2_32", embed_dim=32, tokenizer_layers=1)
    macs = count_macs(model, (3, 32, 32))
    assert r["params"] == count_params(model)
    assert (r["macs"], r["macs_with_attn"]) == (macs.without_attn_matmuls, macs.total)
    assert r["macs_with_attn"] > r["macs"]
    assert r["train_samples_per_s"] == pytest.approx(4 / (r["train_step_ms"] / 1e3))
    assert "training, batch 4" in capsys.readouterr().out


def test_benchmark_function_dataset_shape_and_mfu():
    r = bench.benchmark(
        "cct_2_3x2_32",
        {"embed_dim": 16, "num_heads": 4, "head_dim": 2},
        num_classes=10,
        in_channels=1,
        img_size=8,
        batch_size=2,
        train_batch_size=2,
        runs=2,
        train_steps=1,
        train_warmup=0,
        device="cpu",
        peak_tflops=1.0,  # any peak turns MFU on, so its formula is checked on CPU
    )
    assert r["settings"]["in_channels"] == 1 and r["settings"]["img_size"] == 8
    flops = 3 * 2 * r["macs_with_attn"] * 2
    assert r["mfu"] == pytest.approx(flops / (r["train_step_ms"] / 1e3) / 1e12)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Some Future GPU", None),
    ],
)
def test_peak_table(name, peak):
    assert workload.peak_tflops_for(name) == peak


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--variant", "cct_99"], "cct_99"),
        (["--variant", "cct_2_3x2_32", "--set", "model.num_heads=0"], "got 0"),
        (["--variant", "cct_2_3x2_32", "--set", "optim.lr=1.0e-3"], "optim.lr"),
        (["--variant", "cct_2_3x2_32", "--set", "model.mlp_ratio=5e-1"], "5.0e-1"),
        (["--variant", "cct_2_3x2_32", "--runs", "0"], "--runs"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, args, named):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as e:
        bench.main([*args, "--json", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not out.exists()


def test_timed_step_is_the_engines_train_step(train_steps):
    # A hand-written step would miss the per-step learning rate or the clipping (or both).
    model = create_model("cct_2_3x2_32", img_size=16, embed_dim=16, tokenizer_layers=1)
    bench.time_training(
        model,
        (3, 16, 16),
        num_classes=10,
        augment=workload.RECIPE_AUGMENT,
        batch_size=4,
        steps=3,
        warmup=2,
        bf16=False,
        optim=SCHEDULED,
    )
    trainer = train_steps.check(5, SCHEDULED)  # warm-up steps included
    assert trainer.model is model
    assert trainer.steps_per_epoch == workload.RECIPE_TRAIN_IMAGES // 4


def test_analysis_bench_times_the_engines_train_step(train_steps):
    from analysis.bench.shp import FULL_TRAIN, time_training

    cfg = TrainConfig().replace(
        **{
            "data.dataset": "digits",
            "model.variant": "cct_2_3x2_32",
            "model.embed_dim": 16,
            "model.tokenizer_layers": 1,
            "optim.batch_size": 8,
            "optim.grad_clip": 1e-3,
            "precision": "fp32",
        }
    )
    time_training(cfg, load_dataset(cfg.data), torch.device("cpu"), steps=2, warmup=1)
    trainer = train_steps.check(3, cfg.optim)
    assert trainer.steps_per_epoch == FULL_TRAIN // 8
