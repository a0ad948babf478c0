"""The performance suite: every figure of our pipeline next to a plain reference pipeline.

    python -m cct.perf [--device auto|cpu|cuda] [--out DIR] [--only train,latency,data,sharing]
                       [--quick] [--precision auto|fp32|bf16] [--compile] [--num-workers 2] ...
    python -m cct.perf --device cuda --check --out DIR    (the GPU check, cct/perf/check/run.py)

Rows (ours / reference, medians of interleaved repeats):
- train: training samples/s and MFU of cct_7_3x1_32, its LS-MHA variant (32 heads x 8), its
  conv-substituted variant (conv_blocks=3) and cct_7_3x2_32 (the CPU target);
- latency: batch-1 latency and large-batch inference throughput of the same models;
- data: the input pipeline alone (samples/s);
- sharing: aggregate samples/s of 1, 2 and 4 small-trial processes on one device.
Two more rows come from commands outside `cct` and merge into the same report:
`python -m analysis.bench --merge-into DIR/bench.json` (analysis time, all blocks) and
`python -m orchestrator.bench.overhead --out DIR` (Ray overhead per trial).

Writes DIR/bench.json and DIR/bench.md (see cct/perf/report.py). Torch only: runs on a bare
GPU box. No timing is asserted anywhere; targets are reported as met or not.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cct.cli import OneLineParser
from cct.data.augment import recipe_augment
from cct.device import (
    DeviceUnavailable,
    allow_tf32,
    keep_freed_memory,
    resolve_device,
    use_bf16,
)
from cct.measure import count_macs, count_params, device_name, time_forward
from cct.perf.check import run as check
from cct.perf.reference.data import Mixup
from cct.perf.reference.randaugment import PillowRecipeTransform
from cct.perf.report import JSON_NAME, make_row, merge_rows, render_markdown, run_info
from cct.perf.suite import sharing
from cct.perf.suite.cases import (
    CASES,
    NUM_CLASSES,
    QUICK_IMG_SIZE,
    SMALL_TRIAL,
    Case,
    Data,
    model_pair,
    our_data_step,
    our_training_step,
    random_data,
    reference_loader,
    reference_training_step,
)
from cct.perf.suite.steps import Step, reference_data_step
from cct.perf.timing import (
    Paired,
    interleaved,
    load_average,
    seconds_per_call,
    steady_loader_seconds,
)
from cct.perf.workload import peak_tflops_for

GROUPS = ("train", "latency", "data", "sharing")


@dataclass(frozen=True)
class Sizes:
    """How much of everything to run; one set per device, one for --quick."""

    batch: int | None  # training batch for every case (None: the case's own on CPU, 128 on GPU)
    infer_batch: int  # large-batch inference
    latency_runs: int  # batch-1 forwards per repeat
    steps: int  # timed training steps per repeat
    warmup: int  # untimed steps before the first repeat (allocator, cuDNN, compile)
    repeats: int  # interleaved repeats per side
    images: int  # in-memory dataset size
    data_batches: int  # batches per repeat of the data-only row
    share_seconds: float
    share_counts: tuple[int, ...]


CUDA_SIZES = Sizes(128, 1024, 100, 20, 10, 5, 50_000, 50, 15.0, (1, 2, 4))
CPU_SIZES = Sizes(None, 32, 20, 3, 1, 3, 10_000, 32, 5.0, (1, 2, 4))  # ~5 min on 2 idle cores
# --quick (tests, CI): every row, tiny models; two sharing counts, since each process
# start costs seconds of CPU.
QUICK_SIZES = Sizes(8, 8, 3, 1, 1, 2, 256, 2, 0.3, (1, 2))


@dataclass(frozen=True)
class Setup:
    device: torch.device
    bf16: bool  # ours under bf16 autocast
    ref_bf16: bool  # the reference under bf16 autocast
    compile: bool
    num_workers: int
    quick: bool
    sizes: Sizes
    pad_head_dim: int | None = None  # our attention's head_dim padding (None: automatic)

    @property
    def precision(self) -> str:
        ours = "bf16" if self.bf16 else "fp32"
        ref = "bf16" if self.ref_bf16 else "fp32"
        return ours if ours == ref else f"{ours}, reference {ref}"

    @property
    def tag(self) -> str:
        """Row-key suffix: runs at other precisions land in other rows of one report."""
        return self.precision.replace(", reference ", "-vs-")

    @property
    def img_size(self) -> int:
        return QUICK_IMG_SIZE if self.quick else 32

    def batch_for(self, case: Case) -> int:
        if self.sizes.batch is not None:
            return self.sizes.batch
        return case.cpu_batch if self.device.type == "cpu" else 128

    def peak_tflops(self) -> float | None:
        # The peak table holds dense bf16 tensor-core peaks: MFU only for bf16 on CUDA.
        if self.device.type != "cuda" or not self.bf16:
            return None
        return peak_tflops_for(device_name(self.device))


# --------------------------------------------------------------------------------------
# rows


def models(setup: Setup, case: Case) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, reference) of a case, with --pad-head-dim applied to ours."""
    ours, ref = model_pair(case, img_size=setup.img_size, quick=setup.quick, device=setup.device)
    for m in ours.modules():
        if hasattr(m, "pad_head_dim"):
            m.pad_head_dim = setup.pad_head_dim
    return ours, ref


