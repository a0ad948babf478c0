"""The performance suite's contracts (no timing is asserted: the CPU is shared): the reference
model is our model written the usual way (same size, same outputs), the padded-head-dim
attention equals the unpadded one, the reference input pipeline yields what ours does, our
timed step is the engine's training step, the report merges rows from several commands, and
`python -m cct.perf --quick` writes every row."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cct.config import OptimConfig
from cct.data.augment import AugmentSpec
from cct.data.sources import CIFAR10_MEAN, CIFAR10_STD
from cct.measure import count_params
from cct.models import create_model
from cct.models.layers import Attention, fused_attention
from cct.perf.reference.data import Mixup, make_loader
from cct.perf.reference.model import ExplicitAttention, reference_model
from cct.perf.report import make_row, merge_rows, render_markdown, run_info
from cct.perf.suite import rows as suite
from cct.perf.suite.cases import CASES, NUM_CLASSES, our_training_step, random_data
from cct.perf.suite.steps import ours_step
from cct.perf.workload import RECIPE_AUGMENT, RECIPE_TRAIN_IMAGES
from orchestrator.bench.overhead import overhead_row, trial_overheads
from orchestrator.phase_marks import Marks, gaps

GOLDEN = {"cct_7_3x1_32": 3_760_139, "cct_7_3x2_32": 3_853_259}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.key)
def test_reference_model_is_ours_written_out(case):
    torch.manual_seed(0)
    ref, ours = reference_model(case.variant, **case.overrides)  # asserts equal sizes
    assert count_params(ref) == count_params(ours)
    if not case.overrides:
        assert count_params(ref) == GOLDEN[case.variant]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ref.eval()(x), ours.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("heads", "head_dim"), [(4, 64), (32, 8), (25, 4)])
def test_explicit_attention_equals_sdpa(heads, head_dim):
    torch.manual_seed(0)
    ours = Attention(dim=32, num_heads=heads, head_dim=head_dim, attn_dropout=0.1).eval()
    ref = ExplicitAttention(32, heads, head_dim, 0.1).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 17, 32)
    torch.testing.assert_close(ref(x), ours(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("head_dim", "pad_to"), [(4, 8), (5, 8), (8, 16), (12, 16)])
def test_padded_head_dim_equals_unpadded(head_dim, pad_to):
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3, 3, head_dim, requires_grad=True)  # (B, N, 3, H, dh)
    plain = fused_attention(qkv, dropout_p=0.0)
    grad_plain = torch.autograd.grad(plain.square().sum(), qkv)[0]
    padded = fused_attention(qkv, dropout_p=0.0, pad_to=pad_to)
    grad_padded = torch.autograd.grad(padded.square().sum(), qkv)[0]
    assert padded.shape == plain.shape == (2, 3, 9, head_dim)
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_padded, grad_plain, rtol=1e-5, atol=1e-6)


def test_padding_flag_forces_the_padded_path_in_a_model():
    torch.manual_seed(0)
    model = create_model("cct_2_3x2_32", num_heads=25, head_dim=4, attn_dropout=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for pad in (0, 16):
        for m in model.modules():
            if isinstance(m, Attention):
                m.pad_head_dim = pad
        torch.manual_seed(1)  # the same drop-path draws both times
        out = model(x)
        grads = torch.autograd.grad(
            out.sum(), [m.qkv.weight for m in model.modules() if isinstance(m, Attention)]
        )
        outs.append((out, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _images(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reference_loader_batches(num_workers):
    images, labels = _images()
    plain = AugmentSpec(4, True, 0.0, 0.0, 0.0, 0.0)  # crop + flip only: values stay in range
    loader = make_loader(
        images,
        labels,
        spec=plain,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        batch_size=16,
        num_workers=num_workers,
        pin_memory=False,
    )
    batches = list(loader)
    assert len(batches) == 4
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    raw = x * std + mean  # back to [0, 1]
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_reference_mixup_targets_are_distributions():
    images, labels = _images(32)
    loader = make_loader(
        images,
        labels,
        spec=RECIPE_AUGMENT,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        batch_size=32,
        num_workers=0,
        pin_memory=False,
    )
    x, y = next(iter(loader))
    assert torch.isfinite(x).all()
    for _ in range(4):  # cutmix or mixup, at random
        mixed, targets = Mixup(RECIPE_AUGMENT, 10)(x.clone(), y)
        assert mixed.shape == x.shape and targets.shape == (32, 10)
        torch.testing.assert_close(targets.sum(1), torch.ones(32))
        assert targets.min() >= 0.1 / 10 - 1e-6  # label smoothing keeps every class


def test_our_timed_step_is_the_engines_train_step(train_steps):
    # A hand-written step would miss the per-step learning rate or the clipping (or both).
    scheduled = OptimConfig(lr=1e-3, grad_clip=1e-3)  # warm-up: a new lr every step
    data = random_data(32, 16, torch.device("cpu"))
    model = create_model("cct_2_3x2_32", img_size=16, embed_dim=16, tokenizer_layers=1)
    step = ours_step(
        model,
        data.device_images,
        data.device_labels,
        augment=data.augment,
        num_classes=NUM_CLASSES,
        mean=data.mean,
        std=data.std,
        batch_size=4,
        bf16=False,
        optim=scheduled,
    )
    for _ in range(3):
        step()
    trainer = train_steps.check(3, scheduled)
    assert trainer.model is model and trainer.steps_per_epoch == RECIPE_TRAIN_IMAGES // 4


def test_suite_and_sharing_time_the_recipe_step(train_steps):
    # What the train and sharing rows time: the engine's step with the recipe's settings.
    data = random_data(32, 16, torch.device("cpu"))
    model = create_model("cct_2_3x2_32", img_size=16, embed_dim=16, tokenizer_layers=1)
    step = our_training_step(model, data, batch_size=4, bf16=False)
    for _ in range(2):
        step()
    assert train_steps.check(2, OptimConfig()).optim == OptimConfig()


def test_report_merges_rows_from_several_commands(tmp_path):
    path = tmp_path / "bench.json"
    a = make_row(
        "a",
        figure="A",
        config="c",
        unit="ms",
        higher_is_better=False,
        ours=[1.0, 3.0],
        reference=[4.0],
    )
    b = make_row(
        "b",
        figure="B",
        config="c",
        unit="samples/s",
        higher_is_better=True,
        ours=[2.0],
        reference=[1.0],
    )
    merge_rows(path, [a], targets=[{"what": "t", "value": 1.0, "needed": ">= 1", "met": True}])
    a2 = dict(a, ours=5.0, ratio=1.25)
    report = merge_rows(path, [b, a2], run=run_info("cct.perf", "cpu", [1.0, 1.0, 1.0]))
    assert [r["key"] for r in report["rows"]] == ["a", "b"]  # replaced in place, then added
    assert report["rows"][0]["ours"] == 5.0 and a["ours"] == 2.0 and a["ratio"] == 0.5
    assert report["targets"][0]["met"] is True and len(report["runs"]) == 1
    assert json.loads(path.read_text()) == report
    md = (tmp_path / "bench.md").read_text()
    assert md == render_markdown(report)
    assert "| A (lower is better) | c | 5.00 ms | 4.00 ms | 1.25x |  |" in md
    assert "- `python -m cct.perf" in md and "load average [1.0, 1.0, 1.0] -> " in md


def test_ray_overhead_from_timestamps():
    runs = [
        {"start_ms": 1_000, "end_ms": 41_000, "epoch_seconds": [4.0, 6.0]},
        {"start_ms": 0, "end_ms": 20_500, "epoch_seconds": [5.0, 5.5]},
        {"start_ms": 0, "end_ms": None, "epoch_seconds": [1.0]},  # still open: skipped
    ]
    assert trial_overheads(runs) == [30.0, 10.0]
    row = overhead_row([30.0, 10.0], [2.0, 3.0], sweep_wall_s=80.0)
    assert (row["ours"], row["reference"], row["ratio"]) == (20.0, 2.5, 8.0)
    assert row["higher_is_better"] is False


def test_quick_suite_writes_every_row(tmp_path, capsys):
    assert suite.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    keys = {r["key"] for r in report["rows"]}
    expected = {f"{g}/{c.key}/fp32" for g in ("train", "latency", "inference") for c in CASES}
    expected |= {
        "data",
        "data/randaugment",
        "train/recipe/fp32",
        "sharing/1/fp32",
        "sharing/2/fp32",
    }
    assert keys == expected
    for r in report["rows"]:
        for side in ("ours", "reference"):
            assert isinstance(r[side], float) and math.isfinite(r[side]) and r[side] > 0, r
        assert r["ratio"] == pytest.approx(r["ours"] / r["reference"])
    assert all(r.get("mfu_ours") is None for r in report["rows"] if r["key"].startswith("train/"))
    assert [r["device"] for r in report["runs"]] == ["cpu (1 threads)"]
    assert report["runs"][0]["loadavg_start"] is not None
    assert report["targets"] == []  # --quick sizes are not the targets' sizes
    md = (tmp_path / "bench.md").read_text()
    assert md.count("\n| ") == len(expected) + 1  # a header and the rows; no targets table
    assert "MFU ours / ref" in md and "n/a" in md
    assert "training samples/s" in capsys.readouterr().out


def test_targets_are_judged_on_their_device_and_skipped_when_unmeasured():
    setup = suite.Setup(torch.device("cpu"), False, False, False, 2, False, suite.CPU_SIZES)
    rows = [
        {"key": "train/cct_7_3x2_32/fp32", "batch": 128, "ratio": 1.2},
        {"key": "train/cct_7_3x1_32/fp32", "batch": 8, "mfu_ours": None, "step_ms_ours": 10.0},
        {"key": "train/lsmha_32x8/fp32", "batch": 8, "step_ms_ours": 15.0},
        {"key": "train/cct_7_3x2_32/bf16", "batch": 128, "ratio": 9.0},  # another run's
    ]
    got = {t["what"]: t for t in suite.targets(rows, setup)}
    assert set(got) == {
        "training ours/ref, cct_7_3x2_32 batch 128, fp32 (cpu)",
        "MFU ours, cct_7_3x1_32, fp32 (cuda)",
        "step time ours, LS-MHA 32x8 / 4 heads, fp32 (cuda)",
    }  # no sharing rows: no sharing target
    cpu = got["training ours/ref, cct_7_3x2_32 batch 128, fp32 (cpu)"]
    assert (cpu["value"], cpu["met"]) == (1.2, False)
    lsmha = got["step time ours, LS-MHA 32x8 / 4 heads, fp32 (cuda)"]
    assert (lsmha["value"], lsmha["met"], lsmha["why"]) == (1.5, None, "n/a: a cuda target")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--only", "train,bogus"], "train,bogus"),
        (["--cases", "cct_99"], "cct_99"),
        (["--batch", "0"], "--batch 0"),
        (["--share-counts", "1,x"], "1,x"),
        (["--pad-head-dim", "-1"], "-1"),
        (["--precision", "fp8"], "fp8"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, args, named):
    try:
        code = suite.main([*args, "--device", "cpu", "--out", str(tmp_path)])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (tmp_path / "bench.json").exists()


def test_phase_gaps_follow_the_marks_in_time_order():
    marks = Marks(t0=100.0)
    marks.mark("trial_entered", 100.0)
    marks.mark("actor_process_started", 97.5)
    marks.mark("run_ready", 101.0)
    marks.mark("run_ready", 105.0)  # the first mark counts
    with pytest.raises(ValueError, match="unknown phase mark 'run_redy'"):
        marks.mark("run_redy")
    logged = marks.metrics()
    assert logged == {
        "phase.trial_entered_s": 0.0,
        "phase.actor_process_started_s": -2.5,
        "phase.run_ready_s": 1.0,
    }
    assert gaps({**logged, "trial_closed": 4.0}) == {
        "actor_process_started->trial_entered": 2.5,
        "trial_entered->run_ready": 1.0,
        "run_ready->trial_closed": 3.0,
    }


class _StampedItems(torch.utils.data.Dataset):
    """Items that take 20 ms each and write, as they finish, when they did (from a worker)."""

    def __init__(self, log):
        self.log = log

    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        import time

        time.sleep(0.02)
        with open(self.log, "a") as f:
            f.write(f"{time.monotonic()}\n")
        return i


def test_a_loader_window_starts_in_steady_state_and_ends_with_its_workers_idle(tmp_path):
    # the data rows time a reference DataLoader between windows of ours: batches its workers
    # made before the window, or make after it, would be counted for it and against ours
    import time

    from cct.perf.timing import steady_loader_seconds

    log = tmp_path / "made.txt"
    loader = torch.utils.data.DataLoader(_StampedItems(log), num_workers=1, prefetch_factor=3)
    it = iter(loader)
    next(it)
    time.sleep(0.5)  # the worker fills its queue: 3 items ready
    seconds = steady_loader_seconds(
        lambda: next(it), in_flight=3, calls=5, device=torch.device("cpu")
    )
    returned = time.monotonic()
    time.sleep(0.3)
    made = [float(t) for t in log.read_text().split()]
    assert all(t < returned for t in made)  # nothing was still being made when it returned
    assert len(made) == 1 + 3 + 3 + 5  # the first, the ready, the untimed and the timed ones
    assert seconds >= 0.015  # each timed call waited for an item being made, none was ready


def test_the_cpu_keeps_freed_memory_unless_the_user_chose(monkeypatch):
    import subprocess
    import sys

    code = (
        "import torch; from cct.device import keep_freed_memory as k;"
        "print(k(torch.device('cuda')), k(torch.device('cpu')), k(torch.device('cpu')))"
    )

    def run(**env):
        import os

        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
        )
        return out.stdout.split()

    assert run() == ["False", "True", "True"]  # glibc here; only the CPU
    assert run(MALLOC_TRIM_THRESHOLD_="131072") == ["False", "False", "False"]
