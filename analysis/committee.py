"""Soft committee of a sweep's models: pick diverse, equally accurate members on validation,
report them once on test, and log the committee as an MLflow run (SPEC section 6).

    python -m analysis.committee --experiment quickstart
    python -m analysis.committee --sweep-run-id <id> --size 3 --diversity disagreement
    python -m analysis.committee --experiment quickstart --members <run>,<run>

Selection (analysis/committee_select.py) sees validation arrays only; test accuracy is
computed afterwards, once, for the chosen members and the committee. "Gain over best" is the
committee's test accuracy minus that of the member with the best *validation* accuracy
(picking the best member by test would peek). Bad input gives one `error: ...` line on
stderr and exit code 2, before anything is logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.committee_select import (
    DIVERSITY_TERMS,
    Candidate,
    CommitteeError,
    Selection,
    accuracy,
    check_same_split,
    combine,
    committee_accuracy,
    diversity_matrices,
    mean_pairwise,
    select,
)
from cct.cli import fail

PLOT_NAME = "committee_accuracy.png"


@dataclass(frozen=True)
class Report:
    """The committee measured: validation figures from selection, test figures once."""

    members: list[Candidate]
    selection: Selection
    member_val: list[float]
    member_test: list[float]
    val_accuracy: float
    test_accuracy: float
    gain_over_best: float  # test, vs the member with the best validation accuracy
    val_gain_over_best: float
    diversity: dict[str, float | None]  # mean over member pairs, unscaled
    member_diversity: dict[str, list[float | None]]  # per member: mean to the others


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cct-committee",
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
        default=5,
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
    return p


def _terms(text: str) -> list[str]:
    terms = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in terms if t not in DIVERSITY_TERMS]
    if unknown or not terms:
        fail(f"--diversity {text!r}: choose from {', '.join(DIVERSITY_TERMS)}")
    return terms


# --------------------------------------------------------------------------------------
# measuring a chosen committee


def choose(
    candidates: Sequence[Candidate],
    *,
    size: int | None,
    max_size: int,
    tolerance: float | None,
    diversity: Sequence[str],
    combine_how: str,
) -> Selection:
    """Run the selector on the candidates' validation views: no test array is passed on."""
    return select(
        [c.val_view() for c in candidates],
        size=size,
        max_size=max_size,
        tolerance=tolerance,
        diversity=diversity,
        combine_how=combine_how,  # type: ignore[arg-type]
    )


def hand_picked(candidates: Sequence[Candidate], combine_how: str) -> Selection:
    """--members: the given runs, best validation accuracy first, measured as a committee."""
    accs = [accuracy(c.val_logits, c.val_labels) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-accs[i], i))
    labels = candidates[0].val_labels
    curve = [
        committee_accuracy([candidates[i].val_logits for i in order[:k]], labels, combine_how)  # type: ignore[arg-type]
        for k in range(1, len(order) + 1)
    ]
    return Selection(
        members=order,
        pool=order,
        tolerance=float("nan"),
        best_val=accs[order[0]],
        curve=curve,
    )


def measure(
    candidates: Sequence[Candidate], selection: Selection, diversity: Sequence[str], how: str
) -> Report:
    """Committee and member accuracies (test read here, once) and the diversity figures."""
    members = [candidates[i] for i in selection.members]
    logits_val = [m.val_logits for m in members]
    logits_test = [m.test_logits for m in members]
    member_val = [accuracy(m.val_logits, m.val_labels) for m in members]
    member_test = [accuracy(m.test_logits, m.test_labels) for m in members]
    val = accuracy(combine(logits_val, how), members[0].val_labels)  # type: ignore[arg-type]
    test = accuracy(combine(logits_test, how), members[0].test_labels)  # type: ignore[arg-type]
    raw = diversity_matrices([m.val_view() for m in members], diversity)
    idx = list(range(len(members)))
    per_member = {t: [mean_pairwise_to(m, i, idx) for i in idx] for t, m in raw.items()}
    return Report(
        members=members,
        selection=selection,
        member_val=member_val,
        member_test=member_test,
        val_accuracy=val,
        test_accuracy=test,
        gain_over_best=test - member_test[0],  # members[0] has the best val accuracy
        val_gain_over_best=val - member_val[0],
        diversity={t: mean_pairwise(m, idx) for t, m in raw.items()},
        member_diversity=per_member,
    )


def mean_pairwise_to(matrix: np.ndarray, i: int, idx: Sequence[int]) -> float | None:
    """Mean of a term from member i to the others, over those where it is available."""
    row = [matrix[i, j] for j in idx if j != i and np.isfinite(matrix[i, j])]
    return float(np.mean(row)) if row else None