def paired_rates(
    step_o: Step, step_r: Step, setup: Setup, *, calls: int, batch: int, label: str
) -> Paired:
    """samples/s of both steps over interleaved repeats of `calls` calls each."""

    def rate(step: Step):
        return lambda: batch / seconds_per_call(step, calls, setup.device)

    return interleaved(
        rate(step_o), rate(step_r), setup.sizes.repeats, label=label, unit="samples/s"
    )


def mfu(samples_per_s: float, flops_per_sample: float, peak_tflops: float | None) -> float | None:
    """Model-FLOPs utilisation: model FLOP/s over the device's peak (None: no peak known)."""
    return flops_per_sample * samples_per_s / (peak_tflops * 1e12) if peak_tflops else None


def train_rows(setup: Setup, cases: list[Case]) -> list[dict[str, Any]]:
    """Training samples/s (and MFU on CUDA) of each case, ours against the reference."""
    rows = []
    data = random_data(setup.sizes.images, setup.img_size, setup.device)
    peak = setup.peak_tflops()
    for case in cases:
        batch = setup.batch_for(case)
        print(f"train {case.name}, batch {batch}, {setup.precision}", flush=True)
        ours, ref = models(setup, case)
        macs = count_macs(ours, data.shape).total
        step_o = our_training_step(
            ours, data, batch_size=batch, bf16=setup.bf16, compile=setup.compile
        )
        step_r = reference_training_step(
            ref, data, batch_size=batch, bf16=setup.ref_bf16, num_workers=setup.num_workers
        )
        for step in (step_o, step_r):
            seconds_per_call(step, setup.sizes.warmup, setup.device)
        paired = paired_rates(
            step_o, step_r, setup, calls=setup.sizes.steps, batch=batch, label=case.key
        )
        del step_o, step_r  # ends the reference's DataLoader workers
        gc.collect()
        flops_per_sample = 3 * 2 * macs  # PaLM appendix B: backward = 2 x forward
        rows.append(
            make_row(
                f"train/{case.key}/{setup.tag}",
                figure="training samples/s",
                config=f"{case.name}, batch {batch}, {setup.precision}"
                + (", ours compiled" if setup.compile else ""),
                unit="samples/s",
                higher_is_better=True,
                ours=paired.ours,
                reference=paired.reference,
                notes=f"{count_params(ours):,} params, {macs / 1e9:.3f} GMACs/image",
                mfu_ours=mfu(paired.ours_median, flops_per_sample, peak),
                mfu_reference=mfu(paired.reference_median, flops_per_sample, peak),
                batch=batch,
                params=count_params(ours),
                macs_with_attn=macs,
                step_ms_ours=1e3 * batch / paired.ours_median,
                step_ms_reference=1e3 * batch / paired.reference_median,
            )
        )
    return rows


