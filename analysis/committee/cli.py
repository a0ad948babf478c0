"""Soft committee of a sweep's models: pick diverse, equally accurate members on validation,
report them once on test, and log the committee as an MLflow run (SPEC section 6).

    python -m analysis.committee --experiment quickstart
    python -m analysis.committee --sweep-run-id <id> --size 3 --diversity disagreement
    python -m analysis.committee --experiment quickstart --members <run>,<run>
    python -m analysis.committee --experiment quickstart --register digits-committee
    python -m analysis.committee --experiment quickstart --members <run> --register one-trial

Selection (analysis/committee/select.py) sees validation arrays only; test accuracy is
computed afterwards, once, for the chosen members and the committee. "Gain over best" is the
committee's test accuracy minus that of the member with the best *validation* accuracy
(picking the best member by test would peek). Bad input gives one `error: ...` line on
stderr and exit code 2, before anything is logged.

`--register NAME` also logs the committee as one MLflow pyfunc model under the committee run
and registers it as a new version of NAME (analysis/committee/registry.py); members whose
checkpoints cannot be read are refused before anything is logged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from analysis.committee.measure import Report, choose, hand_picked, measure
from analysis.committee.mlflow_run import (
    finish_committee_run,
    scratch,
    start_committee_run,
    sweep_candidates,
)
from analysis.committee.output import PLOT_NAME, committee_json, format_table, plot_curve
from analysis.committee.registry import RegistryError, prepare, register
from analysis.committee.select import DIVERSITY_TERMS, CommitteeError, TooFewCandidates
from analysis.runs import (
    COMMITTEE_JSON,
    SWEEP_TAG,
    RunLookupError,
    default_tracking_uri,
    find_sweep,
    open_store,
    quiet_mlflow,
)
from cct.cli import OneLineParser, fail

DEFAULT_MAX_SIZE = 5


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m analysis.committee",
        description="Choose a diverse soft committee from a sweep's models and measure it.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="the sweep's experiment name (its latest sweep run)")
    which.add_argument("--sweep-run-id", help="the sweep's parent run id")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<cwd>/mlflow.db)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="exactly K members")
    size.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        help="up to K members, added while the validation accuracy rises (default 5)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        help="candidates: within this many accuracy points of the best on validation "
        "(default: one binomial standard error of the best model's accuracy)",
    )
    p.add_argument(
        "--diversity",
        default=",".join(DIVERSITY_TERMS),
        help=f"comma-separated diversity terms from {','.join(DIVERSITY_TERMS)} (default all)",
    )
    p.add_argument("--combine", choices=("probs", "logits"), default="probs")
    p.add_argument(
        "--include-stopped", action="store_true", help="also trials the scheduler stopped early"
    )
    p.add_argument("--members", help="evaluate this hand-picked committee: RUN_ID,RUN_ID,...")
    p.add_argument("--out", type=Path, default=Path("committee"), help="output folder")
    p.add_argument(
        "--register",
        metavar="NAME",
        help="also log the committee as one MLflow model and register it as a new version of "
        "NAME (one trial: --members RUN_ID --register NAME)",
    )
    return p


def _terms(text: str) -> list[str]:
    terms = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in terms if t not in DIVERSITY_TERMS]
    if unknown or not terms:
        fail(f"--diversity {text!r}: choose from {', '.join(DIVERSITY_TERMS)}")
    return terms


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    diversity = _terms(args.diversity)
    if args.size is not None and args.size < 1:
        fail(f"--size {args.size}: must be >= 1")
    if args.size is None and args.max_size < 2:
        fail(f"--max-size {args.max_size}: must be >= 2 (use --size 1 for a single model)")
    if args.tolerance is not None and not 0 <= args.tolerance <= 100:
        fail(f"--tolerance {args.tolerance}: accuracy points, between 0 and 100")
    if args.register is not None and not args.register.strip():
        fail(f"--register {args.register!r}: give the registered model's name")
    quiet_mlflow()
    tracking_uri = args.tracking_uri or default_tracking_uri()

    with scratch() as tmp:
        try:
            client = open_store(tracking_uri)
            exp_id, sweep = find_sweep(
                client, experiment=args.experiment, sweep_run_id=args.sweep_run_id
            )
            members = [r.strip() for r in (args.members or "").split(",") if r.strip()]
            candidates = sweep_candidates(
                client, sweep, members=members, include_stopped=args.include_stopped,
                workdir=Path(tmp),
            )  # fmt: skip
            if args.members:
                selection = hand_picked(candidates, args.combine)
            else:
                selection = choose(
                    candidates,
                    size=args.size,
                    max_size=args.max_size,
                    tolerance=None if args.tolerance is None else args.tolerance / 100,
                    diversity=diversity,
                    combine_how=args.combine,
                )
            chosen = [candidates[i] for i in selection.members]
            packed = prepare(client, chosen, Path(tmp) / "pack") if args.register else None
        except TooFewCandidates as e:
            fail(f"{e}: raise --tolerance or use --size {e.found}" if e.found else str(e))
        except (CommitteeError, RunLookupError, RegistryError) as e:
            fail(str(e))
        report = measure(candidates, selection, diversity, args.combine)
        run_id = _publish(args, client, exp_id, sweep, candidates, report, diversity)
        if packed is not None:
            _register(args, tracking_uri, packed, sweep, run_id, report, Path(tmp) / "pack")
        return 0


def settings(args, diversity: Sequence[str]) -> dict[str, str]:
    """How the members were chosen, as recorded on the committee run: the report judges
    only the earliest run whose members the default rule chose on validation."""
    if args.members:
        selection, rule = "hand-picked", "members"
    else:
        selection = "rule"
        rule = f"size={args.size}" if args.size else f"max_size={args.max_size}"
    tolerance_rule = (
        "hand-picked"
        if args.members
        else "one binomial SE of the best, at least one validation image"
        if args.tolerance is None
        else f"given: {args.tolerance:g} points"
    )
    default = (
        not args.members
        and args.size is None
        and args.max_size == DEFAULT_MAX_SIZE
        and args.tolerance is None
        and list(diversity) == list(DIVERSITY_TERMS)
        and args.combine == "probs"
        and not args.include_stopped
    )
    return {
        "selection": selection,
        "rule": rule,
        "tolerance_rule": tolerance_rule,
        "default_settings": str(default).lower(),
    }


def _register(args, tracking_uri, packed, sweep, run_id: str, report: Report, workdir: Path):
    """Log the measured committee as one model and register it under --register's name."""
    diversity = _terms(args.diversity)
    context = {
        "sweep": sweep.data.tags.get(SWEEP_TAG, args.experiment or ""),
        "sweep_run_id": sweep.info.run_id,
        "experiment_id": sweep.info.experiment_id,
        "committee_run_id": run_id,
        "members": ",".join(m.run_id for m in packed),
        "combine": args.combine,
        "diversity": ",".join(diversity),
        "tolerance": "hand-picked" if args.members else f"{report.selection.tolerance:.6g}",
        "include_stopped": str(args.include_stopped).lower(),
        **settings(args, diversity),
        "val_accuracy": f"{report.val_accuracy:.6g}",
        "test_accuracy": f"{report.test_accuracy:.6g}",
    }
    version = register(
        tracking_uri, args.register, members=packed, combine=args.combine,
        context=context, workdir=workdir,
    )  # fmt: skip
    uri = f"models:/{args.register}/{version.version}"
    print(f"registered {uri}: mlflow.pyfunc.load_model({uri!r}) predicts uint8 images")


