"""No path for test data into selection: an SHP analysis off validation is logged to its own
artifact folder, never over `shp/`; a summary whose held-out split is not validation is
refused by the committee and by the report; ANDC chooses its mask on one half of the
held-out images and measures on the other."""

import json

import pytest
import torch

from analysis import runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("heldout-store")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.create_experiment("heldout", artifact_location=str(root / "artifacts"))
    return root, client, exp


def summary(heldout):
    block = {"block": 0, "kind": "transformer", "unit": "head", "num_units": 2,
             "label_sets": [[0], [1, 2]], "snr_labels": 2.0, "readout_accuracy": 0.9}  # fmt: skip
    return {"heldout": heldout, "num_classes": 4, "blocks": [block]}


def logged(store, heldout, name):
    from analysis.shp.mlflow_io import log_to_mlflow

    root, client, exp = store
    run_id = client.create_run(exp).info.run_id
    out = root / name
    out.mkdir()
    doc = summary(heldout)
    (out / "summary.json").write_text(json.dumps(doc))
    log_to_mlflow(doc, out, run_id=run_id, client=client)
    return run_id


def test_a_test_analysis_gets_its_own_folder_and_metric_names(store):
    _, client, _ = store
    val = logged(store, "val", "v")
    test = logged(store, "test", "t")
    assert [f.path for f in client.list_artifacts(val)] == [runs.SHP_DIR]
    assert [f.path for f in client.list_artifacts(test)] == ["shp_test"]
    assert "shp_readout_accuracy" in client.get_run(val).data.metrics
    metrics = client.get_run(test).data.metrics
    assert "shp_test_readout_accuracy" in metrics and "shp_readout_accuracy" not in metrics


def test_committee_and_report_refuse_a_summary_not_made_on_validation(store, tmp_path):
    from analysis.committee.mlflow_run import _label_sets
    from analysis.committee.select import CommitteeError
    from analysis.report.collect import _shp_summary

    root, client, exp = store
    run_id = client.create_run(exp).info.run_id
    folder = tmp_path / "shp"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary("test")))
    client.log_artifact(run_id, str(folder / "summary.json"), runs.SHP_DIR)  # by hand, old style
    with pytest.raises(CommitteeError, match="held-out split 'test', not 'val'"):
        _label_sets(client, run_id, tmp_path / "w1")
    shp, why = _shp_summary(client, run_id, tmp_path / "w2")
    assert shp is None and "refused" in why
    good = logged(store, "val", "v2")
    assert _label_sets(client, good, tmp_path / "w3") == (frozenset({0}), frozenset({1, 2}))


def test_andc_mask_and_accuracy_come_from_disjoint_halves():
    from analysis.shp.andc import split_halves

    choose, judge = split_halves(101, seed=0, device=torch.device("cpu"))
    both = torch.cat([choose, judge])
    assert len(choose) == 50 and len(judge) == 51
    assert sorted(both.tolist()) == list(range(101))  # disjoint, and every image used once
    again, _ = split_halves(101, seed=0, device=torch.device("cpu"))
    assert torch.equal(choose, again)
