"""Soft committee: the selector contract, the committee arithmetic, split checks, and the
CLI end to end on a hand-made MLflow sweep (and, marked slow, on the real e2e sweep)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.committee.cli import main
from analysis.committee.measure import choose, measure
from analysis.committee.output import format_table
from analysis.committee.select import (
    DIVERSITY_TERMS,
    Candidate,
    CommitteeError,
    ValView,
    accuracy,
    check_same_split,
    combine,
    committee_accuracy,
    label_set_distance,
    select,
)
from orchestrator.summary import committee_hint
from search_spaces import load_spec

CLASSES = 5


def noisy_logits(labels: np.ndarray, wrong: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Confident one-hot logits plus noise; rows in `wrong` point at another class."""
    n = len(labels)
    target = labels.copy()
    target[wrong] = (labels[wrong] + 1 + rng.integers(0, CLASSES - 1, len(wrong))) % CLASSES
    logits = rng.normal(0, 0.5, (n, CLASSES)).astype(np.float32)
    logits[np.arange(n), target] += 3.0
    return logits


def make_candidates(
    errors: list[int], n: int = 200, seed: int = 0, label_sets: bool = True
) -> list[Candidate]:
    """One candidate per entry: that many validation (and test) mistakes, on random rows,
    so different models err on different samples (a committee helps)."""
    rng = np.random.default_rng(seed)
    val_y, test_y = rng.integers(0, CLASSES, n), rng.integers(0, CLASSES, n)
    out = []
    for i, e in enumerate(errors):
        heads = 2 + 2 * (i % 2)
        sets = tuple(
            frozenset(rng.choice(CLASSES, 2, replace=False).tolist()) for _ in range(heads)
        )
        out.append(
            Candidate(
                run_id=f"run{i}",
                arch={
                    "variant": "cct_2_3x2_32",
                    "num_heads": heads,
                    "head_dim": 32 // heads,
                    "embed_dim": 32 * (1 + i % 3),
                    "conv_blocks": i % 2,
                    "depth": 2,
                },
                val_logits=noisy_logits(val_y, rng.choice(n, e, replace=False), rng),
                val_labels=val_y,
                val_ids=np.arange(n),
                test_logits=noisy_logits(test_y, rng.choice(n, e, replace=False), rng),
                test_labels=test_y,
                test_ids=np.arange(n, 2 * n),
                split_hash="abc",
                label_sets=sets if (label_sets and i != 1) else None,  # run1: no SHP output
            )
        )
    return out


# --------------------------------------------------------------------------------------
# the contract every selector and diversity option passes

DIVERSITY_COMBOS = [list(c) for r in (1, 2, 3) for c in itertools.combinations(DIVERSITY_TERMS, r)]
RULES = [dict(size=2), dict(size=3), dict(size=None, max_size=5), dict(size=None, max_size=3)]
# 7 candidates: the best makes 20 mistakes of 200; run5 (40) and run6 (80) lie outside a
# 5-point tolerance; the rest (22-28 mistakes) are inside
ERRORS = [20, 24, 22, 28, 26, 40, 80]


