"""The GPU check (`python -m cct.perf --device cuda --check`), tested on the CPU: refused in
one line without a GPU; every case runs through the CPU stand-in of the device seam; a case
that hangs or crashes costs only itself; check.json is rewritten after every case; the SHP
row is read off analysis.bench's JSON; the peak table matches whole names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cct.models import create_model
from cct.perf.check import cases as check_cases
from cct.perf.check import run as check
from cct.perf.check.gpu import STANDIN_ENV, CpuStandIn
from cct.perf.suite.rows import main as perf_main
from cct.perf.workload import peak_tflops_for

pytestmark = pytest.mark.usefixtures("one_thread")


def test_check_without_a_gpu_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(STANDIN_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert perf_main(["--device", "cuda", "--check", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --check needs a CUDA GPU")
    assert not out.exists()  # nothing half-written
    assert perf_main(["--device", "cpu", "--check"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_check_refuses_unknown_cases_naming_them(monkeypatch, capsys):
    monkeypatch.setenv(STANDIN_ENV, "1")
    assert perf_main(["--check", "--check-cases", "train_bf16,warp"]) == 2
    assert "'train_bf16,warp'" in capsys.readouterr().err


def test_every_case_passes_on_the_cpu_stand_in(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(STANDIN_ENV, "1")
    names = [n for n in check_cases.CASES if n != "sharing"]  # sharing: tested in test_perf
    report = check.run_check(
        tmp_path,
        device="stand-in",
        cases=names,
        budget_s=600,
        quick=True,
        runner=check.in_process_runner,
    )
    statuses = {n: r["status"] for n, r in report["cases"].items()}
    assert statuses == {n: "skipped" if n == "shp_analysis" else "pass" for n in names}
    written = json.loads((tmp_path / check.JSON_NAME).read_text())
    assert written["finished"] and list(written["cases"]) == names
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(names)  # one line per case
    assert lines[0].startswith("PASS    train_bf16") and "held-out loss" in lines[0]
    train = report["cases"]["train_bf16"]
    assert train["heldout_loss_after"] < train["heldout_loss_before"]
    attention = report["cases"]["attention"]["configs"]
    assert set(attention) == {label for label, _ in check_cases.ATTENTION_CONFIGS}
    assert attention["4x64"]["ratio_to_4x64"] == 1.0


def test_a_hung_or_crashed_case_costs_only_itself():
    t = [sys.executable, "-c"]
    assert check.run_capped([*t, "import time; time.sleep(60)"], 1.0) == ("timeout", "")
    status, text = check.run_capped(
        [*t, "import sys; print('boom', file=sys.stderr); sys.exit(3)"], 30
    )
    assert status == "crashed" and "exit code 3" in text and "boom" in text
    assert check.run_capped([*t, "print('{\"ok\": true}')"], 30) == ("done", '{"ok": true}\n')


def test_report_is_rewritten_after_every_case_and_the_budget_holds(tmp_path, monkeypatch):
    seen = []

    def runner(name, quick, cap_s):
        seen.append(list(json.loads((tmp_path / check.JSON_NAME).read_text())["cases"]))
        if name == "fused_adamw":
            return {"ok": False, "status": "crashed", "summary": "exit code -11"}
        if name == "nccl":
            monkeypatch.setattr(check.time, "monotonic", lambda: 1e12)  # the budget is spent
            return {"ok": True, "summary": "fine"}
        return {"ok": False, "summary": "loss did not fall"}

    names = ["train_bf16", "fused_adamw", "nccl", "attention"]
    report = check.run_check(
        tmp_path, device="d", cases=names, budget_s=300, quick=True, runner=runner
    )
    assert seen == [[], ["train_bf16"], ["train_bf16", "fused_adamw"]]
    statuses = [r["status"] for r in report["cases"].values()]
    assert statuses == ["fail", "crashed", "pass", "not run"]


def test_shp_row_read_off_the_analysis_bench_json():
    sample = {
        "train": {"training_300_epochs_seconds_extrapolated": 480.0},
        "fast": {
            "seconds_extrapolated_50k_10k": 12.0,
            "fraction_of_300_epoch_training": 0.025,
            "seconds_measured": {"total_wall": 3.5},
        },
    }
    row = check_cases.parse_shp_bench(sample)
    assert row["ok"] and row["analysis_seconds_extrapolated"] == 12.0
    assert "2.50% of a 300-epoch run of ~8 min" in row["summary"]


def test_the_analysis_bench_needs_no_mlflow_ray_or_optuna():
    code = (
        "import sys, analysis.bench.shp, cct.perf.check.run; "
        "print(sorted(m for m in ('mlflow', 'ray', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sdpa_backend_is_read_off_the_kernels_that_run():
    model = create_model("cct_2_3x2_32", num_classes=10, img_size=16, embed_dim=32)
    x = torch.randn(2, 3, 16, 16)
    assert check_cases.sdpa_backend(model.eval(), x, bf16=False) == "flash (CPU)"
    # Training mode on a CPU with attention dropout: the written-out path (layers.Attention).
    assert check_cases.sdpa_backend(model.train(), x, bf16=False) == "written out (no SDPA)"
    assert CpuStandIn().peak_mb() is None


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_table_matches_whole_names(name, tflops):
    assert peak_tflops_for(name) == tflops
