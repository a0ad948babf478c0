"""MLflow stores of N finished trials for the scale benchmark (`orchestrator.bench.scale`),
written through the same run contract a sweep writes through: the parent run of
orchestrator/tracking.py, a child run per trial with the trial's resolved config as params
(`child_run`), the worker's `RunTracker` for the start, the epoch and the final metrics and
artifacts, and analysis.shp's `log_to_mlflow` for the SHP summary; no training.

The shapes are a digits sweep's (cct/data/sources.py: 10 classes, 180 validation and 360
test images): each trial's `logits/logits.npz` holds float32 logits (180, 10) and (360, 10)
with their ids and labels, `shp/summary.json` three transformer blocks of 2, 4 or 8 heads
with their label sets, `checkpoint/` a stub model.json (neither the report with
--no-remeasure nor the committee without --register reads a checkpoint). Accuracies vary
with the searched knobs and a seeded noise, so the report's verdicts, the committee's pool
and the importance have something to read.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from analysis import runs
from analysis.shp.mlflow_io import log_to_mlflow
from cct import environment
from orchestrator.tracking import (
    RunTracker,
    child_run,
    create_parent_run,
    ensure_experiment,
    set_status,
)
from search_spaces import SweepSpec
from search_spaces.spec import config_for_trial
from search_spaces.validate import build_spec

CLASSES, N_VAL, N_TEST = 10, 180, 360  # digits: cct/data/sources.py's held-out sizes
SPLIT_HASH = "bench0000scale00"
HEADS, CONV_BLOCKS, BLOCKS = (2, 4, 8), (0, 1), 3
EXPERIMENT = "scale"

SWEEP_FILE: dict[str, Any] = {
    "name": EXPERIMENT,
    "base": {
        "model": {
            "variant": "cct_2_3x2_32",
            "tokenizer_layers": 1,
            "depth": BLOCKS,
            "embed_dim": 32,
            "attn_dropout": 0.0,
            "drop_path": 0.0,
        },  # fmt: skip
        "data": {"dataset": "digits"},
        "optim": {"epochs": 1, "batch_size": 64, "lr": 2.0e-3, "warmup_epochs": 0},
    },
    "search": {
        "model.num_heads": {"choice": list(HEADS)},
        "model.conv_blocks": {"choice": list(CONV_BLOCKS)},
        "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    },
    "tune": {"searcher": "optuna-tpe", "num_samples": 1000, "objectives": {"val_accuracy": "max"}},
    "resources": {
        "workers_per_trial": 1,
        "cpus_per_worker": 0.95,
        "gpus_per_worker": 0,
        "max_concurrent_trials": 2,
    },  # fmt: skip
    "analysis": {"blocks": "all"},
}


def bench_spec(workdir: Path) -> SweepSpec:
    """The benchmark's sweep file as the validated spec a sweep would run."""
    return build_spec(SWEEP_FILE, source="orchestrator.bench.scale", cwd=workdir)


