"""`python -m analysis.report`: the page on a hand-made
sweep, one-line errors for bad input, and (marked slow) the report on the shared real sweep
of tests/conftest.py, opened in a real headless Chromium."""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from analysis.report.cli import build_page, main
from analysis.report.collect import SweepData, Trial, collect
from analysis.report.latency import finalists
from analysis.shp.summary import read_summary

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)

# --------------------------------------------------------------------------------------
# the verdict rules on hand-made data: tests/test_verdict_stats.py


def test_pareto_front_of_accuracy_against_macs():
    pts = [("a", 0.95, 100.0), ("b", 0.97, 300.0), ("c", 0.94, 200.0), ("d", 0.97, 250.0)]
    trials = [hand_trial(f"r{i}", 4, 0, val, macs=m) for i, (_, val, m) in enumerate(pts)]
    assert finalists(trials) == ["r3", "r0"]  # the front ("d", "a"), best accuracy first
    assert finalists(trials, cap=1) == ["r3"]


# --------------------------------------------------------------------------------------
# the page on a hand-made sweep (no MLflow)


def hand_shp(num_heads: int, snrs: list[float], k: int = 10) -> dict:
    blocks = []
    for b, snr in enumerate(snrs):
        sets = [[(h + j) % k for j in range(3)] for h in range(num_heads)]
        per_label = [sum(lab in s for s in sets) for lab in range(k)]
        blocks.append(
            {
                "block": b,
                "kind": "transformer",
                "unit": "head",
                "num_units": num_heads,
                "readout_accuracy": 0.8 + 0.05 * b,
                "snr_labels": snr,
                "snr_area": 2 * snr,
                "noise_free": False,
                "units_with_cluster": num_heads,
                "mean_labels_in_clusters": 3.0,
                "mean_noise": 3.0 / snr,
                "label_sets": sets,
                "unit_noise": [1] * num_heads,
                "heads_per_label": per_label,
                "heads_per_label_mean": sum(per_label) / k,
                "heads_per_label_min": min(per_label),
                "heads_per_label_max": max(per_label),
                "coverage": sum(c > 0 for c in per_label) / k,
                "label_set_size_mean": 3.0,
                "pairwise_jaccard_mean": 0.2,
            }
        )
    return {"pooling": "mean", "num_classes": k, "heldout": "val", "blocks": blocks}


def hand_trial(run_id, heads, conv, val, *, test=None, macs=1e6, shp=None, seed=0) -> Trial:
    arch = {
        "variant": "cct_2_3x2_32",
        "num_heads": heads,
        "head_dim": 64 // heads,
        "embed_dim": 64,
        "conv_blocks": conv,
        "depth": 3,
    }
    metrics = {
        "val_accuracy": val,
        "test_accuracy": val if test is None else test,
        "macs": macs,
        "params": 5e4,
        "latency_ms": 1.0 + conv,
    }
    tags = {"latency_shared": "true", "device": "cpu (1 threads)", "precision": "fp32"}
    summary = None if shp is None else read_summary(shp)
    return Trial(run_id, f"trial_{run_id}", arch, seed, metrics, tags, summary)


def hand_sweep(with_shp: bool = True) -> SweepData:
    rising, flat = [0.5, 1.0, 2.0], [1.0, 1.0, 1.0]
    trials = [
        hand_trial("r1", 2, 0, 0.96, macs=2e6, shp=hand_shp(2, rising) if with_shp else None),
        hand_trial("r2", 8, 0, 0.955, macs=1e6, shp=hand_shp(8, rising), seed=1),
        hand_trial("r3", 8, 1, 0.94, macs=0.9e6, shp=hand_shp(8, flat)),
    ]
    return SweepData(
        experiment="hand",
        experiment_id="1",
        sweep_run_id="abc123",
        sweep_name="hand",
        trials=trials,
        not_finished={"FAILED": 1},
        n_val=400,
        n_test=400,
        committee=None,
        sweep_summary={
            "objectives": [["val_accuracy", "max"]],
            "trials": [
                {
                    "config": {"model.num_heads": h, "model.conv_blocks": c},
                    "status": st,
                    "val_accuracy": v,
                }
                for h, c, v, st in [
                    (2, 0, 0.96, "done"),
                    (8, 0, 0.955, "done"),
                    (8, 1, 0.94, "done"),
                    (4, 1, None, "error"),
                ]
            ],
            "importance": {
                "val_accuracy": {"trials": 3, "note": "not enough trials (3 finished, at least 8)"}
            },
        },  # fmt: skip
        sweep_metrics={"gpu_hours": 1.5, "cpu_hours": 12.0, "wall_hours": 0.5, "cost": 3.75},
    )


