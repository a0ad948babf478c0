"""The trainer: `cct.engine.fit` and `python -m cct.train`.

Distributed equivalence (2 gloo ranks == 1 process), checkpoint round trip, exact resume,
best-weights selection, early stopping, divergence, the CLI's errors and outputs, and the
"Done when" accuracy on digits. Tiny models on digits keep the whole file fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cct.engine
from cct import train
from cct.checkpoint import load_model, read_description
from cct.config import TrainConfig
from cct.data import load_dataset, normalize
from cct.engine import NoCallbacks, OutOfMemoryAtStart, TrainingDiverged, fit

# A 2-block CCT on 8x8 digits (16 tokens, ~14k parameters): a few tenths of a second an epoch.
TINY: dict[str, Any] = {
    "data.dataset": "digits",
    "model.variant": "cct_2_3x2_32",
    "model.tokenizer_layers": 1,
    "model.embed_dim": 32,
    "model.depth": 2,
    "optim.epochs": 3,
    "optim.batch_size": 64,
    "optim.lr": 2.0e-3,
    "optim.warmup_epochs": 1.0,
    "device": "cpu",
    "precision": "fp32",
    "latency_runs": 1,
    "checkpoint_every.epochs": 1,  # most tests here resume from any epoch
}
# Nothing random but the data order: every rank draws the same stream as a single process.
NO_RANDOMNESS = {
    "model.attn_dropout": 0.0,
    "model.drop_path": 0.0,
    "data.augment.crop_padding": 0,
    "data.augment.flip": False,
    "data.augment.mixup": 0.0,
    "data.augment.cutmix": 0.0,
    "data.augment.erase_prob": 0.0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**flat: Any) -> TrainConfig:
    return TrainConfig().replace(**{**TINY, **flat})


def cli_sets(**flat: Any) -> list[str]:
    args = []
    for key, value in {**TINY, **flat}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]  # JSON scalars are valid YAML
    return args


class Interrupted(Exception):
    """Raised by Recorder to cut a run short after a chosen epoch, as a crash would."""


class Recorder(NoCallbacks):
    """Keeps every report; copies checkpoints and final artifacts into `keep` (they are
    temporary folders that `fit` deletes after the callback returns)."""

    def __init__(self, keep: Path, stop_after: int | None = None) -> None:
        self.keep, self.stop_after = keep, stop_after
        self.info: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.history.append(metrics)
        assert checkpoint is not None  # a single process is rank 0
        shutil.copytree(checkpoint, self.keep / f"epoch{metrics['epoch']}")
        if metrics["epoch"] == self.stop_after:
            raise Interrupted

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None:
        self.result = result
        assert artifacts is not None
        shutil.copytree(artifacts, self.keep / "final")


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "model.pt", weights_only=True)


def assert_same_weights(a: Path, b: Path, skip: tuple[str, ...] = (), **tol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa.keys() - set(skip):
        torch.testing.assert_close(wa[k], wb[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def test_two_gloo_processes_equal_one_process(tmp_path):
    # Same global batch (64 = 2 x 32 per rank), same data order (epoch_indices), DDP averages
    # gradients: only the float reduction order may differ. LayerNorm only (no conv blocks),
    # so no norm statistic depends on how the batch is split.
    sets = cli_sets(**NO_RANDOMNESS, **{"optim.epochs": 2})
    assert train.main([*sets, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "cct.train", *sets, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "info.json").read_text())["world_size"] == 2
    # The sequence-pooling score's bias gets an exactly zero gradient (softmax over tokens
    # ignores a shared shift), so Adam turns rounding noise into steps: it cannot agree.
    assert_same_weights(
        tmp_path / "one/final/checkpoint",
        tmp_path / "two/final/checkpoint",
        skip=("pool_score.bias",),
        rtol=1e-4,
        atol=1e-5,
    )
    one, two = (
        np.load(tmp_path / "one/final/logits.npz"),
        np.load(tmp_path / "two/final/logits.npz"),
    )
    for split in ("val", "test"):
        np.testing.assert_array_equal(one[f"{split}_ids"], two[f"{split}_ids"])
        np.testing.assert_allclose(
            one[f"{split}_logits"], two[f"{split}_logits"], rtol=1e-4, atol=1e-4
        )
    m1 = json.loads((tmp_path / "one/metrics.json").read_text())["result"]
    m2 = json.loads((tmp_path / "two/metrics.json").read_text())["result"]
    assert m1["test_accuracy"] == pytest.approx(m2["test_accuracy"], abs=1 / 360)


def test_checkpoint_round_trip(tmp_path):
    cfg = config(**{"optim.epochs": 1})
    rec = Recorder(tmp_path)
    fit(cfg, callbacks=rec)
    final = tmp_path / "final"
    model, desc = load_model(final / "checkpoint")
    assert {"config", "settings", "git_commit", "epoch", "metrics"} <= desc.keys()
    assert TrainConfig.from_dict(desc["config"]) == cfg
    assert desc["settings"] == rec.info["settings"] and desc["epoch"] == 1
    assert not model.training

    # The logged logits are what the reloaded model computes, in the logged id order.
    data = load_dataset(cfg.data)
    saved = np.load(final / "logits.npz")
    np.testing.assert_array_equal(saved["val_ids"], data.val_ids.numpy())
    np.testing.assert_array_equal(saved["test_ids"], data.test_ids.numpy())
    with torch.no_grad():
        logits = model(normalize(data.test_x, data.mean, data.std))
    np.testing.assert_allclose(logits.numpy(), saved["test_logits"], rtol=1e-5, atol=1e-5)
    acc = (logits.argmax(-1) == data.test_y).float().mean().item()
    assert acc == pytest.approx(rec.result["test_accuracy"])

    # Every file of the per-epoch checkpoint loads without unpickling arbitrary objects.
    epoch = tmp_path / "epoch1"
    torch.load(epoch / "model.pt", weights_only=True)
    state = torch.load(epoch / "train_state.pt", weights_only=True)
    assert {"optimizer", "epoch", "step", "best_val"} <= state.keys()
    assert read_description(epoch)["epoch"] == 1


def test_resume_matches_an_unbroken_run(tmp_path):
    # Augmentation and dropout on: the resumed run must draw what the unbroken one drew.
    cfg = config(
        **{
            "optim.epochs": 4,
            "model.attn_dropout": 0.1,
            "model.drop_path": 0.1,
            "data.augment.mixup": 0.2,
            "data.augment.erase_prob": 0.25,
        }
    )
    straight = Recorder(tmp_path / "straight")
    fit(cfg, callbacks=straight)

    broken = Recorder(tmp_path / "broken", stop_after=2)
    with pytest.raises(Interrupted):
        fit(cfg, callbacks=broken)
    resumed = Recorder(tmp_path / "resumed")
    fit(cfg, callbacks=resumed, resume_from=tmp_path / "broken" / "epoch2")

    assert [m["epoch"] for m in resumed.history] == [3, 4]
    assert_same_weights(
        tmp_path / "straight/final/checkpoint",
        tmp_path / "resumed/final/checkpoint",
        rtol=0,
        atol=0,
    )
    for a, b in zip(straight.history[2:], resumed.history, strict=True):
        for key in ("train_loss", "val_accuracy", "best_val_accuracy", "lr"):
            assert a[key] == b[key], key
    for key in ("val_accuracy", "test_accuracy", "best_val_accuracy", "best_epoch", "epochs"):
        assert straight.result[key] == resumed.result[key], key


def test_final_weights_best_reports_the_best_epoch(tmp_path, monkeypatch):
    # After epoch 2 the loss is negated: gradient ascent reliably destroys what was learned,
    # so the best validation epoch is 2 and the final weights are much worse.
    ascend = {"on": False}
    real_loss = cct.engine.soft_cross_entropy

    def loss(logits, targets):
        value = real_loss(logits, targets)
        return -value if ascend["on"] else value

    class Sabotage(Recorder):
        def on_epoch_end(self, metrics, checkpoint):
            super().on_epoch_end(metrics, checkpoint)
            ascend["on"] = metrics["epoch"] >= 2

    monkeypatch.setattr(cct.engine, "soft_cross_entropy", loss)
    cfg = config(**{"optim.epochs": 4, "optim.lr": 1.0e-2})
    results = {}
    for mode in ("final", "best"):
        ascend["on"] = False
        rec = Sabotage(tmp_path / mode)
        results[mode] = fit(cfg.replace(final_weights=mode), callbacks=rec)
    best, final = results["best"], results["final"]
    vals = [m["val_accuracy"] for m in rec.history[:-1]]  # the last report carries the result
    assert best["best_epoch"] == 2 and max(vals) == vals[1]
    assert best["val_accuracy"] == pytest.approx(best["best_val_accuracy"])
    assert best["test_accuracy"] > final["test_accuracy"] + 0.2
    # The reported accuracy and the saved weights and logits are those of epoch 2.
    assert_same_weights(
        tmp_path / "best/final/checkpoint", tmp_path / "best/epoch2", rtol=0, atol=0
    )
    model, _ = load_model(tmp_path / "best/epoch2")
    data = load_dataset(cfg.data)
    with torch.no_grad():
        logits = model(normalize(data.test_x, data.mean, data.std))
    assert (logits.argmax(-1) == data.test_y).float().mean().item() == pytest.approx(
        best["test_accuracy"]
    )
    saved = np.load(tmp_path / "best/final/logits.npz")
    np.testing.assert_allclose(saved["test_logits"], logits.numpy(), rtol=1e-5, atol=1e-5)


def test_fit_runs_the_engines_train_step_on_every_batch(train_steps):
    # The step the benchmarks time (tests/test_bench.py, tests/test_perf.py) is fit's own.
    cfg = config(**{"optim.epochs": 2, "optim.grad_clip": 1e-3})
    fit(cfg)
    steps_per_epoch = len(load_dataset(cfg.data).train_y) // cfg.optim.batch_size
    trainer = train_steps.check(2 * steps_per_epoch, cfg.optim)
    assert trainer.steps_per_epoch == steps_per_epoch


# With lr 0 the weights never move, so validation accuracy is flat from epoch 1 on.
FROZEN = {"optim.epochs": 10, "optim.lr": 0.0, "optim.min_lr": 0.0, "max_epochs_without_gain": 2}


def test_max_epochs_without_gain_stops_early(tmp_path):
    rec = Recorder(tmp_path)
    result = fit(config(**FROZEN), callbacks=rec)
    # best at epoch 1, no gain at epochs 2 and 3 -> stop after epoch 3
    assert result["epochs"] == 3 and result["best_epoch"] == 1
    assert [m["epoch"] for m in rec.history] == [1, 2, 3]
    assert rec.history[-1]["final"] and not any(m["final"] for m in rec.history[:-1])
    assert "test_accuracy" in rec.history[-1]


def test_early_stopping_counter_survives_resume(tmp_path):
    broken = Recorder(tmp_path / "broken", stop_after=2)
    with pytest.raises(Interrupted):
        fit(config(**FROZEN), callbacks=broken)
    resumed = Recorder(tmp_path / "resumed")
    result = fit(config(**FROZEN), callbacks=resumed, resume_from=tmp_path / "broken/epoch2")
    assert result["epochs"] == 3
    assert [m["epoch"] for m in resumed.history] == [3]


def test_nan_loss_raises_training_diverged():
    with pytest.raises(TrainingDiverged, match=r"nan|inf"):
        fit(config(**{"optim.lr": 1.0e6, "optim.epochs": 2}))


def test_cli_reports_divergence_as_failed(tmp_path, capsys):
    rc = train.main([*cli_sets(**{"optim.lr": 1.0e6}), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("failed: ") and "nan" in err[0], err


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("model.variant", "cct_99_9x9_32", "cct_99_9x9_32"),
        ("model.num_heads", "0", "got 0"),
        ("model.conv_blocks", "9", "conv_blocks=9"),
        ("optim.learning_rate", "1.0e-3", "learning_rate"),
        ("optim.lr", "5e-4", "5.0e-4"),  # PyYAML reads 5e-4 as text
        ("data.dataset", "imagenet", "imagenet"),
        ("model.head_dim", "-4", "-4"),
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, key, value, named):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        train.main([*cli_sets(), "--set", f"{key}={value}", "--out", str(out)])
    rc = e.value.code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert named in err[0] and "Traceback" not in captured.err
    assert not out.exists()


def test_cli_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = [*cli_sets(**{"optim.epochs": 3}), "--out", str(out)]

    # First run: stop right after epoch 2's checkpoint is written, as a crash would.
    real = train.ConsoleCallbacks.on_epoch_end

    def crash_after_two(self, metrics, checkpoint):
        real(self, metrics, checkpoint)
        if metrics["epoch"] == 2:
            raise Interrupted

    monkeypatch.setattr(train.ConsoleCallbacks, "on_epoch_end", crash_after_two)
    with pytest.raises(Interrupted):
        train.main(args)
    assert read_description(out / "checkpoint")["epoch"] == 2
    assert not (out / "final").exists()
    monkeypatch.undo()
    capsys.readouterr()

    assert train.main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "epoch    3" in printed and "epoch    1" not in printed and "done: " in printed

    for f in ("config.json", "info.json", "metrics.json", "checkpoint/model.pt"):
        assert (out / f).is_file(), f
    for f in ("model.pt", "model.json"):
        assert (out / "final/checkpoint" / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["result"]["epochs"] == 3
    assert 0.0 <= metrics["result"]["test_accuracy"] <= 1.0

    data = load_dataset(config().data)
    logits = np.load(out / "final/logits.npz")
    for split, n in (("val", len(data.val_y)), ("test", len(data.test_y))):
        ids = logits[f"{split}_ids"]
        np.testing.assert_array_equal(ids, getattr(data, f"{split}_ids").numpy())
        assert (np.diff(ids) > 0).all()  # a fixed, ascending sample order
        assert logits[f"{split}_logits"].shape == (n, 10)
        assert np.isfinite(logits[f"{split}_logits"]).all()

    # --resume without a checkpoint is an error, not a fresh start.
    with pytest.raises(SystemExit) as e:
        train.main([*args, "--out", str(tmp_path / "empty"), "--resume"])
    assert e.value.code == 2


def test_small_cct_reaches_96_percent_on_digits():
    # The "Done when" criterion (README quickstart-like settings); reaches ~97.5 %.
    cfg = config(
        **{
            "model.embed_dim": 64,
            "model.num_heads": 2,
            "model.drop_path": 0.0,
            "model.attn_dropout": 0.0,
            "optim.epochs": 20,
            "optim.batch_size": 64,
            "optim.lr": 2.0e-3,
            "optim.warmup_epochs": 2.0,
        }
    )
    result = fit(cfg)
    assert result["test_accuracy"] >= 0.96, result


class ReportLog(NoCallbacks):
    def __init__(self) -> None:
        self.history: list[tuple[dict[str, Any], Path | None]] = []

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.history.append((metrics, checkpoint))


def test_resume_from_the_last_checkpoint_reports_the_final_epoch_again(tmp_path):
    # A sweep driver killed after the last checkpoint was saved but before its report
    # arrived: the resumed run must deliver that final report (with test accuracy).
    cfg = config(**{"optim.epochs": 2})
    straight = Recorder(tmp_path / "straight")
    fit(cfg, callbacks=straight)
    again = ReportLog()
    result = fit(cfg, callbacks=again, resume_from=tmp_path / "straight" / "epoch2")
    assert len(again.history) == 1
    metrics, checkpoint = again.history[0]
    assert checkpoint is None
    assert metrics["epoch"] == 2 and metrics["final"] is True
    assert metrics["test_accuracy"] == result["test_accuracy"] == straight.result["test_accuracy"]
    assert metrics["train_loss"] == straight.history[-1]["train_loss"]


# --------------------------------------------------------------------------------------
# checkpoint cadence, and the last epoch saved and reported before `on_end`


class Saves(NoCallbacks):
    """The epochs reported, those that came with a checkpoint (copied to `keep`), and the
    order of the last report and `on_end`."""

    def __init__(self, keep: Path, crash_in_end: bool = False) -> None:
        self.keep, self.crash_in_end = keep, crash_in_end
        self.reported: list[int] = []
        self.saved: list[int] = []
        self.events: list[str] = []

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.reported.append(metrics["epoch"])
        self.events.append("final report" if metrics["final"] else "report")
        if checkpoint is not None:
            self.saved.append(metrics["epoch"])
            shutil.copytree(checkpoint, self.keep / f"epoch{metrics['epoch']}")

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None:
        self.events.append("end")
        if self.crash_in_end:
            raise Interrupted  # as a crash in the SHP analysis would


def test_checkpoint_every_epochs_and_always_the_last(tmp_path):
    rec = Saves(tmp_path)
    fit(config(**{"optim.epochs": 7, "checkpoint_every.epochs": 3}), callbacks=rec)
    assert rec.reported == [1, 2, 3, 4, 5, 6, 7]  # metrics every epoch
    assert rec.saved == [3, 6, 7]


def test_checkpoint_every_minutes_comes_first(tmp_path):
    rec = Saves(tmp_path)
    every = {"checkpoint_every.epochs": 100, "checkpoint_every.minutes": 1e-6}
    fit(config(**{"optim.epochs": 3, **every}), callbacks=rec)
    assert rec.saved == [1, 2, 3]


def test_default_cadence_is_ten_epochs_or_ten_minutes():
    every = TrainConfig().checkpoint_every
    assert (every.epochs, every.minutes) == (10, 10.0)


def test_resume_repeats_only_the_epochs_since_the_last_checkpoint(tmp_path):
    cfg = config(**{"optim.epochs": 6, "checkpoint_every.epochs": 2})
    straight = Recorder(tmp_path / "straight")
    fit(cfg.replace(**{"checkpoint_every.epochs": 1}), callbacks=straight)

    class CrashAtFive(Saves):
        def on_epoch_end(self, metrics, checkpoint):
            super().on_epoch_end(metrics, checkpoint)
            if metrics["epoch"] == 5:
                raise Interrupted

    broken = CrashAtFive(tmp_path / "broken")
    with pytest.raises(Interrupted):
        fit(cfg, callbacks=broken)
    assert broken.saved == [2, 4]
    resumed = Saves(tmp_path / "resumed")
    result = fit(cfg, callbacks=resumed, resume_from=tmp_path / "broken/epoch4")
    assert resumed.reported == [5, 6]  # epoch 5 again, nothing before it
    assert result["test_accuracy"] == straight.result["test_accuracy"]


def test_last_epoch_saved_and_reported_before_on_end_and_a_crash_there_trains_nothing(
    tmp_path, train_steps
):
    cfg = config(**{"optim.epochs": 3})
    crashed = Saves(tmp_path / "crashed", crash_in_end=True)
    with pytest.raises(Interrupted):
        fit(cfg, callbacks=crashed)
    assert crashed.events == ["report", "report", "final report", "end"]
    assert crashed.saved[-1] == 3
    steps = len(train_steps.calls)

    resumed = Saves(tmp_path / "resumed")
    result = fit(cfg, callbacks=resumed, resume_from=tmp_path / "crashed/epoch3")
    assert len(train_steps.calls) == steps  # not one step trained again
    assert resumed.events == ["final report", "end"]
    assert resumed.reported == [3] and resumed.saved == []
    assert 0.0 <= result["test_accuracy"] <= 1.0


def test_early_stop_checkpoint_resumes_to_the_end_not_to_more_epochs(tmp_path):
    rec = Saves(tmp_path / "stopped")
    fit(config(**FROZEN, **{"checkpoint_every.epochs": 5}), callbacks=rec)
    assert rec.saved == [3]  # the early stop's last epoch, off the cadence
    again = Saves(tmp_path / "again")
    result = fit(config(**FROZEN), callbacks=again, resume_from=tmp_path / "stopped/epoch3")
    assert again.reported == [3] and result["epochs"] == 3


@pytest.mark.parametrize("at_call, raised", [(1, OutOfMemoryAtStart), (3, torch.OutOfMemoryError)])
def test_out_of_memory_before_the_first_step_is_told_apart(monkeypatch, at_call, raised):
    # Before any step: the model or its batch does not fit (the sweep does not retry it on
    # a GPU of its own). Later: fragmentation or a neighbour, which a retry may heal.
    real, calls = cct.engine.Trainer.train_step, []

    def step(self, x, y):
        calls.append(1)
        if len(calls) == at_call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, x, y)

    monkeypatch.setattr(cct.engine.Trainer, "train_step", step)
    with pytest.raises(raised) as e:
        fit(config())
    assert type(e.value) is raised and "out of memory" in str(e.value)
