"""The scale benchmark's pieces, small (seconds, no Ray): the store builder writes trial runs
the committee and the report accept, the summary and the searcher's timing run on them, and
the driver's hook timer charges each call to its trial. The benchmark itself is a command
(`python -m orchestrator.bench.scale`), not a test."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from analysis.committee.cli import main as committee_main
from analysis.report.cli import main as report_main
from orchestrator.bench import scale, scale_sweep
from orchestrator.bench.scale_store import EXPERIMENT, N_TEST, N_VAL, build_store


@pytest.fixture(scope="module")
def small_scale_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rows, seconds = build_store(uri, 4, root / "artifacts", progress_every=0)
    return {"root": root, "uri": uri, "rows": rows, "seconds": seconds}


def test_the_builders_runs_are_read_by_the_committee_and_the_report(small_scale_store, tmp_path):
    s = small_scale_store
    assert len(s["rows"]) == len(s["seconds"]) == 4
    at = ["--experiment", EXPERIMENT, "--tracking-uri", s["uri"]]
    assert committee_main([*at, "--out", str(tmp_path / "committee")]) == 0
    chosen = json.loads((tmp_path / "committee" / "committee.json").read_text())
    assert len(chosen["members"]) >= 2
    page = tmp_path / "report.html"
    assert report_main([*at, "--no-remeasure", "--no-log", "--out", str(page)]) == 0
    assert "4 finished trials" in page.read_text()


def test_the_summary_and_the_searcher_are_timed_on_it(small_scale_store, tmp_path):
    s = small_scale_store
    assert scale.time_summary(s["uri"], s["rows"], tmp_path) > 0
    per_trial = scale.time_optuna([5, 12], tmp_path)
    assert set(per_trial) == {5, 12} and all(v > 0 for v in per_trial.values())


def test_a_sweeps_runs_are_read_page_by_page(small_scale_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    from analysis import runs

    client = MlflowClient(small_scale_store["uri"])
    exp_id, sweep = runs.find_sweep(client, experiment=EXPERIMENT, sweep_run_id=None)
    monkeypatch.setattr(runs, "PAGE_SIZE", 3)  # 4 trials: two pages
    found = runs.trial_runs(client, exp_id, sweep.info.run_id)
    assert len({r.info.run_id for r in found}) == 4


def test_the_logits_have_the_digits_shapes(small_scale_store):
    import numpy as np

    (npz,) = list((small_scale_store["root"] / "artifacts").rglob("logits.npz"))[:1]
    with np.load(npz) as z:
        assert z["val_logits"].shape == (N_VAL, 10) and z["test_logits"].shape == (N_TEST, 10)


def test_the_hook_timer_charges_each_call_to_its_trial():
    ledger = scale_sweep.LEDGER

    class Hooks:
        @scale_sweep.timed
        def on_trial_complete(self, iteration, trials, trial, **info):
            pass

        @scale_sweep.timed
        def suggest(self, trial_id):
            pass

    Hooks().on_trial_complete(iteration=1, trials=[], trial=SimpleNamespace(trial_id="a1"))
    Hooks().suggest("b2")
    assert "a1" in ledger.wall and "b2" in ledger.cpu
    assert scale_sweep.window([1, 2, 3, 4, 5, 6], 6, width=3) == 5
