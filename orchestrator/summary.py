"""The end of a sweep: the best trials (the Pareto front for several objectives), logged to
the parent run and printed with the next commands to run."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from analysis.committee.select import candidate_pool
from analysis.importance import format_importances, importances
from analysis.pareto import pareto_front
from analysis.runs import (
    FAILURE_TAG,
    LOCAL_UI,
    OVER_BUDGET,
    PRICED_OUT_TAG,
    SWEEP_DIR,
    SWEEP_SUMMARY_ARTIFACT,
    TRIAL_ID_TAG,
    trial_runs,
    ui_runs_url,
)
from orchestrator.cost import COST, HOURS_KEYS, cost, format_compute, sweep_compute
from search_spaces import SweepSpec

SHOWN = ("val_accuracy", "test_accuracy", "latency_ms", "macs", "params")


def summarize(
    spec: SweepSpec,
    results,
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    *,
    interrupted: bool = False,
) -> dict[str, Any]:
    """The sweep's trials, its best (or Pareto front), logged to the parent run. After an
    interruption a trial short of its end is "interrupted", never among the best."""
    unfinished = "interrupted" if interrupted else "stopped"
    # The hours come from MLflow: Tune's last result of a trial predates its analysis.
    runs = trial_runs(client, experiment_id, parent_run_id)
    hours = {
        run.data.tags.get(TRIAL_ID_TAG): {k: run.data.metrics.get(k) for k in HOURS_KEYS}
        for run in runs
    }
    rows = []
    errored = 0
    for result in results:
        m = result.metrics or {}
        over = m.get(FAILURE_TAG) == OVER_BUDGET  # its latency, before the first step
        failed = not over and (result.error is not None or FAILURE_TAG in m)  # no retry
        errored += failed
        done = "done" if "test_accuracy" in m else unfinished
        rows.append(
            {
                "trial_id": m.get("trial_id"),
                "config": dict(result.config or {}),
                "status": "over_budget" if over else ("error" if failed else done),
                "epochs": m.get("epoch"),
                **{k: m.get(k) for k in SHOWN},
                **hours.get(m.get("trial_id"), {}),
            }
        )
        price = cost(rows[-1], spec.resources)
        if price is not None:
            rows[-1][COST] = price
    finished = [r for r in rows if r["status"] == "done"]
    first, mode = spec.objectives[0]
    ranked = sorted(  # never a failed one (its objectives are NaN) or an interrupted one
        (r for r in rows if r["status"] in ("done", "stopped") and r.get(first) is not None),
        key=lambda r: r[first],
        reverse=mode == "max",
    )
    # the validation split's size (logged at each trial's start): the committee hint's rule
    n_val = next((int(r.data.metrics["n_val"]) for r in runs if "n_val" in r.data.metrics), None)
    summary = {
        "sweep": spec.name,
        "n_val": n_val,
        "experiment_id": experiment_id,
        "objectives": [list(o) for o in spec.objectives],
        "trials": rows,
        "best": ranked[:5],
        "pareto_front": pareto_front(finished, spec.objectives) if len(spec.objectives) > 1 else [],
        "finished": len(finished),
        "errored": errored,
        "importance": importances(spec.search, rows, spec.objectives),
        "compute": sweep_compute(hours.values(), spec.resources),  # every trial run's
        "priced_out": priced_out(runs) if spec.budget.active else None,
    }
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / Path(SWEEP_SUMMARY_ARTIFACT).name).write_text(
            json.dumps(summary, indent=2, default=str)
        )
        client.log_artifacts(parent_run_id, d, SWEEP_DIR)
    for name in ("val_accuracy", "test_accuracy"):
        values = [r[name] for r in finished if r.get(name) is not None]
        if values:
            client.log_metric(parent_run_id, f"best_{name}", max(values))
    client.log_metric(parent_run_id, "trials_finished", len(finished))
    for key, n in (summary["priced_out"] or {}).items():
        client.log_metric(parent_run_id, f"over_budget_{key}", n)
    for key in (*HOURS_KEYS, COST):
        if key in summary["compute"]:
            client.log_metric(parent_run_id, key, summary["compute"][key])
    for metric, entry in summary["importance"].items():
        for key, value in entry.get("values", {}).items():
            client.log_metric(parent_run_id, f"importance.{metric}.{key}", value)
    return summary


def priced_out(runs: list) -> dict[str, int]:
    """How many configurations the budget kept from training: priced out by the driver
    (params, MACs; no Tune trial) and stopped by their latency before the first step."""
    over = [r for r in runs if r.data.tags.get(FAILURE_TAG) == OVER_BUDGET]
    driver = sum(r.data.tags.get(PRICED_OUT_TAG) == "true" for r in over)
    return {"priced": driver, "latency": len(over) - driver}


def format_priced_out(counts: dict[str, int], spec: SweepSpec) -> str:
    """One line on what the budget skipped, and whether it counted toward num_samples."""
    counted = (
        "each counted toward num_samples (random) or used its grid point"
        if spec.tune.searcher in ("random", "grid")
        else "not counted toward num_samples: the searcher asked again"
    )
    return (
        f"Budget: {counts['priced']} configuration(s) priced out by params/MACs before any"
        f" trial ({counted}), {counts['latency']} stopped by their latency before the first"
        " step; none trained (MLflow runs FAILED, failure_reason=over_budget)."
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_best(summary: dict[str, Any], *, title: str) -> None:
    rows = summary["pareto_front"] or summary["best"]
    print(f"\n{title}:")
    for r in rows:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(r["config"].items()))
        metrics = "  ".join(f"{k} {_fmt(r[k])}" for k in SHOWN if r.get(k) is not None)
        print(f"  {r['trial_id']}  {metrics}  [{params}]")


def print_summary(spec: SweepSpec, summary: dict[str, Any], *, tracking_uri: str) -> None:
    title = "Pareto front" if summary["pareto_front"] else "Best trials"
    print_best(
        summary,
        title=f"{title} of sweep {spec.name!r} ({summary['finished']} finished, "
        f"{summary['errored']} errored)",
    )
    print(f"\n{format_compute(summary['compute'], spec.resources)}")
    if summary.get("priced_out") is not None:
        print(format_priced_out(summary["priced_out"], spec))
    if spec.search:
        print("\nWhich searched keys mattered (share of each objective's variance):")
        print("\n".join(format_importances(summary["importance"])))
    print(f"\nMLflow store: {tracking_uri}  (experiment {spec.experiment!r})")
    exp_id = summary["experiment_id"]
    if tracking_uri.startswith("sqlite:///"):
        print(f"  browse:     mlflow ui --backend-store-uri {tracking_uri}")
        print(f"              then {ui_runs_url(LOCAL_UI, exp_id)}")
    elif tracking_uri.startswith(("http://", "https://")):
        print(f"  browse:     {ui_runs_url(tracking_uri, exp_id)}")
    print("\n".join(committee_hint(spec, summary)))
    print(f"  report:     python -m analysis.report --experiment {spec.experiment}")


def committee_hint(spec: SweepSpec, summary: dict[str, Any]) -> list[str]:
    """The committee command as it will work: with the default rule (candidates within one
    binomial standard error of the best validation accuracy) when that finds 2 candidates,
    else with the --tolerance that admits the runner-up, and why."""
    cmd = f"  committee:  python -m analysis.committee --experiment {spec.experiment}"
    accs = sorted(
        (r["val_accuracy"] for r in summary["trials"] if r["status"] == "done"
         and r.get("val_accuracy") is not None),
        reverse=True,
    )  # fmt: skip
    n_val = summary.get("n_val")
    if len(accs) < 2 or not n_val:
        return [cmd]
    pool, tol = candidate_pool(accs, n_val)  # the committee's own default rule
    if len(pool) >= 2:
        return [cmd]
    gap = math.ceil(round(100 * (accs[0] - accs[1]), 6) * 100) / 100  # points, rounded up
    return [
        f"{cmd} --tolerance {gap:.2f}",
        f"              (the default tolerance, one standard error: {100 * tol:.2f} points on"
        f" {n_val} validation images, holds only the best trial; the report judges a"
        " committee made by the default rule only)",
    ]


def sweep_description(spec: SweepSpec) -> str:
    """The sweep run's description in the MLflow UI (Markdown): what was searched and how to
    read the runs under it."""
    searched = ", ".join(f"`{key}`" for key, _ in spec.search) or "nothing (fixed config)"
    objectives = ", ".join(f"{metric} ({mode})" for metric, mode in spec.objectives)
    return "\n".join(
        [
            f"**Sweep `{spec.name}`** of `{spec.base.model.variant}` on"
            f" `{spec.base.data.dataset}`: searcher `{spec.tune.searcher}` over {searched};"
            f" objective {objectives}.",
            "",
            "- Each child run is one trial: its params are the searched values, its metrics"
            " come every epoch (`val_accuracy`, `train_loss`, ...), and its final epoch adds"
            " `test_accuracy`, latency and the SHP/SNR analysis (artifacts `shp/`).",
            "- Trials tagged `interrupted=true` were stopped by Ctrl-C or SIGTERM; the same"
            " command with `--resume` continues them. `failure_reason` says why a trial failed.",
            f"- The verdicts: `python -m analysis.report --experiment {spec.experiment}`"
            " (logged under this run's `report/`); committees:"
            f" `python -m analysis.committee --experiment {spec.experiment}`.",
        ]
    )
