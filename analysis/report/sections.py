"""The page's sections, from the collected sweep (report_data), the latencies (report_latency)
and the verdicts: each a picture (report_figures) with its numbers in a table, or a message
saying what is missing and why."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from analysis.report import figures as figs
from analysis.report.collect import Committee, SweepData, Trial, arch_label
from analysis.report.evidence import (
    block_curves,
    by_arch,
    committee_figures,
    head_blocks,
    last_head_block,
    values,
)
from analysis.report.html import Section, Table
from analysis.report.latency import Latency, finalists
from analysis.report.stats import paired_difference, wilson
from analysis.report.verdicts import (
    CONV_RULE,
    MAX_HEAD_OVERLAP,
    MIN_HEAD_SNR,
    RULES_VERSION,
    SEQPOOL_RULE,
    SNR_RULE,
    THRESHOLDS,
    Verdict,
    head_counts,
    head_overlap,
    small_cluster_max,
)

KNOBS = ("num_heads", "embed_dim", "conv_blocks")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def mean_sd(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return pct(xs[0])
    return f"{pct(statistics.fmean(xs))} ± {100 * statistics.pstdev(xs):.2f}"


def pct_ci(acc: float | None, n: int | None) -> str:
    """An accuracy with its 95 % Wilson interval, e.g. "97.22 [94.1, 98.7]"."""
    if acc is None:
        return "-"
    if not n:
        return pct(acc)
    lo, hi = wilson(round(acc * n), n)
    return f"{pct(acc)} [{100 * lo:.1f}, {100 * hi:.1f}]"


def missing_shp(trials: Sequence[Trial]) -> list[str]:
    """Messages naming the trials without analysis and those whose analysis was refused."""
    out = [f"{t.trial_id} (run {t.run_id[:8]}): {t.shp_refused}" for t in trials if t.shp_refused]
    lacking = [t for t in trials if not (t.shp and t.shp.blocks)]
    if not lacking:
        return out
    names = ", ".join(f"{t.trial_id} (run {t.run_id[:8]})" for t in lacking)
    return [
        f"{len(lacking)} of {len(trials)} trials have no SHP analysis (no shp/summary.json "
        f"with analysed blocks on validation): {names}. They are left out here; run "
        "`python -m analysis.shp --run-id <run id>` to add it.",
        *out,
    ]


# --------------------------------------------------------------------------------------
# sections


def accuracy_section(data: SweepData) -> Section:
    knobs = {}
    for knob in KNOBS:
        settings = sorted({v for t in data.trials if (v := t.arch.get(knob)) is not None})
        groups = [[t for t in data.trials if t.arch.get(knob) == v] for v in settings]
        knobs[knob] = [
            figs.KnobPoint(v, values(g, "val_accuracy"), values(g, "test_accuracy"))
            for v, g in zip(settings, groups)
        ]
    rows = [
        [
            arch,
            str(len(g)),
            mean_sd(values(g, "val_accuracy")),
            pct_ci(g[0].metric("val_accuracy"), data.n_val),
            mean_sd(values(g, "test_accuracy")),
        ]
        for arch, g in by_arch(data.trials).items()
    ]
    return Section(
        id="accuracy",
        title="Accuracy against head count, embedding size and conv blocks",
        caption="Mean accuracy of the trials with each value of a knob, whatever the other "
        "knobs; error bars: standard deviation over those trials (seeds and the other knobs), "
        "dots: single trials. Blue: validation (used for every choice), orange: test.",
        image=figs.accuracy_figure({k: v for k, v in knobs.items() if v}),
        image_alt="accuracy against num_heads, embed_dim and conv_blocks",
        tables=[
            Table(
                ["architecture", "trials", "val % (mean ± sd)", "best val % [95 %]", "test %"],
                rows,
                "per architecture: 4h×16 d64 L2 c1 = 4 heads of width 16, embedding 64, depth "
                "2, 1 conv block; intervals: Wilson, 95 %",
                wide=True,
            )
        ],
    )


def snr_section(data: SweepData) -> Section:
    curves = block_curves(data.trials)
    missing = missing_shp(data.trials)
    common = dict(id="snr", title="Readout accuracy and SNR along the blocks", missing=missing)
    if not curves:
        return Section(**common, caption="No trial has an SHP analysis: nothing to draw.")
    rows = []
    for arch, pts in curves.items():
        for p in pts:
            snr = [
                ("∞ (noise-free)" if p.noise_free else "-") if v is None else num(v)
                for v in (p.snr_labels, p.snr_area)
            ]
            rows.append([arch, str(p.block), p.kind, pct(p.readout_accuracy), *snr])
    pooling = sorted({str(t.shp.pooling) for t in data.trials if t.shp})
    return Section(
        **common,
        caption="Per block, a fresh readout trained on the frozen block's head outputs: its "
        "held-out accuracy (left) and the two SNR variants [reconstructed] (middle: labels in "
        "clusters / noise; right: ones inside cluster blocks / noise), one line per "
        "architecture, seeds averaged. Hollow markers: conv blocks (units are filters); "
        "triangles on the top edge: noise-free blocks (SNR undefined).",
        image=figs.snr_figure(curves),
        image_alt="readout accuracy and SNR against block index",
        tables=[
            Table(["architecture", "block", "kind", "readout %", "SNR labels", "SNR area"], rows)
        ],
        notes=[
            f"Readout pooling: {', '.join(pooling)}. SNR is averaged over units with a "
            "cluster, as in SPEC 4.6. The SNR verdict does not read these block means (they "
            "move when the share of clustered heads moves): it reads each head's own labels "
            "and noise (the methods section lists each model's trend). Untrained reference "
            f"(analysis.reference): {_referenced(data.trials)}."
        ],
    )


def _referenced(trials: Sequence[Trial]) -> str:
    analysed = [t for t in trials if head_blocks(t)]
    have = sum(t.shp_reference is not None for t in analysed)
    return f"{have} of {len(analysed)} analysed trials" + (
        "" if have == len(analysed) else " (the verdict subtracts it only when all have one)"
    )


def heads_section(data: SweepData) -> Section:
    common = dict(id="heads", title="Head specialisation")
    analysed = [t for t in data.trials if head_blocks(t)]
    missing = missing_shp(data.trials)
    if not analysed:
        return Section(
            **common,
            missing=missing
            or [
                "No block was analysed with units=heads (the sweep's `analysis.units` was "
                "nodes or ff, or only conv blocks were analysed): no head label sets."
            ],
            caption="No head label sets to show.",
        )
    t = analysed[0]
    if t is not data.best:
        missing = [
            *missing,
            f"The best trial {data.best.trial_id} has no head analysis; "
            f"showing the best analysed one, {t.trial_id}.",
        ]
    blocks = head_blocks(t)
    k = t.shp.label_count(blocks[0])
    sets = [figs.HeadSets(b.block, [list(s) for s in b.label_sets], k) for b in blocks]
    per_head = Table(
        ["block", "head", "labels recognised", "noise"],
        [
            [
                str(b.block),
                str(h),
                " ".join(map(str, labels)) or "(none)",
                str(b.unit_noise[h]) if h < len(b.unit_noise) else "-",
            ]
            for b in blocks
            for h, labels in enumerate(b.label_sets)
        ],
        f"best model {t.trial_id} ({t.name})",
    )
    summary = Table(
        ["block", "coverage", "heads/label (mean, min–max)", "labels/head", "Jaccard overlap"],
        [
            [
                str(b.block),
                pct(b.coverage) + " %",
                f"{num(b.heads_per_label_mean)} ({b.heads_per_label_min}–{b.heads_per_label_max})",
                num(b.label_set_size_mean),
                num(b.pairwise_jaccard_mean),
            ]
            for b in blocks
        ],
        "label coverage per block",
        wide=True,
    )
    return Section(
        **common,
        missing=missing,
        caption=f"Best model by validation accuracy ({t.trial_id}, {t.name}): per attention "
        "block, the labels each head recognises (its diagonal after binarising the normalised "
        "field matrix; SPEC 4.7) and how many heads recognise each label.",
        image=figs.heads_figure(sets),
        image_alt="label sets per head of the best model",
        tables=[per_head, summary, _last_head_block_table(analysed)],
    )


def _last_head_block_table(analysed: Sequence[Trial]) -> Table:
    """Every analysed trial's last attention block: what the specialisation verdict counts."""
    rows = []
    for x in analysed:
        h = last_head_block(x)
        if h is None:
            continue
        ok, n = head_counts(h)
        sizes = [len(s) for s in h.label_sets]
        overlap = head_overlap(h.label_sets)
        rows.append(
            [
                h.trial,
                x.name,
                str(h.block),
                f"{ok}/{n}" if h.has_noise else "no per-head noise",
                f"{min(sizes, default=0)}–{max(sizes, default=0)}",
                str(small_cluster_max(h.num_classes)),
                " ".join(map(str, h.unit_noise)) or "-",
                "-" if overlap is None else num(overlap),
            ]
        )
    return Table(
        [
            "trial",
            "architecture",
            "block",
            "heads passing",
            "labels per head",
            "small: at most",
            "noise per head",
            "label-set overlap (Jaccard)",
        ],
        rows,
        f"every trial, last attention block (what the verdict counts: a head passes with 1 "
        f"to the 'small' number of labels and noise <= labels / {MIN_HEAD_SNR:g}; a trial "
        f"counts only if its heads differ: overlap <= {MAX_HEAD_OVERLAP:g})",
        wide=True,
    )


