"""Small trials sharing one device: the aggregate training samples/s of N concurrent
processes (N = 1, 2, 4), for our pipeline and for the reference pipeline.

    python -m cct.perf --only sharing [--share-counts 1,2,4] [--share-seconds 8]

Each process trains one small trial (`cases.SMALL_TRIAL`, batch 128, CIFAR-shaped data).
The parent starts N workers (`python -m cct.perf.suite.sharing --worker CONFIG`); each builds its
model and data and warms up, prints "ready" and waits; once all are ready the parent tells
all of them "go" at once, each trains for the same wall time and prints its samples/s. The
aggregate is their sum.

On a CPU, ours gives each process an equal share of the cores as torch threads, as Ray does
for a trial's workers (it sets OMP_NUM_THREADS from their CPUs); the reference keeps torch's
default (every core in every process) and its DataLoader workers, as a script started N
times would.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from cct.cli import fail
from cct.perf.suite.cases import (
    SMALL_TRIAL,
    model_pair,
    our_training_step,
    random_data,
    reference_training_step,
)
from cct.perf.timing import seconds_per_call, sync

READY_TIMEOUT_S = 900  # model build + warm-up of the slowest worker on a crowded machine


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One process: build, warm up, report ready, wait for go, train `seconds`, report."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    data = random_data(cfg["images"], cfg["img_size"], device, seed=cfg["seed"])
    ours, ref = model_pair(SMALL_TRIAL, img_size=cfg["img_size"], quick=cfg["quick"], device=device)
    if cfg["pipeline"] == "ours":
        step = our_training_step(ours, data, batch_size=cfg["batch"], bf16=cfg["bf16"])
    else:
        step = reference_training_step(
            ref, data, batch_size=cfg["batch"], bf16=cfg["bf16"], num_workers=cfg["num_workers"]
        )
    seconds_per_call(step, cfg["warmup"], device)
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    sync(device)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < cfg["seconds"]:
        step()
        n += 1
    sync(device)
    elapsed = time.perf_counter() - t0
    return {"steps": n, "seconds": elapsed, "samples_per_s": n * cfg["batch"] / elapsed}


def run_group(cfg: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Start `n` workers of `cfg`, release them together, return their reports."""
    cmd = [sys.executable, "-m", "cct.perf.suite.sharing", "--worker"]
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(n)]  # stderr: never blocks
    procs = [
        subprocess.Popen(
            [*cmd, json.dumps({**cfg, "seed": i})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        for i, log in enumerate(logs)
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for p, log in zip(procs, logs):
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = p.stdout.readline().strip() if ready else "(no answer)"
            if line != "ready":
                raise RuntimeError(f"sharing worker failed before training: {_tail(p, log)}")
        for p in procs:  # "go" to all, back to back
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = []
        for p, log in zip(procs, logs):
            out, _ = p.communicate(timeout=cfg["seconds"] * 10 + 600)
            if p.returncode != 0:
                raise RuntimeError(f"sharing worker exited {p.returncode}: {_tail(p, log)}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def _tail(p: subprocess.Popen, log) -> str:
    if p.poll() is None:
        p.kill()
    p.wait()
    log.seek(0)
    return log.read()[-2000:].strip() or f"exit code {p.returncode}"


def worker_config(
    pipeline: str,
    n: int,
    *,
    device: torch.device,
    seconds: float,
    quick: bool,
    bf16: bool,
    num_workers: int,
    batch: int,
    warmup: int,
) -> dict[str, Any]:
    cpus = os.cpu_count() or 1
    threads = None  # torch's default: every core (the reference; ours on CUDA)
    if quick:
        threads = 1  # as the suite's --quick: steadier on a crowded CI machine
    elif pipeline == "ours" and device.type == "cpu":
        threads = max(1, cpus // n)  # an equal share of the cores per process
    return {
        "pipeline": pipeline,
        "device": str(device),
        "seconds": seconds,
        "quick": quick,
        "bf16": bf16,
        "num_workers": num_workers,
        "batch": batch,
        "warmup": warmup,
        "img_size": 16 if quick else 32,
        "images": 256 if quick else 10_000,
        "threads": threads,
    }


def measure(
    counts: list[int],
    *,
    device: torch.device,
    seconds: float,
    quick: bool,
    bf16: dict[str, bool],
    num_workers: int,
    batch: int,
    warmup: int,
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{N: {"ours": reports, "reference": reports}}, alternating which pipeline goes first."""
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for i, n in enumerate(counts):
        out[n] = {}
        order = ["ours", "reference"] if i % 2 == 0 else ["reference", "ours"]
        for pipeline in order:
            cfg = worker_config(
                pipeline,
                n,
                device=device,
                seconds=seconds,
                quick=quick,
                bf16=bf16[pipeline],
                num_workers=num_workers,
                batch=batch,
                warmup=warmup,
            )
            out[n][pipeline] = run_group(cfg, n)
            total = sum(r["samples_per_s"] for r in out[n][pipeline])
            print(f"  sharing: {n} x {pipeline}: {total:,.1f} samples/s in all", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--worker":
        fail("this is the suite's worker; run `python -m cct.perf --only sharing`")
    print(json.dumps(worker(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