def trial_params(i: int, rng: np.random.Generator) -> dict[str, Any]:
    """Trial i's searched values (what Tune hands the trial function)."""
    return {
        "model.num_heads": HEADS[i % len(HEADS)],
        "model.conv_blocks": CONV_BLOCKS[(i // len(HEADS)) % len(CONV_BLOCKS)],
        "optim.lr": float(10 ** rng.uniform(-4, -2)),
    }


def val_accuracy_of(params: dict[str, Any], rng: np.random.Generator) -> float:
    """A plausible accuracy: more heads and a conv block help a little, lr near 2e-3 best."""
    lr_gap = abs(np.log10(params["optim.lr"]) - np.log10(2e-3))
    acc = 0.90 + 0.01 * HEADS.index(params["model.num_heads"])
    acc += 0.01 * params["model.conv_blocks"] - 0.03 * lr_gap + rng.normal(0, 0.01)
    return float(np.clip(acc, 0.5, 0.99))


def _logits(labels: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Float32 logits whose argmax is right on about `accuracy` of the rows."""
    n = len(labels)
    target = labels.copy()
    wrong = rng.random(n) > accuracy
    target[wrong] = (labels[wrong] + rng.integers(1, CLASSES, wrong.sum())) % CLASSES
    out = rng.normal(0, 0.5, (n, CLASSES)).astype(np.float32)
    out[np.arange(n), target] += 3.0
    return out


def write_logits(path: Path, accuracy: float, rng: np.random.Generator) -> None:
    """logits.npz with every key of analysis.runs.LOGITS_KEYS, digits-sized."""
    labels = np.random.default_rng(7)  # one split for every trial: same ids and labels
    val_y, test_y = labels.integers(0, CLASSES, N_VAL), labels.integers(0, CLASSES, N_TEST)
    np.savez(
        path,
        val_logits=_logits(val_y, accuracy, rng),
        val_ids=np.arange(N_VAL),
        val_labels=val_y,
        test_logits=_logits(test_y, accuracy - 0.01, rng),
        test_ids=np.arange(N_VAL, N_VAL + N_TEST),
        test_labels=test_y,
        split_hash=np.array(SPLIT_HASH),
    )


def shp_summary(heads: int, rng: np.random.Generator) -> dict[str, Any]:
    """summary.json as analysis/shp/pipeline.py writes it: BLOCKS transformer blocks."""
    blocks = []
    for b in range(BLOCKS):
        sets = [sorted(rng.choice(CLASSES, 3, replace=False).tolist()) for _ in range(heads)]
        per_label = [sum(k in s for s in sets) for k in range(CLASSES)]
        snr = float(0.5 + b + rng.normal(0, 0.2))
        blocks.append({
            "block": b, "kind": "transformer", "unit": "head", "num_units": heads,
            "units_with_cluster": heads, "readout_accuracy": 0.7 + 0.1 * b,
            "mean_labels_in_clusters": 3.0, "mean_noise": 3.0 / snr, "snr_labels": snr,
            "snr_area": 2 * snr, "noise_free": False, "unit_noise": [1] * heads,
            "label_sets": sets, "heads_per_label": per_label,
            "heads_per_label_mean": sum(per_label) / CLASSES,
            "heads_per_label_min": min(per_label), "heads_per_label_max": max(per_label),
            "coverage": sum(c > 0 for c in per_label) / CLASSES, "label_set_size_mean": 3.0,
            "pairwise_jaccard_mean": 0.2,
        })  # fmt: skip
    return {"units": "heads", "pooling": "mean", "heldout": "val", "num_classes": CLASSES,
            "n_train": 1257, "n_heldout": N_VAL, "blocks": blocks}  # fmt: skip


START_INFO = {"device": "cpu", "precision": "fp32", "split_hash": SPLIT_HASH,
              "latency_shared": True, "world_size": 1, "params": 2.8e4, "macs": 1.1e6,
              "macs_with_attn": 1.3e6, "latency_ms": 0.9, "throughput": 1100.0}  # fmt: skip


def log_trial(
    uri: str, spec: SweepSpec, exp_id: str, parent: str, i: int, work: Path
) -> dict[str, Any]:
    """One finished trial, written as trial.py and the worker's callbacks write it; its
    searched values and final metrics (the row a Tune result would carry)."""
    rng = np.random.default_rng(1000 + i)
    params = trial_params(i, rng)
    cfg = config_for_trial(spec, params)
    trial_id = f"scale_{i:05d}"
    client = MlflowClient(uri)
    run_id = child_run(client, exp_id, parent_run_id=parent, trial_id=trial_id,
                       params={**cfg.to_dict(), "searched": dict(params)},
                       tags={"sweep": spec.name, "trial_name": f"trial_{i}"})  # fmt: skip
    tracker = RunTracker(uri, run_id)
    tracker.log_start(START_INFO)
    val = val_accuracy_of(params, rng)
    epoch = {"epoch": 1, "train_loss": 1.0 - val / 2, "val_accuracy": val,
             "samples_per_s": 900.0, "epoch_seconds": 1.4, "lr": params["optim.lr"]}  # fmt: skip
    tracker.log_epoch(epoch, {"wall_hours": 5e-4, "cpu_hours": 5e-4, "gpu_hours": 0.0})
    folder = work / trial_id
    (folder / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (folder / runs.CHECKPOINT_DIR / "model.json").write_text(json.dumps(cfg.to_dict()))
    write_logits(folder / runs.LOGITS_FILE, val, rng)
    result = {**epoch, "test_accuracy": val - 0.01, "epochs": 1, "params": START_INFO["params"],
              "macs": START_INFO["macs"], "latency_ms": START_INFO["latency_ms"]}  # fmt: skip
    tracker.log_final(result, folder)
    summary = shp_summary(params["model.num_heads"], rng)
    (folder / runs.SHP_DIR).mkdir()
    (folder / runs.SHP_DIR / "summary.json").write_text(json.dumps(summary))
    log_to_mlflow(summary, folder / runs.SHP_DIR, run_id=run_id, client=client)
    client.set_tag(run_id, runs.ANALYSIS_LOGGED_TAG, "true")
    set_status(client, run_id, "FINISHED")  # the driver's MlflowStatusCallback
    return {"trial_id": trial_id, "config": params, **result}


@contextmanager
def one_environment_capture() -> Iterator[None]:
    """While building, every trial logs the environment captured once: the capture lists
    every installed package (about a second here) and runs git, and the environment is the
    same for every trial this process writes (a sweep's workers each capture their own)."""
    saved = environment.capture, environment.uncommitted_diff
    environment.capture = functools.cache(saved[0])
    environment.uncommitted_diff = functools.cache(saved[1])
    try:
        yield
    finally:
        environment.capture, environment.uncommitted_diff = saved


def build_store(
    uri: str, n: int, artifacts: Path, *, progress_every: int = 100
) -> tuple[list[dict[str, Any]], list[float]]:
    """A store at `uri` holding one sweep of `n` finished trials under experiment "scale",
    artifacts under `artifacts`; the trials' rows (trial id, searched values, metrics) and
    the seconds each trial's writes took (a lookup or write that scans the store would
    make the last ones slower than the first)."""
    spec = bench_spec(artifacts)
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, EXPERIMENT, artifacts)
    parent = create_parent_run(client, exp_id, sweep=spec.name, tags={}, params={"n": n})
    rows, seconds = [], []
    with tempfile.TemporaryDirectory(prefix="scale-store-") as tmp, one_environment_capture():
        for i in range(n):
            t0 = time.perf_counter()
            rows.append(log_trial(uri, spec, exp_id, parent, i, Path(tmp)))
            seconds.append(time.perf_counter() - t0)
            if progress_every and (i + 1) % progress_every == 0:
                print(f"    {i + 1}/{n} trials written", flush=True)
    set_status(client, parent, "FINISHED")
    return rows, seconds
