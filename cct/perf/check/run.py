"""The GPU check: every path only a GPU runs, once, in about five minutes, crash-proof.

    python -m cct.perf --device cuda --check --out DIR [--budget-s 300] [--cases a,b] [--quick]

Runs on a bare GPU machine from a source checkout (`PYTHONPATH=.`), with torch and numpy only
(no ray, mlflow or optuna). Each case (cct/perf/check/cases.py) runs in its own process under
a time cap, so a hang, a CUDA error or a crash costs that case alone; DIR/check.json is
rewritten after every case, so a run cut off still reports what it did; one line per case is
printed: PASS / FAIL / TIMEOUT / SKIP, its seconds, peak memory and its figure.

Without a GPU it says so in one line and exits 2. `CCT_CHECK_CPU_STANDIN=1` runs the same
cases on the CPU (cct/perf/check/gpu.py): that is how the check itself is tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cct.perf.check.cases import CAPS_S, CASES, GPU_SIZES, QUICK_SIZES, run_case
from cct.perf.check.gpu import STANDIN_ENV, find_gpu

JSON_NAME = "check.json"
DEFAULT_BUDGET_S = 300.0
MIN_CASE_S = 10.0  # less budget left than this: the remaining cases are skipped, not started

Runner = Callable[[str, bool, float], dict[str, Any]]


def run_capped(cmd: list[str], cap_s: float) -> tuple[str, str]:
    """Run `cmd` in its own process group for at most `cap_s` seconds.

    Returns (status, output): "done" with stdout, "timeout", or "crashed" with the tail of
    stderr. On timeout the whole group is killed, the case's own children included.
    """
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", ""
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-3:]
        return "crashed", f"exit code {proc.returncode}: " + " | ".join(tail)
    return "done", out


def subprocess_runner(name: str, quick: bool, cap_s: float) -> dict[str, Any]:
    """One case in a fresh Python process: `python -m cct.perf.check.run --case NAME`."""
    cmd = [sys.executable, "-m", "cct.perf.check.run", "--case", name] + (
        ["--quick"] if quick else []
    )
    status, out = run_capped(cmd, cap_s)
    if status == "timeout":
        return {"ok": False, "status": "timeout", "summary": f"stopped at its cap of {cap_s:.0f} s"}
    if status == "crashed":
        return {"ok": False, "status": "crashed", "summary": out}
    return json.loads(out.strip().splitlines()[-1])


def in_process_runner(name: str, quick: bool, cap_s: float) -> dict[str, Any]:
    """One case in this process (no cap): for tests on the CPU stand-in."""
    gpu = find_gpu()
    assert gpu is not None, "no GPU and no CPU stand-in"
    return run_case(name, gpu, QUICK_SIZES if quick else GPU_SIZES)


def status_of(result: dict[str, Any]) -> str:
    if "status" in result:
        return result["status"]
    if result.get("skipped"):
        return "skipped"
    return "pass" if result["ok"] else "fail"


def line(name: str, r: dict[str, Any]) -> str:
    """The one printed line of a case."""
    label = {
        "pass": "PASS",
        "fail": "FAIL",
        "timeout": "TIMEOUT",
        "crashed": "CRASH",
        "skipped": "SKIP",
    }
    head = label.get(r["status"], r["status"].upper())
    extra = f"{r.get('seconds', 0):.1f} s"
    if r.get("peak_mb") is not None:
        extra += f", peak {r['peak_mb']:,.0f} MB"
    return f"{head:<7} {name:<13} ({extra}) {r['summary']}"


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Atomically: a reader (or a cut-off run) never sees half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


def run_check(
    out_dir: Path,
    *,
    device: str,
    cases: list[str],
    budget_s: float,
    quick: bool,
    runner: Runner = subprocess_runner,
) -> dict[str, Any]:
    """Run `cases` in order within `budget_s`, rewriting out_dir/check.json after each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON_NAME
    report: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget_s,
        "quick": quick,
        "finished": False,
        "cases": {},
    }
    write_json(path, report)
    deadline = time.monotonic() + budget_s
    for name in cases:
        left = deadline - time.monotonic()
        if left < MIN_CASE_S:
            r = {"ok": False, "status": "not run", "summary": "no time left in the budget"}
        else:
            t0 = time.monotonic()
            r = runner(name, quick, min(CAPS_S[name], left))
            r.setdefault("seconds", time.monotonic() - t0)
            r["status"] = status_of(r)
        report["cases"][name] = r
        write_json(path, report)
        print(line(name, r), flush=True)
    report["finished"] = True
    write_json(path, report)
    return report


def parse_cases(text: str | None) -> list[str]:
    if text is None:
        return list(CASES)
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CASES]
    if bad or not names:
        raise ValueError(f"--cases {text!r}: choose from {','.join(CASES)}")
    return names


def main(*, device: str, out: Path | None, budget_s: float, cases: str | None, quick: bool) -> int:
    """`python -m cct.perf --check`; exit 0 when every case passed, 1 when one did not, 2
    when it cannot run here."""
    if device == "cpu" and os.environ.get(STANDIN_ENV) != "1":
        print(
            "error: --check is the GPU check; run it with --device cuda on a GPU machine",
            file=sys.stderr,
        )
        return 2
    gpu = find_gpu()
    if gpu is None:
        print(
            f"error: --check needs a CUDA GPU and none is visible (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'})",
            file=sys.stderr,
        )
        return 2
    try:
        names = parse_cases(cases)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if budget_s <= 0:
        print(f"error: --budget-s {budget_s:g}: must be positive", file=sys.stderr)
        return 2
    out_dir = out or Path("perf-check")
    print(f"GPU check on {gpu.name()}, torch {torch.__version__}; writing {out_dir / JSON_NAME}")
    report = run_check(out_dir, device=gpu.name(), cases=names, budget_s=budget_s, quick=quick)
    statuses = [r["status"] for r in report["cases"].values()]
    passed = sum(s == "pass" for s in statuses)
    print(f"{passed} of {len(statuses)} cases passed; figures in {out_dir / JSON_NAME}")
    return 0 if all(s in ("pass", "skipped") for s in statuses) else 1


def case_main(argv: list[str]) -> int:
    """The per-case process: `python -m cct.perf.check.run --case NAME [--quick]`; prints the
    result as one JSON line last."""
    if len(argv) < 2 or argv[0] != "--case" or argv[1] not in CASES:
        print(f"error: expected --case NAME with NAME one of {','.join(CASES)}", file=sys.stderr)
        return 2
    gpu = find_gpu()
    if gpu is None:
        print("error: no CUDA GPU is visible", file=sys.stderr)
        return 2
    sizes = QUICK_SIZES if "--quick" in argv[2:] else GPU_SIZES
    print(json.dumps(run_case(argv[1], gpu, sizes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(case_main(sys.argv[1:]))
