"""Measurement of `cct`, apart from the library it measures (torch only: runs on a bare GPU box).

    python -m cct.perf [--device ...]           the suite: ours next to a plain reference
    python -m cct.perf --device cuda --check     the GPU check: every GPU path once
    python -m cct.perf.bench --variant NAME      size and speed of one variant

suite/       the suite's rows and targets (rows.py), the cases measured (cases.py), one
             training step of each pipeline (steps.py), N processes sharing one device
             (sharing.py)
check/       the GPU check (run.py), its cases (cases.py), the device seam and its CPU
             stand-in (gpu.py)
reference/   the model, input pipeline and RandAugment written the usual way: the suite's
             comparison and the tests' oracles
timing.py    interleaved repeats, medians, steady-state loader windows, load average
report.py    bench.json rows, merged by several commands (the Ray-side and analysis
             benchmarks too), and bench.md
bench.py     one variant's parameters, MACs, latency, throughput and training speed
"""