def _publish(args, client, exp_id, sweep, candidates, report: Report, diversity) -> str:
    """Print the table, write committee.json and the plot, log the committee run; its id."""
    sweep_name = sweep.data.tags.get(SWEEP_TAG, args.experiment or "")
    sel = report.selection
    chosen = settings(args, diversity)
    rule = chosen["rule"]
    tol = "hand-picked" if args.members else f"{100 * sel.tolerance:.2f} points"
    header = (
        f"Committee of {len(report.members)} from sweep {sweep_name!r} (run {sweep.info.run_id}): "
        f"{len(candidates)} trials, {len(sel.pool)} within {tol} of the best validation "
        f"accuracy {100 * sel.best_val:.2f}%; rule {rule}, diversity {','.join(diversity)}, "
        f"tolerance: {chosen['tolerance_rule']}"
    )
    print(format_table(report, header, args.combine))

    params = {
        **chosen,
        "members": ",".join(m.run_id for m in report.members),
        "combine": args.combine,
        "diversity": ",".join(diversity),
        "tolerance": "hand-picked" if args.members else f"{sel.tolerance:.6g}",
        "include_stopped": str(args.include_stopped).lower(),
        "sweep_run_id": sweep.info.run_id,
    }
    metrics = {
        "val_accuracy": report.val_accuracy,
        "test_accuracy": report.test_accuracy,
        "gain_over_best": report.gain_over_best,
        "val_gain_over_best": report.val_gain_over_best,
        "best_member_val_accuracy": report.member_val[0],
        "best_member_test_accuracy": report.member_test[0],
        "size": len(report.members),
        **{f"diversity_{t}": v for t, v in report.diversity.items() if v is not None},
    }
    run_id = start_committee_run(
        client, exp_id, sweep_name=sweep_name, sweep_run_id=sweep.info.run_id
    )
    try:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        context = {
            "experiment_id": exp_id,
            "sweep": sweep_name,
            "sweep_run_id": sweep.info.run_id,
            "committee_run_id": run_id,
            "combine": args.combine,
            "diversity_terms": diversity,
            **chosen,
            "tolerance": None if args.members else sel.tolerance,
            "candidate_ids": [c.run_id for c in candidates],
        }
        (out / COMMITTEE_JSON).write_text(json.dumps(committee_json(report, context), indent=2))
        plot_curve(report, out / PLOT_NAME)
        finish_committee_run(
            client, run_id, params=params, metrics=metrics,
            artifacts=[out / COMMITTEE_JSON, out / PLOT_NAME],
        )  # fmt: skip
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    print(f"\nwrote {out / COMMITTEE_JSON} and {out / PLOT_NAME}; committee run {run_id}")
    return run_id
