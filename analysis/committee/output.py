"""What the committee command shows and keeps: the printed table, committee.json, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.committee.measure import Report

PLOT_NAME = "committee_accuracy.png"


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def _fig(x: float | None) -> str:
    return "     -" if x is None else f"{x:6.3f}"


# The table, one spec for every row: (title, width, alignment). The committee's rows put their
# label across the architecture columns, so their figures land under val% and test%.
COLUMNS = (
    ("#", 2, ">"),
    ("run", 12, "<"),
    ("trial", 12, "<"),
    ("variant", 14, "<"),
    ("heads", 5, ">"),
    ("hdim", 4, ">"),
    ("embed", 5, ">"),
    ("conv", 4, ">"),
    ("depth", 5, ">"),
    ("val%", 6, ">"),
    ("test%", 6, ">"),
)
FIGURE_WIDTH = 6  # the diversity columns


def _row(cells: list[str], columns=COLUMNS) -> str:
    return " ".join(f"{c[:w]:{a}{w}}" for c, (_, w, a) in zip(cells, columns))


def _label_row(label: str, figures: list[str]) -> str:
    """A committee row: the label spans every column before val%, then the figures."""
    span = len(_row([""] * (len(COLUMNS) - 2), COLUMNS[:-2]))
    return f"{label:<{span}} " + _row(figures, COLUMNS[-2:])


def format_table(report: Report, header: str, how: str) -> str:
    """The printed report: one line per member, then the committee."""
    terms = list(report.diversity)
    extra = "".join(f" {t[:FIGURE_WIDTH]:>{FIGURE_WIDTH}}" for t in terms)
    lines = [header, "", _row([title for title, _, _ in COLUMNS]) + extra]
    for i, m in enumerate(report.members):
        a = m.arch
        cells = [
            str(i + 1),
            m.run_id[:12],
            str(m.info.get("trial_id", ""))[-12:],
            str(a.get("variant")),
            *(_int(a, k) for k in ("num_heads", "head_dim", "embed_dim", "conv_blocks", "depth")),
            _pct(report.member_val[i]),
            _pct(report.member_test[i]),
        ]
        lines.append(
            _row(cells) + "".join(f" {_fig(report.member_diversity[t][i])}" for t in terms)
        )
    name = f"committee (mean {'softmax' if how == 'probs' else 'logits'})"
    lines.append(_label_row(name, [_pct(report.val_accuracy), _pct(report.test_accuracy)]))
    gains = [f"{100 * report.val_gain_over_best:+6.2f}", f"{100 * report.gain_over_best:+6.2f}"]
    lines.append(_label_row("gain over best member", gains))
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
        "test_gain_over_each_member": [report.test_accuracy - t for t in report.member_test],
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
    # deferred: matplotlib (about 1.4 s) loads only to draw, after choosing the Agg backend
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