def paired_forward(
    ours: torch.nn.Module, ref: torch.nn.Module, setup: Setup, *, label: str
) -> tuple[Paired, Paired]:
    """(batch-1 latency in ms, large-batch images/s) of both models, interleaved repeats."""
    s = setup.sizes
    shape = (3, setup.img_size, setup.img_size)

    def latency_ms(model: torch.nn.Module, bf16: bool):
        def measure() -> float:
            runs = time_forward(
                model, shape, batch_size=1, runs=s.latency_runs, warmup=3, bf16=bf16
            )
            return 1e3 * statistics.median(runs)

        return measure

    def throughput(model: torch.nn.Module, bf16: bool):
        def measure() -> float:
            runs = time_forward(model, shape, batch_size=s.infer_batch, runs=3, warmup=1, bf16=bf16)
            return s.infer_batch / statistics.median(runs)

        return measure

    o, r = (ours, setup.bf16), (ref, setup.ref_bf16)
    lat = interleaved(latency_ms(*o), latency_ms(*r), s.repeats, label=label, unit="ms")
    thr = interleaved(throughput(*o), throughput(*r), s.repeats, label=label, unit="images/s")
    return lat, thr


def latency_rows(setup: Setup, cases: list[Case]) -> list[dict[str, Any]]:
    """Batch-1 latency and large-batch inference throughput, eval mode, no autograd."""
    rows = []
    s = setup.sizes
    for case in cases:
        print(f"latency {case.name}", flush=True)
        ours, ref = models(setup, case)
        lat, thr = paired_forward(ours, ref, setup, label=case.key)
        config = f"{case.name}, {setup.precision}"
        rows.append(
            make_row(
                f"latency/{case.key}/{setup.tag}",
                figure="latency, batch 1",
                config=config,
                unit="ms",
                higher_is_better=False,
                ours=lat.ours,
                reference=lat.reference,
                notes=f"median of {s.latency_runs} runs per repeat",
            )
        )
        rows.append(
            make_row(
                f"inference/{case.key}/{setup.tag}",
                figure=f"inference, batch {s.infer_batch}",
                config=config,
                unit="images/s",
                higher_is_better=True,
                ours=thr.ours,
                reference=thr.reference,
            )
        )
    return rows


def paired_data_rates(
    setup: Setup, data: Data, loader: DataLoader, *, batch: int, label: str
) -> Paired:
    """Our batched data step on `data` (its augment) against `loader`, a per-sample
    reference DataLoader of the same recipe, mixup/cutmix on the batch as timm's.

    The reference is timed in its loader's steady state, and our window starts only once
    its workers are idle (steady_loader_seconds): with 8 batches a window on 2 cores, the
    batches its workers had ready, and made during our window, had both sides wrong by tens
    of percent, in the reference's favour."""
    steps = {
        "ours": our_data_step(data, batch_size=batch),
        "reference": reference_data_step(
            loader, mixup=Mixup(data.augment, NUM_CLASSES), device=setup.device
        ),
    }
    in_flight = (loader.prefetch_factor or 0) * loader.num_workers
    calls = setup.sizes.data_batches

    def reference_rate() -> float:
        step = steps["reference"]
        return batch / steady_loader_seconds(
            step, in_flight=in_flight, calls=calls, device=setup.device
        )

    def our_rate() -> float:
        return batch / seconds_per_call(steps["ours"], calls, setup.device)

    for step in steps.values():
        seconds_per_call(step, 2, setup.device)
    paired = interleaved(
        our_rate, reference_rate, setup.sizes.repeats, label=label, unit="samples/s"
    )
    steps.clear()  # ends the reference's DataLoader workers
    gc.collect()
    return paired


def data_row(setup: Setup) -> dict[str, Any]:
    """The input pipeline alone: batches of augmented images (and soft targets) per second."""
    case = CASES[-1]
    batch = setup.batch_for(case)
    print(f"data pipeline, batch {batch}", flush=True)
    data = random_data(setup.sizes.images, setup.img_size, setup.device)
    loader = reference_loader(data, batch_size=batch, num_workers=setup.num_workers)
    paired = paired_data_rates(setup, data, loader, batch=batch, label="data")
    return make_row(
        "data",
        figure="data pipeline samples/s",
        config=f"CIFAR recipe (crop, flip, erase, mixup/cutmix), batch {batch}",
        unit="samples/s",
        higher_is_better=True,
        ours=paired.ours,
        reference=paired.reference,
        notes=f"reference: DataLoader, {setup.num_workers} workers",
    )