def _latency_notes(
    data: SweepData, lat: dict[str, Latency], listed: list[Trial], remeasured: bool
) -> tuple[list[str], list[str]]:
    """(notes, missing): how the latencies were taken, and what could not be measured."""
    notes, missing = [], []
    measured = [lat[t.run_id] for t in listed if lat[t.run_id].source == "re-measured"]
    if not remeasured:
        missing.append(
            "--no-remeasure: latencies are the figures logged during the sweep, "
            "taken while trials may have shared the device; they are noisy."
        )
    elif measured:
        notes.append(
            f"Re-measured here, no other trial running: {measured[0].runs} batch-1 forwards "
            f"after warm-up in {len(measured[0].rounds)} rounds, the models taking turns, on "
            f"{measured[0].device}, {measured[0].precision}; latency = the median of the "
            "rounds' medians, which the conv-substitution test compares. The in-sweep figure "
            "is shown beside it."
        )
    missing += [f"{t.trial_id}: {lat[t.run_id].note}" for t in data.trials if lat[t.run_id].note]
    return notes, missing


def latency_section(data: SweepData, lat: dict[str, Latency], remeasured: bool) -> Section:
    front = set(finalists(data.trials, cap=len(data.trials)))
    shown = set(finalists(data.trials))
    listed = [t for t in data.trials if t.run_id in shown or lat[t.run_id].source == "re-measured"]
    tag = {t.run_id: str(i + 1) for i, t in enumerate(listed)}
    points = [
        figs.CostPoint(
            tag.get(t.run_id, ""),
            acc,
            t.metric("macs"),
            lat[t.run_id].latency_ms,
            lat[t.run_id].source,
            t.run_id in front,
        )
        for t in data.trials
        if (acc := t.metric("val_accuracy")) is not None
    ]
    rows = [
        [
            tag[t.run_id],
            t.name,
            t.trial_id,
            "yes" if t.run_id in shown else "",
            pct(t.metric("val_accuracy")),
            pct(t.metric("test_accuracy")),
            _count(t.metric("macs")),
            _count(t.metric("params")),
            num(lat[t.run_id].latency_ms, 3),
            lat[t.run_id].source,
            num(t.metric("latency_ms"), 3) + (" (shared)" if _shared(t) else ""),
        ]
        for t in listed
    ]
    notes, missing = _latency_notes(data, lat, listed, remeasured)
    headers = [
        "#",
        "architecture",
        "trial",
        "finalist",
        "val %",
        "test %",
        "MACs",
        "params",
        "latency ms",
        "source",
        "in-sweep ms",
    ]
    return Section(
        id="latency",
        title="Size and speed against accuracy",
        caption="Left: validation accuracy against MACs per image; the step line is the "
        "Pareto front (no model is both more accurate and cheaper). Right: against batch-1 "
        "latency; filled: re-measured alone from the checkpoint, hollow: logged in-sweep. "
        "Numbers are the rows of the table below.",
        image=figs.cost_figure(points),
        image_alt="accuracy against MACs and latency",
        tables=[
            Table(
                headers,
                rows,
                "finalists (Pareto front of accuracy vs MACs, capped) and "
                "the best trial per conv_blocks",
                wide=True,
            )
        ],
        missing=missing,
        notes=notes,
    )