# --------------------------------------------------------------------------------------
# output: table, committee.json, plot


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def _fig(x: float | None) -> str:
    return "     -" if x is None else f"{x:6.3f}"


def format_table(report: Report, header: str, how: str) -> str:
    """The printed report: one line per member, then the committee."""
    terms = list(report.diversity)
    head = (
        f"{'#':>2}  {'run':<12} {'trial':<12} {'variant':<14} {'heads':>5} {'hdim':>4} "
        f"{'embed':>5} {'conv':>4} {'depth':>5} {'val%':>6} {'test%':>6}"
        + "".join(f" {t[:6]:>6}" for t in terms)
    )
    lines = [header, "", head]
    for i, m in enumerate(report.members):
        a = m.arch
        lines.append(
            f"{i + 1:>2}  {m.run_id[:12]:<12} {str(m.info.get('trial_id', ''))[-12:]:<12} "
            f"{str(a.get('variant'))[:14]:<14} {_int(a, 'num_heads'):>5} {_int(a, 'head_dim'):>4} "
            f"{_int(a, 'embed_dim'):>5} {_int(a, 'conv_blocks'):>4} {_int(a, 'depth'):>5} "
            f"{_pct(report.member_val[i])} {_pct(report.member_test[i])}"
            + "".join(f" {_fig(report.member_diversity[t][i])}" for t in terms)
        )
    pad = 2 + 2 + 12 + 1 + 10 + 1 + 14 + 6 + 5 + 6 + 5 + 6 + 1
    name = f"committee (mean {'softmax' if how == 'probs' else 'logits'})"
    lines.append(f"{name:<{pad}}{_pct(report.val_accuracy)} {_pct(report.test_accuracy)}")
    lines.append(
        f"{'gain over best member':<{pad}}{100 * report.val_gain_over_best:+6.2f} "
        f"{100 * report.gain_over_best:+6.2f}"
    )
    lines.append("")
    div = ", ".join(f"{t} {_fig(v).strip()}" for t, v in report.diversity.items())
    lines.append(f"diversity (mean over member pairs): {div or 'none'}")
    missing = report.selection.unavailable.get("labelsets")
    if missing:
        lines.append("head label sets unavailable (no shp/summary.json) for: " + ", ".join(missing))
    curve = "  ".join(f"{k + 1}: {_pct(a).strip()}" for k, a in enumerate(report.selection.curve))
    if report.selection.rejected is not None:
        curve += f"  (next: {_pct(report.selection.rejected[1]).strip()}, not added)"
    lines.append(f"committee val accuracy by size: {curve}")
    return "\n".join(lines)


def _int(arch: dict[str, Any], key: str) -> str:
    v = arch.get(key)
    return "?" if v is None else str(v)


def committee_json(report: Report, context: dict[str, Any]) -> dict[str, Any]:
    members = [
        {
            "run_id": m.run_id,
            "trial_id": m.info.get("trial_id"),
            "architecture": m.arch,
            "val_accuracy": report.member_val[i],
            "test_accuracy": report.member_test[i],
            "checkpoint": m.info.get("checkpoint"),
            "checkpoint_uri": m.info.get("checkpoint_uri"),
            "diversity": {t: v[i] for t, v in report.member_diversity.items()},
        }
        for i, m in enumerate(report.members)
    ]
    sel = report.selection
    return {
        **context,
        "members": members,
        "val_accuracy": report.val_accuracy,
        "test_accuracy": report.test_accuracy,
        "gain_over_best": report.gain_over_best,
        "val_gain_over_best": report.val_gain_over_best,
        "diversity": report.diversity,
        "candidates_within_tolerance": len(sel.pool),
        "val_accuracy_by_size": sel.curve,
        "rejected_next": None
        if sel.rejected is None
        else {"run_id": context["candidate_ids"][sel.rejected[0]], "val_accuracy": sel.rejected[1]},
        "labelsets_unavailable_for": sel.unavailable.get("labelsets", []),
    }