def recipe_rows(setup: Setup) -> list[dict[str, Any]]:
    """The cct300 recipe (RandomResizedCrop + RandAugment): its data path against timm's
    per-sample Pillow DataLoader, and our training step with it against the same step
    without RandAugment (what the batched RandAugment costs a step)."""
    case = CASES[-1]
    batch = setup.batch_for(case)
    print(f"data pipeline, cct300 recipe (RandAugment), batch {batch}", flush=True)
    full = recipe_augment("cct300", setup.img_size)
    data = replace(random_data(setup.sizes.images, setup.img_size, setup.device), augment=full)
    loader = reference_loader(
        data, batch_size=batch, num_workers=setup.num_workers, transform=PillowRecipeTransform
    )
    paired = paired_data_rates(setup, data, loader, batch=batch, label="data/randaugment")
    del loader  # ends its DataLoader workers before the training steps are timed
    gc.collect()
    rows = [
        make_row(
            "data/randaugment",
            figure="data pipeline samples/s",
            config=f"cct300 recipe (resized crop, flip, {full.randaugment}, erase, mix),"
            f" batch {batch}",
            unit="samples/s",
            higher_is_better=True,
            ours=paired.ours,
            reference=paired.reference,
            notes=f"reference: timm's Pillow ops per sample, DataLoader, {setup.num_workers}"
            " workers",
        )
    ]
    print(f"train {case.name} with and without RandAugment, batch {batch}", flush=True)
    model, _ = models(setup, case)
    plain = replace(data, augment=replace(full, randaugment=""))
    step_full = our_training_step(model, data, batch_size=batch, bf16=setup.bf16)
    step_plain = our_training_step(model, plain, batch_size=batch, bf16=setup.bf16)
    for step in (step_full, step_plain):
        seconds_per_call(step, setup.sizes.warmup, setup.device)
    paired = paired_rates(
        step_full, step_plain, setup, calls=setup.sizes.steps, batch=batch, label="train/recipe"
    )
    rows.append(
        make_row(
            f"train/recipe/{setup.tag}",
            figure="training samples/s",
            config=f"{case.name}, batch {batch}, cct300 recipe; reference: the same step"
            " without RandAugment",
            unit="samples/s",
            higher_is_better=True,
            ours=paired.ours,
            reference=paired.reference,
            notes="ours: with RandAugment on the device",
        )
    )
    return rows


def sharing_rows(setup: Setup) -> list[dict[str, Any]]:
    """Aggregate samples/s of N small-trial processes on one device."""
    s = setup.sizes
    batch = s.batch or 128
    print(f"sharing: {SMALL_TRIAL.name}, batch {batch}, {s.share_seconds:g} s each", flush=True)
    results = sharing.measure(
        list(s.share_counts),
        device=setup.device,
        seconds=s.share_seconds,
        quick=setup.quick,
        bf16={"ours": setup.bf16, "reference": setup.ref_bf16},
        num_workers=setup.num_workers,
        batch=batch,
        warmup=max(1, s.warmup),
    )
    rows = []
    base = {
        p: sum(r["samples_per_s"] for r in results[min(results)][p]) for p in results[min(results)]
    }
    for n, by_pipeline in results.items():
        total = {p: sum(r["samples_per_s"] for r in reports) for p, reports in by_pipeline.items()}
        rows.append(
            make_row(
                f"sharing/{n}/{setup.tag}",
                figure=f"{n} training process(es) on one device, samples/s summed",
                config=f"{SMALL_TRIAL.name}, batch {batch}, {setup.precision}",
                unit="samples/s",
                higher_is_better=True,
                ours=[total["ours"]],
                reference=[total["reference"]],
                notes=f"x{total['ours'] / base['ours']:.2f} ours, "
                f"x{total['reference'] / base['reference']:.2f} reference vs "
                f"{min(results)} process",
                processes=n,
                per_process={p: [r["samples_per_s"] for r in v] for p, v in by_pipeline.items()},
            )
        )
    return rows