def _shared(t: Trial) -> bool:
    return t.tags.get("latency_shared") == "true"


def _hours(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _count(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.0f}"


def committee_section(data: SweepData) -> Section:
    common = dict(id="committee", title="Soft committee")
    if not data.committee_runs:
        hint = f"python -m analysis.committee --sweep-run-id {data.sweep_run_id}"
        return Section(
            **common,
            missing=[f"No committee run for this sweep yet: run `{hint}`, then this report again."],
        )
    c = data.committee or data.committee_runs[0]
    labels = [arch_label(m.get("architecture") or {}) for m in c.members]
    fig = committee_figures(data)
    status = (
        "judged by the verdict"
        if c.judged
        else f"not judged: {fig.rule}"
        if fig is not None and not fig.chosen_by_rule
        else "not judged"
    )
    tol = "-" if c.tolerance is None else f"{100 * c.tolerance:.2f} points"
    return Section(
        **common,
        caption=f"Committee run {c.run_id[:8]} ({status}): selection {c.selection}, rule "
        f"{c.rule or '?'}, tolerance {tol} ({c.tolerance_rule}), then measured once on test. "
        "Left: committee validation accuracy as members were added, and the final committee "
        "on test. Right: each member and the committee on both splits.",
        image=figs.committee_figure(
            c.val_accuracy_by_size or [c.val_accuracy],
            c.test_accuracy,
            [f"{i + 1}. {lab}" for i, lab in enumerate(labels)],
            [m["test_accuracy"] for m in c.members],
            [m["val_accuracy"] for m in c.members],
            c.val_accuracy,
        ),
        image_alt="committee accuracy against size and per member",
        tables=[_committee_members_table(data, c, labels), _committee_runs_table(data)],
        notes=[
            "Both gains: over member 1, the member with the best validation accuracy (choosing "
            "the best member by test would peek), and over every member on the same test "
            "images (paired; Wald 95 % intervals; the verdict's own one-sided bound is in its "
            "details). The verdict reads the earliest committee run made with the default "
            "settings: rerunning until test looks good cannot change it. It speaks for this "
            "committee; a general claim needs committees replicated over seeds."
        ],
    )


def _committee_members_table(data: SweepData, c: Committee, labels: list[str]) -> Table:
    """Each member's accuracies and the committee's paired gain over it, then the committee."""
    member_correct = c.member_test_correct or (None,) * len(c.members)
    rows = []
    for i, (lab, m, mc) in enumerate(zip(labels, c.members, member_correct)):
        gain = "-"
        if mc is not None and c.test_correct is not None:
            d = paired_difference(c.test_correct, mc)
            lo, hi = d.interval()
            gain = f"{100 * d.diff:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        rows.append(
            [
                f"{i + 1}. {lab}",
                str(m.get("trial_id") or m["run_id"][:8]),
                pct_ci(m["val_accuracy"], data.n_val),
                pct_ci(m["test_accuracy"], data.n_test),
                gain,
            ]
        )
    combine = "softmax" if c.combine == "probs" else "logits"
    val_gain = "-" if c.val_gain_over_best is None else f"{100 * c.val_gain_over_best:+.2f}"
    rows += [
        [
            f"committee (mean {combine})",
            "",
            pct_ci(c.val_accuracy, data.n_val),
            pct_ci(c.test_accuracy, data.n_test),
            "",
        ],
        ["gain over member 1 (best on validation)", "", val_gain,
         f"{100 * c.gain_over_best:+.2f}", ""],
    ]  # fmt: skip
    headers = ["member", "trial", "val % [95 %]", "test % [95 %]", "committee gain on test [95 %]"]
    return Table(headers, rows, wide=True)


