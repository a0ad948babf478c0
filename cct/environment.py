"""The environment a run ran in, recorded with it so that a result can be reproduced and a
resume under another environment is noticed: Python, torch, CUDA, cuDNN and the NVIDIA driver,
the node's hardware, every installed package, and the uncommitted diff of the source tree.
Torch only (plus git when the code is a checkout): a bare GPU box records the same."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MAX_DIFF_BYTES = 2_000_000  # a diff beyond this is cut (and says so): a run logs it each time
# What a resume compares, in the order its one line names them.
COMPARED = ("python", "torch", "cuda", "cudnn", "nvidia_driver")


def packages() -> dict[str, str]:
    """Every installed distribution, name -> version, sorted by name."""
    found = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
    return dict(sorted((k.lower(), v) for k, v in found.items() if k))


def _first_line(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def hardware() -> dict[str, Any]:
    """This node's CPU, memory and GPUs."""
    memory_kb = _first_line("/proc/meminfo", "MemTotal")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "cpu": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(int(memory_kb.split()[0]) / 2**20, 1) if memory_kb else None,
        "gpus": gpus,
    }


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version, where one is installed (NVML, else None)."""
    try:
        # deferred: optional, NVML only where an NVIDIA driver is
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library: nothing to record
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def uncommitted_diff() -> str | None:
    """`git diff HEAD` of the source tree (None outside a checkout), cut at MAX_DIFF_BYTES."""
    try:
        out = subprocess.run(
            ["git", "diff", "HEAD", "--no-color"], cwd=ROOT, capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    text = out.stdout.decode(errors="replace")
    if len(text) > MAX_DIFF_BYTES:
        text = text[:MAX_DIFF_BYTES] + f"\n... cut at {MAX_DIFF_BYTES} bytes\n"
    return text


def capture() -> dict[str, Any]:
    """The environment of this process on this node (the diff is kept apart: it can be large)."""
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else None,
        "nvidia_driver": nvidia_driver(),
        "hardware": hardware(),
        "packages": packages(),
    }


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two captures, as `name old -> new` items: the runtime first, then
    each package added, removed or at another version (hardware is the node's, not the
    environment's: trials may land on other nodes)."""
    out = [
        f"{key} {before.get(key)} -> {now.get(key)}"
        for key in COMPARED
        if before.get(key) != now.get(key)
    ]
    old, new = before.get("packages", {}), now.get("packages", {})
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            out.append(f"{name} {old.get(name, '(none)')} -> {new.get(name, '(none)')}")
    return out
