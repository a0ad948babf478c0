"""One self-contained HTML page on a sweep: accuracy against the knobs, SNR along the blocks,
head specialisation, latency and MACs against accuracy, the committee, and a verdict per claim
of SPEC section 1. Also logged as `report/report.html` on the sweep's parent run.

    python -m analysis.report --experiment quickstart
    python -m analysis.report --sweep-run-id <id> --out sweep.html --no-remeasure
    python -m analysis.report --calibrate     # the verdicts' false-positive rate and power

The finalists (Pareto front of validation accuracy against MACs, and the best trial per
conv_blocks) are re-measured one at a time from their checkpoints unless --no-remeasure.
Bad input (an unknown experiment or run, a sweep without a finished trial) is one
`error: ...` line on stderr and exit code 2, before anything is written or logged.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from analysis.report.calibrate import main as calibrate
from analysis.report.collect import ReportError, SweepData, collect
from analysis.report.evidence import verdicts
from analysis.report.html import Page, render
from analysis.report.latency import latencies
from analysis.report.sections import (
    accuracy_section,
    committee_section,
    heads_section,
    latency_section,
    methods_section,
    search_section,
    snr_section,
    trials_section,
)
from analysis.runs import REPORT_DIR, RunLookupError, default_tracking_uri, open_store, quiet_mlflow
from analysis.shp.mlflow_io import download_checkpoint
from cct.cli import OneLineParser, fail


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="the sweep's experiment name (its latest sweep run)")
    which.add_argument("--sweep-run-id", help="the sweep's parent run id")
    which.add_argument(
        "--calibrate",
        action="store_true",
        help="simulate sweeps where each claim is false and where it is true, through the "
        "verdict functions, and print each claim's false-positive rate and power",
    )
    p.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<cwd>/mlflow.db)")
    p.add_argument(
        "--no-remeasure",
        action="store_true",
        help="use the latency logged during the sweep instead of re-measuring the finalists",
    )
    p.add_argument(
        "--latency-runs", type=int, default=100, help="timed forwards per finalist (default 100)"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="for re-measuring")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads for re-measuring (default 1)"
    )
    p.add_argument("--no-log", action="store_true", help="do not log the page to the parent run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calibrate:
        return calibrate()
    if args.latency_runs < 1:
        fail(f"--latency-runs {args.latency_runs}: must be >= 1")
    if args.threads < 1:
        fail(f"--threads {args.threads}: must be >= 1")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            fail("--device cuda: no CUDA device is visible")
    if args.out.is_dir():
        fail(f"--out {args.out}: is a folder; give a file name such as report.html")

    quiet_mlflow()

    uri = args.tracking_uri or default_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="cct-report-") as tmp:
        try:
            client = open_store(uri)
            data = collect(
                client,
                experiment=args.experiment,
                sweep_run_id=args.sweep_run_id,
                workdir=Path(tmp),
            )
        except (ReportError, RunLookupError) as e:
            fail(str(e))
        page = build_page(
            data,
            tracking_uri=uri,
            fetch=None if args.no_remeasure else _fetcher(uri),
            latency_runs=args.latency_runs,
            device=args.device,
            threads=args.threads,
            regenerate=f"--sweep-run-id {data.sweep_run_id}"
            if args.sweep_run_id
            else f"--experiment {data.experiment}",
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
        if not args.no_log:
            staged = Path(tmp) / "stage" / "report.html"
            staged.parent.mkdir()
            shutil.copyfile(args.out, staged)
            client.log_artifact(data.sweep_run_id, str(staged), REPORT_DIR)
    where = "" if args.no_log else f"; logged as {REPORT_DIR}/report.html on run "
    print(f"wrote {args.out}{where}{'' if args.no_log else data.sweep_run_id}")
    return 0


def _fetcher(uri: str) -> Callable[[str, Path], Path]:
    """run id, folder -> the run's downloaded `checkpoint/` folder (FileNotFoundError if none)."""

    def fetch(run_id: str, dst: Path) -> Path:

        try:
            return download_checkpoint(run_id, dst, uri)
        except MlflowException as e:
            raise FileNotFoundError(f"checkpoint of run {run_id}: {e.message}") from None

    return fetch


def build_page(
    data: SweepData,
    *,
    tracking_uri: str,
    fetch: Callable[[str, Path], Path] | None,
    latency_runs: int = 100,
    device: str = "cpu",
    threads: int = 1,
    regenerate: str = "",
) -> str:
    """Latencies (re-measured through `fetch`, or the logged ones when None), verdicts,
    sections, HTML."""

    lat = latencies(data.trials, fetch, runs=latency_runs, device=device, threads=threads)
    verdict_list = verdicts(data, lat)
    sections = [
        accuracy_section(data),
        snr_section(data),
        heads_section(data),
        latency_section(data, lat, remeasured=fetch is not None),
        committee_section(data),
        search_section(data),
        trials_section(data, lat),
        methods_section(verdict_list),
    ]
    left = sum(data.not_finished.values())
    best = data.best
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = Page(
        title=f"Sweep report — {data.sweep_name or data.experiment}",
        subtitle=[
            f"Experiment {data.experiment!r} · sweep run {data.sweep_run_id} · "
            f"{len(data.trials)} finished trials" + (f" ({left} not finished)" if left else ""),
            f"Best by validation: {best.name} (trial {best.trial_id}) — "
            f"{_pct(best.metric('val_accuracy'))} validation, "
            f"{_pct(best.metric('test_accuracy'))} test",
            f"Store {tracking_uri} · generated {now}",
        ],
        verdicts=verdict_list,
        sections=sections,
        footer=[
            "Claims from SPEC section 1 (Koresh et al. 2025; Gross et al. 2025, Physica A). "
            "Verdicts are mechanical: read each with the figure it points to.",
            f"Regenerate: python -m analysis.report {regenerate}".rstrip(),
        ],
    )
    return render(page)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"
