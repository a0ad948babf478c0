"""The benchmark report: rows of ours-vs-reference figures in `bench.json`, rendered as a
markdown table in `bench.md` next to it.

Several commands add rows to one report (`python -m cct.perf`, `python -m analysis.bench
--merge-into`, `python -m orchestrator.bench.overhead --out`): each calls `merge_rows`, which
replaces rows with the same key, keeps the others, records the run (command, machine, load
average) and re-renders the markdown from the JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cct.perf.timing import load_average

JSON_NAME, MD_NAME = "bench.json", "bench.md"


def make_row(
    key: str,
    *,
    figure: str,
    config: str,
    unit: str,
    higher_is_better: bool,
    ours: list[float],
    reference: list[float],
    notes: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One figure: the medians of both sides' repeats and their ratio ours / reference."""
    o = statistics.median(ours) if ours else None
    r = statistics.median(reference) if reference else None
    return {
        "key": key,
        "figure": figure,
        "config": config,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ours": o,
        "reference": r,
        "ratio": o / r if o is not None and r else None,
        "ours_repeats": list(ours),
        "reference_repeats": list(reference),
        "notes": notes,
        "loadavg": load_average(),  # when the measurement ended
        **extra,
    }


def run_info(module: str, device: str, loadavg_start: list[float] | None, **extra: Any) -> dict:
    """What one command that wrote rows ran on, and how busy the machine was."""
    return {
        "command": " ".join(["python -m", module, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": device,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_start": loadavg_start,
        "loadavg_end": load_average(),
        **extra,
    }


def merge_rows(
    path: Path,
    rows: list[dict[str, Any]],
    *,
    run: dict[str, Any] | None = None,
    targets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Add `rows`, `run` and `targets` to the report at `path` (bench.json, created if
    missing) and rewrite the markdown beside it. A row whose key is already there replaces
    the old one in place, a target with the same `what` likewise; runs accumulate."""
    path = Path(path)
    report = json.loads(path.read_text()) if path.exists() else {}
    report = {"runs": [], "rows": [], "targets": [], **report}
    by_key = {row["key"]: i for i, row in enumerate(report["rows"])}
    for row in rows:
        if row["key"] in by_key:
            report["rows"][by_key[row["key"]]] = row
        else:
            by_key[row["key"]] = len(report["rows"])
            report["rows"].append(row)
    if run is not None:
        report["runs"].append(run)
    if targets is not None:
        by_what = {t["what"]: t for t in report["targets"]}
        by_what.update({t["what"]: t for t in targets})
        report["targets"] = list(by_what.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    (path.parent / MD_NAME).write_text(render_markdown(report))
    return report


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{100 * value:.1f}%"
    digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 1 else 3
    return f"{value:,.{digits}f} {unit}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _mfu(row: dict[str, Any]) -> str:
    if "mfu_ours" not in row:
        return ""
    return f"{fmt(row['mfu_ours'], '%')} / {fmt(row.get('mfu_reference'), '%')}"


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown: the runs that wrote it, one table of rows, then the
    targets. A row's `load` is the 1-minute load average when its measurement ended."""
    lines = ["# Benchmarks: ours vs a plain reference pipeline", ""]
    for run in report.get("runs", []):
        lines.append(
            f"- `{run['command']}` — {run['device']}, torch {run['torch']}, {run['cpus']} CPUs, "
            f"{run['time']}; load average {run['loadavg_start']} -> {run['loadavg_end']}"
        )
    lines += [
        "",
        "| figure | config | ours | reference | ours/ref | MFU ours / ref | load | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        figure = row["figure"] + ("" if row["higher_is_better"] else " (lower is better)")
        load = row.get("loadavg")
        lines.append(
            f"| {figure} | {row['config']} | {fmt(row['ours'], row['unit'])} | "
            f"{fmt(row['reference'], row['unit'])} | {_ratio(row.get('ratio'))} | {_mfu(row)} | "
            f"{'' if load is None else f'{load[0]:.1f}'} | {row['notes']} |"
        )
    if report.get("targets"):
        lines += ["", "| target | value | needed | met |", "|---|---|---|---|"]
        for t in report["targets"]:
            value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
            met = {True: "yes", False: "NO", None: t.get("why", "n/a")}[t["met"]]
            lines.append(f"| {t['what']} | {value} | {t['needed']} | {met} |")
    return "\n".join(lines) + "\n"