def _committee_runs_table(data: SweepData) -> Table:
    rows = [
        [
            c.run_id[:8],
            str(len(c.members)),
            c.selection,
            c.rule or "?",
            c.tolerance_rule,
            pct(c.test_accuracy),
            f"{100 * c.gain_over_best:+.2f}",
            "judged" if c.judged else "listed",
        ]
        for c in data.committee_runs
    ]
    return Table(
        ["run", "members", "selection", "rule", "tolerance", "test %", "gain", "verdict"],
        rows,
        "every committee run of this sweep, earliest first",
        wide=True,
    )


def trials_section(data: SweepData, lat: dict[str, Latency]) -> Section:
    rows = [
        [
            t.trial_id,
            t.run_id[:8],
            t.name,
            "-" if t.seed is None else str(t.seed),
            pct_ci(t.metric("val_accuracy"), data.n_val),
            pct_ci(t.metric("test_accuracy"), data.n_test),
            _count(t.metric("macs")),
            _count(t.metric("params")),
            num(t.metric("latency_ms"), 3),
            num(lat[t.run_id].latency_ms, 3) if lat[t.run_id].source == "re-measured" else "",
            "yes" if t.shp and t.shp.blocks else "missing",
            _hours(t.metric("gpu_hours")),
            _hours(t.metric("cpu_hours")),
        ]
        for t in data.trials
    ]
    left = ", ".join(f"{n} {s.lower()}" for s, n in sorted(data.not_finished.items()))
    return Section(
        id="trials",
        title="All finished trials",
        caption="Best validation accuracy first. Run ids are the MLflow child runs.",
        tables=[
            Table(
                [
                    "trial",
                    "run",
                    "architecture",
                    "seed",
                    "val % [95 %]",
                    "test % [95 %]",
                    "MACs",
                    "params",
                    "in-sweep ms",
                    "re-measured ms",
                    "SHP",
                    "GPU-h",
                    "CPU-h",
                ],
                rows,
            )
        ],
        notes=[f"Trial runs left out (not finished): {left}."] if left else [],
    )