def plot_curve(report: Report, path: Path) -> None:
    """Committee validation accuracy against size, plus the final committee on test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = report.selection
    sizes = list(range(1, len(sel.curve) + 1))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sizes, [100 * a for a in sel.curve], "o-", label="committee, validation")
    if sel.rejected is not None:
        ax.plot([sizes[-1] + 1], [100 * sel.rejected[1]], "o", mfc="none", color="C0",
                label="next candidate (not added)")  # fmt: skip
    ax.plot([sizes[-1]], [100 * report.test_accuracy], "s", color="C1", label="committee, test")
    ax.axhline(100 * report.member_test[0], color="C1", ls=":", label="best member, test")
    ax.set_xlabel("committee size")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(range(1, sizes[-1] + (2 if sel.rejected else 1)))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# the command


def load(args: argparse.Namespace, workdir: Path) -> tuple[Any, str, Any, list[Candidate]]:
    """(client, experiment id, sweep run, candidates) for the arguments; CommitteeError on
    an unknown store/experiment/run, missing logits or a split mismatch."""
    from analysis.committee_io import (
        default_tracking_uri,
        eligible,
        find_sweep,
        load_candidate,
        open_store,
        trial_runs,
    )

    client = open_store(args.tracking_uri or default_tracking_uri())
    exp_id, sweep = find_sweep(client, experiment=args.experiment, sweep_run_id=args.sweep_run_id)
    runs = trial_runs(client, exp_id, sweep.info.run_id)
    if args.members:
        wanted = [r.strip() for r in args.members.split(",") if r.strip()]
        if len(set(wanted)) != len(wanted):
            raise CommitteeError(f"--members {args.members!r}: a run is listed twice")
        by_id = {r.info.run_id: r for r in runs}
        unknown = [w for w in wanted if w not in by_id]
        if unknown:
            raise CommitteeError(
                f"--members: not trial runs of sweep run {sweep.info.run_id}: {', '.join(unknown)}"
            )
        runs = [by_id[w] for w in wanted]
    else:
        runs = [r for r in runs if eligible(r, args.include_stopped)]
    if not runs:
        raise CommitteeError(
            f"sweep run {sweep.info.run_id} has no finished trial runs"
            + ("" if args.include_stopped else " (early-stopped ones need --include-stopped)")
        )
    candidates = [load_candidate(client, r, workdir) for r in runs]
    best = int(np.argmax([accuracy(c.val_logits, c.val_labels) for c in candidates]))
    check_same_split(candidates, reference=best)
    return client, exp_id, sweep, candidates


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    diversity = _terms(args.diversity)
    if args.size is not None and args.size < 1:
        fail(f"--size {args.size}: must be >= 1")
    if args.size is None and args.max_size < 2:
        fail(f"--max-size {args.max_size}: must be >= 2 (use --size 1 for a single model)")
    if args.tolerance is not None and not 0 <= args.tolerance <= 100:
        fail(f"--tolerance {args.tolerance}: accuracy points, between 0 and 100")
    # MLflow's progress bars, logs and warnings would break the one-line error contract
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    from analysis.committee_io import scratch

    with scratch() as tmp:
        try:
            client, exp_id, sweep, candidates = load(args, Path(tmp))
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
        except CommitteeError as e:
            fail(str(e))
        report = measure(candidates, selection, diversity, args.combine)
        return _publish(args, client, exp_id, sweep, candidates, report, diversity)


def _publish(args, client, exp_id, sweep, candidates, report: Report, diversity) -> int:
    """Print the table, write committee.json and the plot, log the committee run."""
    from analysis.committee_io import finish_committee_run, start_committee_run

    sweep_name = sweep.data.tags.get("sweep", args.experiment or "")
    sel = report.selection
    rule = (
        "members"
        if args.members
        else (f"size={args.size}" if args.size else f"max_size={args.max_size}")
    )
    tol = "hand-picked" if args.members else f"{100 * sel.tolerance:.2f} points"
    header = (
        f"Committee of {len(report.members)} from sweep {sweep_name!r} (run {sweep.info.run_id}): "
        f"{len(candidates)} trials, {len(sel.pool)} within {tol} of the best validation "
        f"accuracy {100 * sel.best_val:.2f}%; rule {rule}, diversity {','.join(diversity)}"
    )
    print(format_table(report, header, args.combine))

    params = {
        "members": ",".join(m.run_id for m in report.members),
        "combine": args.combine,
        "diversity": ",".join(diversity),
        "rule": rule,
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
            "rule": rule,
            "tolerance": None if args.members else sel.tolerance,
            "candidate_ids": [c.run_id for c in candidates],
        }
        (out / "committee.json").write_text(json.dumps(committee_json(report, context), indent=2))
        plot_curve(report, out / PLOT_NAME)
        finish_committee_run(
            client, run_id, params=params, metrics=metrics,
            artifacts=[out / "committee.json", out / PLOT_NAME],
        )  # fmt: skip
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    print(f"\nwrote {out / 'committee.json'} and {out / PLOT_NAME}; committee run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
