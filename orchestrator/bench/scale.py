"""How the bookkeeping grows with a sweep's size: `python -m orchestrator.bench.scale`.

    python -m orchestrator.bench.scale --cache ~/.cache/cct-scale
    python -m orchestrator.bench.scale --cache DIR --sizes 100,300,1000 \\
        --postgres postgresql://postgres@127.0.0.1:5432/postgres --out DIR

For each size (trials) and store kind (sqlite; PostgreSQL when --postgres names a server
whose user may create databases) it builds, once, a store of that many finished trials with
digits-sized artifacts (orchestrator/bench/scale_store.py: logits of the held-out split,
SHP summaries) and keeps it in --cache, keyed by kind and size (a PostgreSQL store is the
database `scale_<size>` on that server, its artifacts in the cache folder). Each timing runs
on a scratch copy of the cached store (a file copy; `CREATE DATABASE ... TEMPLATE`), so the
committee and report runs it logs never change the cache. It times:

- committee: `python -m analysis.committee --experiment scale --tolerance 5` (a process,
  wall seconds);
- report: `python -m analysis.report --experiment scale --no-remeasure` (a process);
- summary: orchestrator.summary.summarize, the end-of-sweep summary with importance;
- Optuna: the sweep's searcher (BudgetAwareOptunaSearch, TPE, on the sweep's journal
  storage) asking and telling 1,000 trials; the median seconds per trial around trial
  100, 300 and 1,000 (the study lives in a journal file whichever MLflow store is used).

Prints a Markdown table and writes it with every figure to --out (scale.md, scale.json).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse, urlunparse

import numpy as np
from mlflow.tracking import MlflowClient

from analysis.runs import find_sweep
from cct.cli import OneLineParser, fail
from cct.perf.timing import load_average
from orchestrator.bench.scale_store import EXPERIMENT, bench_spec, build_store, val_accuracy_of
from orchestrator.study import StudyPlace, prepare_study
from orchestrator.summary import summarize
from orchestrator.tune_objects import make_searcher, param_space

SIZES = (100, 300, 1000)
COMMITTEE_TOLERANCE = 5.0  # accuracy points
CACHE_VERSION = 1  # bump when scale_store writes something else: older caches are rebuilt


# --------------------------------------------------------------------------------------
# the stores: cached, copied for each timing


def _with_db(url: str, name: str) -> str:
    """MLflow's URI of database `name` on the server of `url`, through psycopg (3)."""
    parts = urlparse(url)._replace(scheme="postgresql+psycopg", path=f"/{name}")
    return urlunparse(parts)


def _libpq(url: str) -> str:
    """The URL as libpq reads it (no SQLAlchemy driver suffix)."""
    return urlunparse(urlparse(url)._replace(scheme="postgresql"))


def _pg_admin(url: str, *statements: str) -> list:
    """Run statements on the server of `url` outside a transaction (CREATE DATABASE needs
    that); the rows of the last one."""
    # deferred: psycopg comes with the `postgres` extra, needed only with --postgres
    import psycopg

    with psycopg.connect(_libpq(url), autocommit=True) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        return cur.fetchall() if cur.description else []


def store_uri(kind: str, n: int, folder: Path, postgres: str | None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'mlflow.db'}"
    return _with_db(postgres or "", f"scale_{n}")


def cached(kind: str, n: int, folder: Path, postgres: str | None) -> bool:
    """The cache folder's record says the store is complete (and, for PostgreSQL, its
    database is still on the server)."""
    meta = folder / "store.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("version") != CACHE_VERSION:
        return False
    if kind == "sqlite":
        return (folder / "mlflow.db").is_file()
    rows = _pg_admin(postgres or "", f"SELECT 1 FROM pg_database WHERE datname = 'scale_{n}'")
    return bool(rows)


def ensure_store(kind: str, n: int, cache: Path, postgres: str | None) -> Path:
    """The cache folder of the (kind, n) store, built first if missing."""
    folder = cache / f"{kind}-{n}"
    if cached(kind, n, folder, postgres):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if kind == "postgresql":
        _pg_admin(
            postgres or "", f"DROP DATABASE IF EXISTS scale_{n}", f"CREATE DATABASE scale_{n}"
        )
    print(f"  building the {kind} store of {n} trials in {folder}", flush=True)
    t0 = time.perf_counter()
    rows, seconds = build_store(store_uri(kind, n, folder, postgres), n, folder / "artifacts")
    meta = {"version": CACHE_VERSION, "kind": kind, "trials": n,
            "build_s": time.perf_counter() - t0, "write_s_per_trial": seconds}  # fmt: skip
    (folder / "rows.json").write_text(json.dumps(rows))
    (folder / "store.json").write_text(json.dumps(meta))  # last: the store is complete
    return folder