def search_section(data: SweepData) -> Section:
    """What the search found: each searched key's importance for each objective (fANOVA,
    as the sweep's summary computed it), every trial across the searched keys, and the
    compute the sweep held."""
    common = dict(id="search", title="The search: which knobs mattered", notes=_compute_notes(data))
    summary = data.sweep_summary
    if summary is None:
        return Section(
            **common,
            missing=["The sweep run has no sweep/summary.json: it is written when the sweep ends."],
        )
    objective, mode = summary["objectives"][0]
    rows = [
        {**r["config"], objective: r[objective]}
        for r in summary["trials"]
        if r["status"] in ("done", "stopped") and isinstance(r.get(objective), (int, float))
    ]
    keys = sorted({k for r in rows for k in r if k != objective})
    varied = [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]
    table = Table(["objective", "searched key", "importance", "trials"], _importance_rows(summary))
    if len(rows) < 2 or not varied:
        return Section(
            **common,
            tables=[table],
            missing=[f"Parallel coordinates need 2 trials or more with a searched key that "
                     f"varies ({len(rows)} trial(s), {len(varied)} varied key(s))."],
        )  # fmt: skip
    rows = [r for r in rows if all(k in r for k in varied)]
    return Section(
        **common,
        caption=f"Each line is a trial ({len(rows)}, stopped ones included), coloured by "
        f"{objective}. Importance: the share of the objective's variance each key explains "
        "over the finished trials (fANOVA); below 8 trials it is not computed.",
        image=figs.parallel_coordinates_figure(rows, varied, objective, mode),
        image_alt=f"parallel coordinates of {', '.join(varied)} against {objective}",
        tables=[table],
    )


def _importance_rows(summary: dict) -> list[list[str]]:
    rows = []
    for metric, entry in summary.get("importance", {}).items():
        if "values" in entry:
            for key, value in entry["values"].items():
                rows.append([metric, key, num(value), str(entry["trials"])])
        else:
            rows.append([metric, "-", entry.get("note", "-"), str(entry.get("trials", 0))])
    return rows


def _compute_notes(data: SweepData) -> list[str]:
    m = data.sweep_metrics
    if "gpu_hours" not in m:
        return []
    note = (
        f"Compute held by the sweep: {m['gpu_hours']:.3g} GPU-hours and {m['cpu_hours']:.3g} "
        "CPU-hours (each trial's resources × its workers' wall time, restarts included)"
    )
    return [note + (f"; cost {m['cost']:.2f}." if "cost" in m else ".")]


def methods_section(verdict_list: Sequence[Verdict]) -> Section:
    rows = [
        [
            v.claim,
            v.status,
            "-" if v.p_value is None else f"{v.p_value:.3g}",
            v.rule,
            v.generalises or "-",
            "; ".join(v.reconstructed) or "-",
        ]
        for v in verdict_list
    ]
    details = [
        Table(
            ["claim", "evidence per architecture / trial"],
            [[v.claim, d] for v in verdict_list for d in v.details],
            wrap=True,
        )
    ]
    return Section(
        id="methods",
        title="How the verdicts are reached",
        caption=f"Verdict rules version {RULES_VERSION}. "
        'Each verdict is a stated test at a stated level; "held" needs p below it. '
        "Thresholds are this report's own (analysis/report/verdicts.py, argued there and in "
        "the README: "
        + ", ".join(f"{k}={v}" for k, v in THRESHOLDS.items())
        + "). The tests' false-positive rate and power: python -m analysis.report --calibrate. "
        "Rules marked [reconstructed] in SPEC could not be read from the papers: "
        f"{SNR_RULE}; {CONV_RULE}; {SEQPOOL_RULE}.",
        tables=[
            Table(
                ["claim", "verdict", "p", "test", "generalises to", "relies on [reconstructed]"],
                rows,
                wrap=True,
            ),
            *details,
        ],
    )