# --------------------------------------------------------------------------------------
# targets


@dataclass(frozen=True)
class Target:
    what: str
    rows: tuple[str, ...]  # row keys it is computed from, without the precision suffix
    value: Callable[..., float | None]  # of those rows
    needed: str
    ok: Callable[[float], bool]
    device: str  # where the target applies
    precision: str | None = None  # the precision it applies to (None: any)


TARGETS = [
    Target(
        "training ours/ref, cct_7_3x2_32 batch 128",
        ("train/cct_7_3x2_32",),
        lambda t: t["ratio"] if t["batch"] == 128 else None,
        ">= 1.5",
        lambda v: v >= 1.5,
        "cpu",
    ),
    Target(
        "MFU ours, cct_7_3x1_32",
        ("train/cct_7_3x1_32",),
        lambda t: t["mfu_ours"],
        ">= 0.35",
        lambda v: v >= 0.35,
        "cuda",
        "bf16",
    ),
    Target(
        "step time ours, LS-MHA 32x8 / 4 heads",
        ("train/lsmha_32x8", "train/cct_7_3x1_32"),
        lambda a, b: a["step_ms_ours"] / b["step_ms_ours"] if a["batch"] == b["batch"] else None,
        "<= 1.3",
        lambda v: v <= 1.3,
        "cuda",
    ),
    Target(
        "aggregate ours, 4 trial processes / 1",
        ("sharing/4", "sharing/1"),
        lambda a, b: a["ours"] / b["ours"],
        ">= 1.5",
        lambda v: v >= 1.5,
        "cuda",
    ),
]