class Poison:
    """Stands in for a test array: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"selection read test data (.{name})")

    def __array__(self, *a, **k):
        raise AssertionError("selection read test data (as an array)")

    def __len__(self):
        raise AssertionError("selection read test data (len)")

    def __getitem__(self, key):
        raise AssertionError("selection read test data (indexing)")


@pytest.mark.parametrize("how", ["probs", "logits"])
@pytest.mark.parametrize("rule", RULES, ids=str)
@pytest.mark.parametrize("diversity", DIVERSITY_COMBOS, ids=",".join)
def test_selector_contract(diversity, rule, how):
    cands = make_candidates(ERRORS)
    views = [c.val_view() for c in cands]
    kwargs = dict(
        tolerance=0.05,
        diversity=diversity,
        combine_how=how,
        size=rule["size"],
        max_size=rule.get("max_size", 5),
    )
    sel = select(views, **kwargs)
    accs = [accuracy(c.val_logits, c.val_labels) for c in cands]
    best = int(np.argmax(accs))

    assert sel.members[0] == best  # the best model always comes first
    assert len(set(sel.members)) == len(sel.members)
    # never outside the tolerance: run5 and run6 are 10 and 30 points below the best
    assert all(accs[m] >= accs[best] - 0.05 - 1e-12 for m in sel.members)
    assert 5 not in sel.members and 6 not in sel.members
    if rule["size"] is not None:
        assert len(sel.members) == rule["size"]
    else:
        assert 2 <= len(sel.members) <= rule["max_size"]
        # beyond two members, each one added raised the validation accuracy
        assert all(b > a for a, b in zip(sel.curve[1:], sel.curve[2:]))
    assert sel.curve[0] == accs[best]

    # deterministic
    assert select(views, **kwargs) == sel
    # never reads test data: shuffled test logits change nothing, poisoned ones are not touched
    rng = np.random.default_rng(1)
    shuffled = [dataclasses.replace(c, test_logits=rng.permutation(c.test_logits)) for c in cands]
    poisoned = [
        dataclasses.replace(c, test_logits=Poison(), test_labels=Poison(), test_ids=Poison())
        for c in cands
    ]
    for variant in (shuffled, poisoned):
        again = choose(variant, **kwargs)
        assert again.members == sel.members


def test_table_puts_every_figure_under_its_header():
    cands = make_candidates(ERRORS)
    for c in cands:
        c.info["trial_id"] = f"trial_{c.run_id}_with_a_long_suffix"
    sel = choose(cands, size=3, max_size=5, tolerance=0.05, diversity=DIVERSITY_TERMS,
                 combine_how="probs")  # fmt: skip
    table = format_table(measure(cands, sel, DIVERSITY_TERMS, "probs"), "header", "probs")
    lines = table.splitlines()
    head = lines[2]
    members, committee, gain = lines[3:6], lines[6], lines[7]
    assert committee.startswith("committee (mean softmax)") and gain.startswith("gain over")
    for title in ("val%", "test%"):
        end = head.index(title) + len(title)  # right-aligned: figures end where the title does
        for line in [*members, committee, gain]:
            assert re.fullmatch(r" *[+-]?\d+\.\d\d", line[end - 6 : end]), (title, line)
            assert line[end : end + 1] in ("", " "), (title, line)
    for title in ("heads", "embed", "depth", *DIVERSITY_TERMS):
        end = head.index(title[:6]) + len(title[:6])
        assert all(line[end - 1] != " " and line[end : end + 1] in ("", " ") for line in members)


def test_selectors_structurally_get_no_test_arrays():
    assert not [f.name for f in dataclasses.fields(ValView) if "test" in f.name]
    with pytest.raises(TypeError, match="ValView"):
        select(make_candidates([20, 22]), size=2)  # full Candidates are refused


def test_default_tolerance_is_one_binomial_standard_error():
    # best: 180/200 = 0.9, SE = sqrt(0.9*0.1/200) = 0.0212: 184/200 errors-> 22 mistakes is
    # 1 point below (in), 26 mistakes is 3 points below (out)
    cands = make_candidates([20, 22, 26])
    sel = select([c.val_view() for c in cands], size=2)
    assert math.isclose(sel.tolerance, math.sqrt(0.9 * 0.1 / 200))
    assert sel.pool == [0, 1]
    with pytest.raises(CommitteeError, match="1 candidate"):
        select([c.val_view() for c in make_candidates([20, 30])], max_size=5)
    # a committee of one is allowed when asked for
    assert select([c.val_view() for c in make_candidates([20, 30])], size=1).members == [0]


def test_the_sweeps_printed_committee_command_works_as_printed():
    """The sweep's closing lines name a committee command that works as printed (issue 30):
    the default rule's when it finds 2 candidates, else the --tolerance that admits the
    runner-up (a fresh quickstart's 180 validation images often hold only the best)."""
    spec = load_spec(None)
    printed = []
    for mistakes in ([20, 22, 26], [20, 30]):  # runner-up 1 point below, then 5 points
        cands = make_candidates(mistakes)
        trials = [{"status": "done", "val_accuracy": accuracy(c.val_logits, c.val_labels)}
                  for c in cands]  # fmt: skip
        lines = committee_hint(spec, {"n_val": 200, "trials": trials})
        found = re.search(r"--tolerance (\S+)", lines[0])
        tolerance = None if found is None else float(found[1]) / 100
        sel = select([c.val_view() for c in cands], max_size=5, tolerance=tolerance)
        assert len(sel.members) == 2
        printed.append(lines)
    assert printed[0] == ["  committee:  python -m analysis.committee --experiment quickstart"]
    assert printed[1][0].endswith("--experiment quickstart --tolerance 5.00")
    assert "2.12 points on 200 validation images" in printed[1][1]


def test_size_larger_than_the_pool_is_refused():
    with pytest.raises(CommitteeError, match="need 3"):
        select([c.val_view() for c in make_candidates([20, 22, 60])], size=3, tolerance=0.05)


# --------------------------------------------------------------------------------------
# committee arithmetic


def test_probs_and_logits_averaging_differ_on_a_crafted_example():
    # two classes, three members: one very sure of class 0 (logit gap +10), two mildly
    # preferring class 1 (gap -2). Mean logit gap = (10-2-2)/3 = +2 -> class 0.
    # Mean prob of class 0 = (sigmoid(10) + 2 sigmoid(-2)) / 3 = (0.99995 + 2*0.11920)/3
    # = 0.4128 -> class 1.
    members = [np.array([[10.0, 0.0]]), np.array([[0.0, 2.0]]), np.array([[0.0, 2.0]])]
    probs = combine(members, "probs")
    assert probs[0, 0] == pytest.approx((1 / (1 + math.exp(-10)) + 2 / (1 + math.exp(2))) / 3)
    assert np.argmax(probs[0]) == 1
    assert combine(members, "logits")[0].tolist() == pytest.approx([10 / 3, 4 / 3])
    assert np.argmax(combine(members, "logits")[0]) == 0
    assert committee_accuracy(members, np.array([1]), "probs") == 1.0
    assert committee_accuracy(members, np.array([1]), "logits") == 0.0


def test_committee_accuracy_is_exact():
    labels = np.array([0, 1, 2, 0])
    a = np.eye(3)[[0, 1, 0, 1]] * 2.0  # right on rows 0, 1
    b = np.eye(3)[[0, 2, 2, 0]] * 1.0  # right on rows 0, 2, 3
    assert accuracy(a, labels) == 0.5
    assert accuracy(b, labels) == 0.75
    # mean logits: [1.5,0,0] [0,1,.5] [1,0,.5] [.5,1,0] -> 0, 1, 0, 1: rows 0, 1 right.
    # a's rows are the surer ones under softmax too (.787 vs .576), so the same answer.
    assert committee_accuracy([a, b], labels, "logits") == 0.5
    p = combine([a, b], "probs")
    assert np.allclose(p.sum(1), 1.0)
    sure, mild = math.e**2 / (math.e**2 + 2), math.e / (math.e + 2)
    assert p[0, 0] == pytest.approx((sure + mild) / 2)
    assert p.argmax(1).tolist() == [0, 1, 0, 1]
    assert committee_accuracy([a, b], labels, "probs") == 0.5
    assert committee_accuracy([b], labels, "probs") == 0.75


def test_label_set_distance():
    a = [frozenset({0, 1}), frozenset({2})]
    assert label_set_distance(a, a) == 0.0
    assert label_set_distance(a, [frozenset({3, 4})]) == 1.0
    # b's single head matches a's first exactly; a's second head is 1 away from it
    assert label_set_distance(a, [frozenset({0, 1})]) == pytest.approx(0.5 * (0.5 + 0.0))


# --------------------------------------------------------------------------------------
# split checks


def test_mismatched_ids_or_split_are_refused_by_name():
    cands = make_candidates([20, 22, 24])
    bad_ids = dataclasses.replace(cands[1], val_ids=cands[1].val_ids[::-1].copy())
    with pytest.raises(CommitteeError, match=r"run1 \(validation sample ids differ"):
        check_same_split([cands[0], bad_ids, cands[2]])
    bad_split = dataclasses.replace(cands[2], split_hash="other")
    with pytest.raises(CommitteeError, match=r"run2 \(split hash 'other'"):
        check_same_split([cands[0], cands[1], bad_split])
    check_same_split(cands)  # the same split passes


# --------------------------------------------------------------------------------------
# the CLI against a hand-made sqlite MLflow sweep


def _log_trial(client, exp_id, parent, i, cand, *, status="FINISHED", tags=None, logits=True,
               tmp: Path):  # fmt: skip
    run = client.create_run(
        exp_id,
        run_name=f"trial-{i}",
        tags={
            "role": "trial",
            "trial_id": f"t{i}",
            "mlflow.parentRunId": parent,
            "split_hash": cand.split_hash,
            **(tags or {}),
        },
    )
    rid = run.info.run_id
    a = cand.arch
    for k in ("variant", "num_heads", "head_dim", "embed_dim", "conv_blocks", "depth"):
        client.log_param(rid, f"model.{k}", str(a[k]))
    client.log_param(rid, "model.mlp_ratio", "None")
    client.log_param(rid, "data.dataset", "digits")
    client.log_metric(rid, "val_accuracy", accuracy(cand.val_logits, cand.val_labels))
    folder = tmp / f"art{i}"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "model.json").write_text("{}")
    client.log_artifacts(rid, str(folder / "checkpoint"), "checkpoint")
    if logits:
        np.savez(
            folder / "logits.npz",
            val_logits=cand.val_logits,
            val_ids=cand.val_ids,
            val_labels=cand.val_labels,
            test_logits=cand.test_logits,
            test_ids=cand.test_ids,
            test_labels=cand.test_labels,
            split_hash=np.array(cand.split_hash),
        )
        client.log_artifact(rid, str(folder / "logits.npz"), "logits")
    if cand.label_sets is not None:
        summary = {"heldout": "val", "blocks": [{"block": 0, "kind": "conv", "unit": "filter", "label_sets": [[0]]},
                              {"block": 1, "kind": "transformer", "unit": "head",
                               "label_sets": [sorted(s) for s in cand.label_sets]}]}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(summary))
        client.log_artifact(rid, str(folder / "summary.json"), "shp")
    client.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory):
    """A sqlite store with sweep 'fake': 4 finished trials (within ~1 point on validation),
    one scheduler-stopped trial, one failed trial. Built once: creating a store is slow."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("fake-store")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp_id = client.create_experiment("fake", artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp_id, tags={"role": "sweep", "sweep": "fake", "spec_hash": "x"})
    pid = parent.info.run_id
    cands = make_candidates([20, 21, 22, 23, 20])
    ids = [_log_trial(client, exp_id, pid, i, c, tmp=root) for i, c in enumerate(cands[:4])]
    stopped = _log_trial(client, exp_id, pid, 4, cands[4], status="KILLED",
                         tags={"stopped_early": "true"}, tmp=root)  # fmt: skip
    failed = client.create_run(
        exp_id, tags={"role": "trial", "trial_id": "t5", "mlflow.parentRunId": pid}
    ).info.run_id
    client.set_terminated(failed, status="FAILED")
    client.set_terminated(pid, status="FINISHED")
    return {
        "root": root, "exp_id": exp_id, "parent": pid, "trials": ids, "stopped": stopped,
        "failed": failed, "cands": cands,
    }  # fmt: skip


@pytest.fixture
def fake_sweep(fake_store, tmp_path):
    """A private copy of the fake store's database (the artifact folder is shared: new runs
    only add files under their own run ids)."""
    from mlflow.tracking import MlflowClient

    shutil.copy(fake_store["root"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return {**fake_store, "uri": uri, "client": MlflowClient(uri), "tmp": tmp_path}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def committee_runs(fs) -> list:
    return fs["client"].search_runs([fs["exp_id"]], filter_string="tags.role = 'committee'")


def test_cli_end_to_end(fake_sweep, capsys):
    fs = fake_sweep
    out_dir = fs["tmp"] / "out"
    code, out, err = run_cli(
        capsys, "--experiment", "fake", "--tracking-uri", fs["uri"], "--out", str(out_dir)
    )
    assert code == 0, err
    doc = json.loads((out_dir / "committee.json").read_text())
    members = [m["run_id"] for m in doc["members"]]
    assert 2 <= len(members) <= 4
    assert set(members) <= set(fs["trials"])  # never the stopped or failed trial
    assert members[0] == fs["trials"][0]  # the best on validation comes first
    assert all(m["checkpoint_uri"].endswith("/checkpoint") for m in doc["members"])
    assert all(m["checkpoint"] == f"runs:/{m['run_id']}/checkpoint" for m in doc["members"])
    # the table: one row per member, then the committee and its gain
    for rid in members:
        assert rid[:12] in out
    assert "committee (mean softmax)" in out and "gain over best member" in out
    assert f"head label sets unavailable (no shp/summary.json) for: {fs['trials'][1]}" in out

    # the committee accuracies, recomputed by hand from the hand-made logits
    by_id = dict(zip(fs["trials"], fs["cands"]))
    chosen = [by_id[r] for r in members]
    labels = chosen[0].test_labels
    mean_p = np.mean([np.exp(c.test_logits) / np.exp(c.test_logits).sum(1, keepdims=True)
                      for c in chosen], axis=0)  # fmt: skip
    test_acc = float((mean_p.argmax(1) == labels).mean())
    assert doc["test_accuracy"] == pytest.approx(test_acc)
    best_test = accuracy(chosen[0].test_logits, labels)
    assert doc["gain_over_best"] == pytest.approx(test_acc - best_test)
    assert doc["gain_over_best"] > 0  # members err on different samples

    (run,) = committee_runs(fs)
    assert run.data.tags["role"] == "committee" and run.data.tags["committee"] == "true"
    assert run.data.params["members"] == ",".join(members)
    assert run.data.metrics["test_accuracy"] == pytest.approx(test_acc)
    assert run.data.metrics["gain_over_best"] == pytest.approx(test_acc - best_test)
    assert "val_accuracy" in run.data.metrics
    assert run.info.status == "FINISHED"
    arts = {a.path for a in fs["client"].list_artifacts(run.info.run_id)}
    assert {"committee.json", "committee_accuracy.png"} <= arts


def test_cli_size_stopped_members_and_logits(fake_sweep, capsys):
    fs = fake_sweep
    common = ("--tracking-uri", fs["uri"], "--out", str(fs["tmp"] / "o"))
    code, _, err = run_cli(capsys, "--sweep-run-id", fs["parent"], "--size", "3",
                           "--include-stopped", "--tolerance", "5", *common)  # fmt: skip
    assert code == 0, err
    doc = json.loads((fs["tmp"] / "o" / "committee.json").read_text())
    assert len(doc["members"]) == 3
    assert doc["candidates_within_tolerance"] == 5  # the stopped trial counts now

    pick = [fs["trials"][2], fs["trials"][3]]
    code, out, err = run_cli(capsys, "--experiment", "fake", "--members", ",".join(pick),
                             "--combine", "logits", *common)  # fmt: skip
    assert code == 0, err
    doc = json.loads((fs["tmp"] / "o" / "committee.json").read_text())
    assert sorted(m["run_id"] for m in doc["members"]) == sorted(pick)
    assert "committee (mean logits)" in out
    assert len(committee_runs(fs)) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "nope"], "unknown experiment 'nope'"),
        (["--sweep-run-id", "0123456789abcdef"], "unknown sweep run"),
        (["--experiment", "fake", "--tolerance", "0"], "candidate(s) within 0.00 points"),
        (["--experiment", "fake", "--size", "9", "--tolerance", "50"], "need 9"),
        (["--experiment", "fake", "--diversity", "vibes"], "--diversity 'vibes'"),
        (["--experiment", "fake", "--members", "abc"], "not trial runs of sweep run"),
    ],
)
def test_cli_bad_input(fake_sweep, capsys, args, message):
    fs = fake_sweep
    code, out, err = run_cli(capsys, *args, "--tracking-uri", fs["uri"],
                             "--out", str(fs["tmp"] / "o"))  # fmt: skip
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not committee_runs(fs)  # nothing logged
    assert not (fs["tmp"] / "o").exists()


def test_cli_mismatched_split_names_the_run(fake_sweep, capsys):
    fs = fake_sweep
    odd = dataclasses.replace(fs["cands"][1], split_hash="other-split")
    rid = _log_trial(fs["client"], fs["exp_id"], fs["parent"], 9, odd, tmp=fs["tmp"])
    code, _, err = run_cli(capsys, "--experiment", "fake", "--tracking-uri", fs["uri"])
    assert code == 2 and rid in err and "split hash 'other-split'" in err
    assert not committee_runs(fs)


def test_cli_missing_logits_names_the_run(fake_sweep, capsys):
    fs = fake_sweep
    rid = _log_trial(fs["client"], fs["exp_id"], fs["parent"], 9, fs["cands"][1],
                     logits=False, tmp=fs["tmp"])  # fmt: skip
    code, _, err = run_cli(capsys, "--experiment", "fake", "--tracking-uri", fs["uri"])
    assert code == 2 and f"run {rid} has no usable logits/logits.npz" in err
    assert not committee_runs(fs)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    """As a user runs it: a fresh process, a missing store, no new store created."""
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.committee", "--experiment", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no MLflow store at sqlite:///")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------------------
# the real sweep (tests/conftest.py: 2 finished digits trials, experiment e2e)


@pytest.mark.slow
def test_cli_on_the_real_sweep(sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{sweep['root'] / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.committee", "--experiment", "e2e",
         "--tracking-uri", uri, "--tolerance", "100", "--out", str(tmp_path / "c")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)  # the measured committee, for the record (pytest -s)
    doc = json.loads((tmp_path / "c" / "committee.json").read_text())
    assert len(doc["members"]) == 2
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'committee'")
    assert [r.info.run_id for r in runs] == [doc["committee_run_id"]]
    assert runs[0].data.metrics["test_accuracy"] == pytest.approx(doc["test_accuracy"])