@contextmanager
def scratch_copy(kind: str, n: int, folder: Path, postgres: str | None, tmp: Path):
    """A store URI holding a copy of the cached store, dropped afterwards."""
    if kind == "sqlite":
        shutil.copyfile(folder / "mlflow.db", tmp / "mlflow.db")
        yield f"sqlite:///{tmp / 'mlflow.db'}"
        return
    name = f"scale_{n}_scratch"
    _pg_admin(postgres or "", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
              f"CREATE DATABASE {name} TEMPLATE scale_{n}")  # fmt: skip
    try:
        yield _with_db(postgres or "", name)
    finally:  # FORCE: the summary's client in this process still holds a connection
        _pg_admin(postgres or "", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --------------------------------------------------------------------------------------
# what is timed


def time_command(args: list[str], cwd: Path) -> float:
    """Wall seconds of `python -m <args>` in cwd; its output shown only when it fails."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"python -m {' '.join(args)} exited {done.returncode}:\n{tail}")
    return seconds


def time_summary(uri: str, rows: list[dict[str, Any]], workdir: Path) -> float:
    """Seconds of orchestrator.summary.summarize over the store's sweep, with Tune-like
    results built from the trials' rows."""
    client = MlflowClient(uri)
    exp_id, sweep = find_sweep(client, experiment=EXPERIMENT, sweep_run_id=None)
    results = [
        SimpleNamespace(metrics={**r, "trial_id": r["trial_id"]}, config=r["config"], error=None)
        for r in rows
    ]
    t0 = time.perf_counter()
    summarize(bench_spec(workdir), results, client, exp_id, sweep.info.run_id)
    return time.perf_counter() - t0


def time_store(kind: str, n: int, folder: Path, postgres: str | None) -> dict[str, float]:
    """committee, report and summary seconds on a scratch copy of the cached store."""
    rows = json.loads((folder / "rows.json").read_text())
    with tempfile.TemporaryDirectory(prefix="cct-scale-") as d:
        tmp = Path(d)
        with scratch_copy(kind, n, folder, postgres, tmp) as uri:
            at = ["--experiment", EXPERIMENT, "--tracking-uri", uri]
            # 5 points: a pool of a fifth or more of the trials (the default, one standard
            # error of the best, leaves a single candidate among these synthetic accuracies)
            pick = ["--tolerance", str(COMMITTEE_TOLERANCE), "--out", "committee"]
            committee = time_command(["analysis.committee", *at, *pick], tmp)
            report = time_command(
                ["analysis.report", *at, "--no-remeasure", "--out", "report.html"], tmp
            )
            summary = time_summary(uri, rows, tmp)
    return {"committee_s": committee, "report_s": report, "summary_s": summary}


def time_optuna(sizes: list[int], workdir: Path) -> dict[int, float]:
    """Median seconds of one ask + tell of the sweep's searcher around each size (a window
    of 20 trials ending there), over one study grown to the largest size."""
    spec = bench_spec(workdir)
    place = StudyPlace(str(workdir / "optuna.journal"), "scale")
    prepare_study(place, spec, None)
    searcher = make_searcher(spec, place)
    searcher.set_search_properties(None, None, param_space(spec))
    rng = np.random.default_rng(0)
    per_trial = []
    for i in range(max(sizes)):
        trial_id = f"t{i:05d}"
        t0 = time.perf_counter()
        config = searcher.suggest(trial_id)
        val = val_accuracy_of(config, rng)
        searcher.on_trial_complete(
            trial_id, result={"val_accuracy": val, "test_accuracy": val, "epoch": 1}
        )
        per_trial.append(time.perf_counter() - t0)
    return {n: statistics.median(per_trial[max(0, n - 20) : n]) for n in sizes}


# --------------------------------------------------------------------------------------
# the table


def table(found: dict[str, dict[int, dict[str, float]]], optuna: dict[int, float]) -> str:
    lines = [
        "| trials | store | committee s | report s | summary s | Optuna ask+tell ms/trial |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for kind, by_size in found.items():
        for n, t in sorted(by_size.items()):
            lines.append(
                f"| {n:,} | {kind} | {t['committee_s']:.1f} | {t['report_s']:.1f} | "
                f"{t['summary_s']:.1f} | {1e3 * optuna[n]:.0f} |"
            )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        fail(f"--sizes {text!r}: give trial counts such as 100,300,1000")
    if not sizes or sizes[0] < 2:
        fail(f"--sizes {text!r}: each size must be at least 2")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m orchestrator.bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="where the built stores are kept")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="trial counts (100,300,1000)")
    p.add_argument(
        "--postgres",
        help="postgresql://user[:password]@host:port/db of a server where the user may create "
        "databases: also build and time stores there",
    )
    p.add_argument(
        "--kinds", default="sqlite,postgresql", help="store kinds (postgresql needs --postgres)"
    )
    p.add_argument("--out", type=Path, help="folder for scale.md and scale.json")
    p.add_argument(
        "--build-only", action="store_true", help="build the cached stores, time nothing"
    )
    args = p.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    if args.postgres and not args.postgres.startswith(("postgresql://", "postgresql+")):
        fail(f"--postgres {args.postgres!r}: give a postgresql:// URL")
    kinds = [k for k in ("sqlite", "postgresql") if k in args.kinds.split(",")]
    if not args.postgres:
        kinds = [k for k in kinds if k != "postgresql"]
    if not kinds:
        fail(f"--kinds {args.kinds!r}: sqlite and/or postgresql (the latter with --postgres)")
    cache = args.cache.expanduser().resolve()
    folders = {(k, n): ensure_store(k, n, cache, args.postgres) for k in kinds for n in sizes}
    if args.build_only:
        return 0
    start = load_average()
    print(f"timing (load average {start})", flush=True)
    with tempfile.TemporaryDirectory(prefix="cct-scale-optuna-") as d:
        optuna = time_optuna(sizes, Path(d))
    found: dict[str, dict[int, dict[str, float]]] = {k: {} for k in kinds}
    for (kind, n), folder in folders.items():
        found[kind][n] = time_store(kind, n, folder, args.postgres)
        print(f"  {kind} {n}: {found[kind][n]}", flush=True)
    md = table(found, optuna)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.md").write_text(md + "\n")
        doc = {"stores": found, "optuna_s_per_trial": optuna,
               "load_average": {"start": start, "end": load_average()}}  # fmt: skip
        (args.out / "scale.json").write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