def images(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", page)


def test_page_on_a_hand_made_sweep_is_self_contained_with_a_figure_per_section():
    page = build_page(hand_sweep(), tracking_uri="sqlite:///x.db", fetch=None)
    # accuracy, SNR, heads, latency, the search's parallel coordinates; no committee run yet
    assert len(images(page)) == 5
    assert all('src="data:image/png;base64,' in img for img in images(page))
    assert not EXTERNAL.search(page) and "<script" not in page and "<link" not in page
    assert 'content="5"' in page  # <meta name="cct-report-figures">
    assert 'alt="parallel coordinates of model.conv_blocks, model.num_heads' in page
    assert "Each line is a trial (3, stopped ones included)" in page  # not the errored one
    assert "not enough trials (3 finished, at least 8)" in page
    assert "Compute held by the sweep: 1.5 GPU-hours and 12 CPU-hours" in page
    assert "cost 3.75." in page
    assert "No committee run for this sweep yet" in page
    assert "--no-remeasure" in page  # says the latencies are the logged ones
    assert page.count('class="badge') == 5
    assert "(1 not finished)" in page


def test_page_says_which_trials_lack_analysis_and_still_renders():
    page = build_page(hand_sweep(with_shp=False), tracking_uri="sqlite:///x.db", fetch=None)
    assert "1 of 3 trials have no SHP analysis" in page and "trial_r1 (run r1)" in page
    assert "The best trial trial_r1 has no head analysis" in page
    assert len(images(page)) == 5


def test_page_without_any_analysis_names_what_is_missing():
    data = hand_sweep()
    data = replace(data, trials=[replace(t, shp=None) for t in data.trials])
    page = build_page(data, tracking_uri="sqlite:///x.db", fetch=None)
    assert "3 of 3 trials have no SHP analysis" in page
    assert len(images(page)) == 3  # accuracy, latency and the search only


def test_page_of_a_sweep_still_running_says_the_search_summary_is_missing():
    data = replace(hand_sweep(), sweep_summary=None, sweep_metrics={})
    page = build_page(data, tracking_uri="sqlite:///x.db", fetch=None)
    assert "The sweep run has no sweep/summary.json: it is written when the sweep ends." in page
    assert "Compute held by the sweep" not in page
    assert len(images(page)) == 4


def test_the_search_importance_table_lists_each_key_when_there_are_values():
    data = hand_sweep()
    summary = {**data.sweep_summary, "importance": {"val_accuracy": {
        "trials": 12, "evaluator": "fANOVA", "values": {"model.conv_blocks": 0.9, "model.num_heads": 0.1}
    }}}  # fmt: skip
    page = build_page(replace(data, sweep_summary=summary), tracking_uri="x", fetch=None)
    assert re.search(r"model\.conv_blocks</td><td[^>]*>0\.90</td><td[^>]*>12<", page), page
    assert page.count("not enough data") >= 2  # SNR and specialisation


def test_runs_logged_before_per_head_counts_are_not_enough_data_and_the_rules_are_named():
    data = hand_sweep()
    old = []
    for t in data.trials:  # summaries without per-head noise or label sets, as older runs
        blocks = [
            {k: v for k, v in b.items() if k not in ("unit_noise", "label_sets")}
            for b in hand_shp(t.arch["num_heads"], [0.5, 1.0, 2.0])["blocks"]
        ]
        shp = read_summary({"pooling": "mean", "num_classes": 10, "heldout": "val",
                            "blocks": blocks})  # fmt: skip
        old.append(replace(t, shp=shp))
    page = build_page(replace(data, trials=old), tracking_uri="x", fetch=None)
    verdicts = re.findall(r'class="badge[^"]*"[^>]*>([^<]+)<', page)
    assert verdicts[:2] == ["not enough data", "not enough data"], verdicts  # SNR, heads
    assert "logged without per-head noise" in page and "no per-head noise" in page
    assert "Verdict rules version 2" in page
    assert "generalises to" in page


def test_verdicts_read_the_test_split_and_the_varied_knobs():
    from analysis.report.evidence import verdicts

    v = {x.key: x for x in verdicts(hand_sweep(), _logged_latency(hand_sweep()))}
    # r3 (8 heads, conv 1) is matched with r2 (8 heads, conv 0), not with the best (2 heads);
    # the logged in-sweep latencies have no timing rounds
    assert v["conv"].status == "not enough data" and "r3" in v["conv"].reason
    assert "trial_r1" not in v["conv"].reason
    # chosen on validation, judged on 400 test images: too few for a 2-point margin
    assert v["equal"].status == "not enough data" and "test images would tell" in v["equal"].reason


def _logged_latency(data):
    from analysis.report.latency import logged

    return {t.run_id: logged(t) for t in data.trials}


# --------------------------------------------------------------------------------------
# bad input


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A sqlite store with sweep 'stalled' whose only trial failed."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("stalled", artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp, tags={"role": "sweep", "sweep": "stalled"}).info.run_id
    trial = client.create_run(
        exp, tags={"role": "trial", "trial_id": "t0", "mlflow.parentRunId": parent}
    ).info.run_id
    client.set_terminated(trial, status="FAILED")
    client.set_terminated(parent, status="FAILED")
    return {"root": root, "uri": uri, "parent": parent}


def test_collect_reads_the_untrained_reference_beside_the_analysis(small_store, tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    client = MlflowClient(small_store["uri"])
    exp = client.create_experiment("withref", artifact_location=str(small_store["root"] / "ref"))
    parent = client.create_run(exp, tags={"role": "sweep", "sweep": "withref"}).info.run_id
    trial = client.create_run(
        exp, tags={"role": "trial", "trial_id": "t0", "mlflow.parentRunId": parent}
    ).info.run_id
    client.log_param(trial, "model.num_heads", "2")
    client.log_metric(trial, "val_accuracy", 0.9)
    for folder, snrs in (("shp", [0.5, 1.0, 2.0]), ("shp_reference", [1.0, 1.0, 1.0])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps(hand_shp(2, snrs)))
        client.log_artifacts(trial, str(tmp_path / folder), folder)
    client.set_terminated(trial)
    data = collect(client, experiment="withref", sweep_run_id=None, workdir=tmp_path / "w")
    t = data.trials[0]
    assert t.shp is not None and t.shp_reference is not None
    assert [b.snr_labels for b in t.shp_reference.blocks] == [1.0, 1.0, 1.0]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "nope"], "unknown experiment 'nope'"),
        (["--sweep-run-id", "0123456789abcdef"], "unknown sweep run '0123456789abcdef'"),
        (["--experiment", "stalled"], "has no finished trial"),
        (["--experiment", "stalled", "--latency-runs", "0"], "--latency-runs 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    small_store, tmp_path, capsys, args, message
):
    out = tmp_path / "report.html"
    code, stdout, err = run_main(
        capsys, *args, "--tracking-uri", small_store["uri"], "--out", str(out)
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and stdout == ""


def test_no_store_and_no_arguments_are_one_line_errors(tmp_path):
    for argv in (["--experiment", "quickstart"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "analysis.report", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no report, no new mlflow.db


# --------------------------------------------------------------------------------------
# the shared real sweep (tests/conftest.py: experiment e2e, 2 finished digits trials)


def committee_exists(client, parent_id: str) -> bool:
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.role = 'committee' and tags.sweep_run_id = '{parent_id}' "
        "and attributes.status = 'FINISHED'",
    )
    return bool(runs)


@pytest.fixture(scope="module")
def real_report(sweep, mlflow_runs):
    """The report as a user makes it, in the sweep's folder (few timed runs: test time)."""
    root = sweep["root"]
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--experiment", "e2e", "--latency-runs", "5"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs
    parent = next(r for r in runs if r.data.tags.get("role") == "sweep")
    return {
        "path": root / "report.html",
        "html": (root / "report.html").read_text(),
        "stdout": proc.stdout,
        "client": client,
        "parent": parent.info.run_id,
        "committee": committee_exists(client, parent.info.run_id),
        # the search section draws its parallel coordinates when the head counts differ
        "varied": len(
            {r.data.params["model.num_heads"] for r in runs if r.data.tags.get("role") == "trial"}
        )
        > 1,
    }


@pytest.mark.slow
def test_report_on_the_real_sweep_is_logged_and_self_contained(real_report):
    r = real_report
    page = r["html"]
    logged = {f.path for f in r["client"].list_artifacts(r["parent"], "report")}
    assert logged == {"report/report.html"}
    assert r["parent"] in r["stdout"]
    assert not EXTERNAL.search(page) and "<script" not in page and "<link" not in page
    assert "Sweep report — e2e" in page and page.count('class="badge') == 5
    assert "have no SHP analysis" not in page  # every trial of the sweep was analysed
    assert "Re-measured here, no other trial running" in page
    assert ("No committee run for this sweep yet" in page) != r["committee"]
    assert len(images(page)) == 4 + r["varied"] + r["committee"]
    # Both trials across their searched head counts, and the hours the sweep logged.
    assert ("Each line is a trial (2, stopped ones included)" in page) == r["varied"]
    assert "val_accuracy</td><td" in page and "not enough trials (2 finished" in page
    assert "Compute held by the sweep: 0 GPU-hours and " in page


@pytest.mark.slow
def test_report_on_the_real_sweep_without_analysis_says_what_is_missing(real_report):
    client = real_report["client"]
    with tempfile.TemporaryDirectory() as tmp:
        data = collect(client, experiment="e2e", sweep_run_id=None, workdir=Path(tmp))
    assert len(data.trials) == 2 and all(t.shp for t in data.trials)
    assert data.n_val and data.n_test and data.sweep_run_id == real_report["parent"]
    first = data.trials[0]
    stripped = replace(data, trials=[replace(first, shp=None), *data.trials[1:]])
    page = build_page(stripped, tracking_uri="x", fetch=None)
    assert "1 of 2 trials have no SHP analysis" in page and first.trial_id in page
    assert f"The best trial {first.trial_id} has no head analysis" in page


# --------------------------------------------------------------------------------------
# a real browser


def _browser_images_selenium(url: str, shot: Path, profile: str) -> list[list]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1300,1000",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        state = driver.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])"
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1300, min(int(height) + 120, 12000))
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    return state


def _browser_images_cli(page: Path, shot: Path, profile: str) -> list[list]:
    """Without selenium: a copy of the page with a script that writes what the images did
    into the title, read back from Chromium's --dump-dom."""
    probe = page.with_name("probe.html")
    script = (
        "<script>addEventListener('load', () => { document.title = 'IMAGES=' + "
        "JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, "
        "i.alt])); });</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    base = [
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1300,4000", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    import html
    import json

    found = re.search(r"<title>IMAGES=(.*?)</title>", dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
def test_report_opens_in_a_headless_browser_with_every_picture(real_report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    page = tmp_path / "report.html"
    shutil.copyfile(real_report["path"], page)  # opened from a file, no server
    shot = tmp_path / "report.png"
    profile = str(tmp_path / "profile")
    try:
        import selenium  # noqa: F401

        use_selenium = CHROMEDRIVER.exists()
    except ImportError:
        use_selenium = False
    if use_selenium:
        state = _browser_images_selenium(page.as_uri(), shot, profile)
    else:
        state = _browser_images_cli(page, shot, profile)
    assert len(state) == 4 + real_report["varied"] + real_report["committee"], state
    assert all(complete and width > 0 for complete, width, _ in state), state
    assert shot.is_file() and shot.stat().st_size > 10_000
    if os.environ.get("CCT_REPORT_SCREENSHOT"):
        dst = Path(os.environ["CCT_REPORT_SCREENSHOT"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dst)


def test_parser_has_the_documented_options():
    from analysis.report.cli import build_parser

    p = build_parser()
    args = p.parse_args(["--experiment", "x", "--no-remeasure"])
    assert isinstance(args, argparse.Namespace) and args.no_remeasure
    assert args.out == Path("report.html") and args.latency_runs == 100