def targets(rows: list[dict[str, Any]], setup: Setup) -> list[dict[str, Any]]:
    """The issue's targets over the rows of this run's precision: met, not met, or why
    not judged (another device's target). Targets whose rows were not measured are left out."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for t in TARGETS:
        found = [by_key.get(f"{key}/{setup.tag}") for key in t.rows]
        if None in found or setup.quick:
            continue
        value = t.value(*found)
        what = f"{t.what}, {setup.precision} ({t.device})"
        entry = {"what": what, "value": value, "needed": t.needed, "met": None}
        if setup.device.type != t.device:
            entry["why"] = f"n/a: a {t.device} target"
        elif t.precision is not None and setup.precision != t.precision:
            entry["why"] = f"n/a: a {t.precision} target"
        elif value is None:
            entry["why"] = "n/a: not comparable"
        else:
            entry["met"] = bool(t.ok(value))
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------
# command line


class UsageError(ValueError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m cct.perf", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", type=Path, help="write DIR/bench.json and DIR/bench.md here")
    p.add_argument("--only", default=",".join(GROUPS), help=f"row groups, of {','.join(GROUPS)}")
    p.add_argument("--cases", help=f"training/latency cases, of {','.join(c.key for c in CASES)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests and CI")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="autocast of both pipelines (auto: bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--reference-precision",
        choices=["same", "fp32", "bf16"],
        default="same",
        help="the reference's, when it should differ from ours",
    )
    p.add_argument("--pad-head-dim", type=int, help="pad our head_dim to a multiple (0: never)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--num-workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument("--batch", type=int, help="training batch of every case")
    p.add_argument("--steps", type=int, help="timed training steps per repeat")
    p.add_argument("--repeats", type=int, help="interleaved repeats per side")
    p.add_argument("--share-counts", help="processes sharing the device, e.g. 1,2,4")
    p.add_argument("--share-seconds", type=float, help="training seconds per sharing process")
    p.add_argument(
        "--check",
        action="store_true",
        help="the GPU check instead of the suite: every GPU path once, ~5 min (cct/perf/check/run.py)",
    )
    p.add_argument("--budget-s", type=float, default=300.0, help="--check: total seconds")
    p.add_argument("--check-cases", help="--check: cases to run (default: all)")
    return p.parse_args(argv)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected positive integers like 1,2,4") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r}: expected positive integers like 1,2,4")
    return values


def make_setup(args: argparse.Namespace) -> tuple[Setup, list[str], list[Case]]:
    """Validated options -> (setup, row groups, cases); UsageError names a bad value."""
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in only if g not in GROUPS]
    if unknown or not only:
        raise UsageError(f"--only {args.only!r}: choose from {','.join(GROUPS)}")
    keys = {c.key: c for c in CASES}
    cases = CASES
    if args.cases is not None:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
        bad = [c for c in names if c not in keys]
        if bad or not names:
            raise UsageError(f"--cases {args.cases!r}: choose from {','.join(keys)}")
        cases = [keys[c] for c in names]
    for flag in ("num_workers", "batch", "steps", "repeats"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "num_workers" else 1):
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be positive")
    if args.share_seconds is not None and args.share_seconds <= 0:
        raise UsageError(f"--share-seconds {args.share_seconds}: must be positive")
    try:
        dev = resolve_device(args.device)
    except DeviceUnavailable:
        raise UsageError("--device cuda: no CUDA device is visible") from None
    sizes = QUICK_SIZES if args.quick else CUDA_SIZES if dev.type == "cuda" else CPU_SIZES
    changes: dict[str, Any] = {
        k: getattr(args, k) for k in ("batch", "steps", "repeats") if getattr(args, k) is not None
    }
    if args.share_counts is not None:
        changes["share_counts"] = _int_list(args.share_counts, "--share-counts")
    if args.share_seconds is not None:
        changes["share_seconds"] = args.share_seconds
    if args.pad_head_dim is not None and args.pad_head_dim < 0:
        raise UsageError(f"--pad-head-dim {args.pad_head_dim}: must be 0 (never) or positive")
    bf16 = use_bf16(args.precision, dev)
    ref_bf16 = bf16 if args.reference_precision == "same" else args.reference_precision == "bf16"
    setup = Setup(
        dev,
        bf16,
        ref_bf16,
        args.compile,
        args.num_workers,
        args.quick,
        replace(sizes, **changes),
        args.pad_head_dim,
    )
    return setup, only, cases


def run(setup: Setup, groups: list[str], cases: list[Case]) -> tuple[dict, list[dict]]:
    """Measure the asked row groups; returns (the run's description, rows)."""
    allow_tf32(setup.device)  # as the engine does
    keep_freed_memory(setup.device)
    threads = torch.get_num_threads()
    if setup.quick:  # tiny ops on a crowded CI machine: one thread does not wait on another
        torch.set_num_threads(1)
    start = load_average()
    print(f"{device_name(setup.device)}, {setup.precision}, load average {start}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        if "train" in groups:
            rows += train_rows(setup, cases)
        if "latency" in groups:
            rows += latency_rows(setup, cases)
        if "data" in groups:
            rows.append(data_row(setup))
            rows.extend(recipe_rows(setup))
        if "sharing" in groups:
            rows += sharing_rows(setup)
        info = run_info(
            "cct.perf",
            device_name(setup.device),
            start,
            precision=setup.precision,
            compile=setup.compile,
            pad_head_dim=setup.pad_head_dim,
            reference_num_workers=setup.num_workers,
            quick=setup.quick,
            sizes=asdict(setup.sizes),
        )
    finally:
        torch.set_num_threads(threads)
    return info, rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check.main(
            device=args.device,
            out=args.out,
            budget_s=args.budget_s,
            cases=args.check_cases,
            quick=args.quick,
        )
    try:
        setup, groups, cases = make_setup(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info, rows = run(setup, groups, cases)
    if args.out is not None:
        # Targets over every row of the report, rows merged by earlier runs included.
        path = args.out / JSON_NAME
        report = merge_rows(path, rows, run=info)
        report = merge_rows(path, [], targets=targets(report["rows"], setup))
        print(f"wrote {path} and {args.out / 'bench.md'}")
    else:
        report = {"runs": [info], "rows": rows, "targets": targets(rows, setup)}
    print(render_markdown(report))
    return 0
