"""Checkpoints: uncompiled, unwrapped weights plus a JSON description, loaded safely.

Layout of a checkpoint folder:
  model.pt        state_dict of the bare model (no DDP / compile prefixes)
  train_state.pt  optimizer state, epoch and bookkeeping for resume
  model.json      resolved config, architecture settings, git commit, epoch, metrics
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cct.config import TrainConfig
from cct.models import CCT, CCTSettings
from cct.provenance import source_provenance


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def git_commit() -> str | None:
    # From git, or from the provenance file where the code was synced without .git (ray up).
    return source_provenance()["commit"]


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    cfg: TrainConfig,
    epoch: int,
    metrics: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write atomically: into a sibling temp folder, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bare = unwrap(model)
    torch.save(bare.state_dict(), tmp / "model.pt")
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    description = {
        "config": cfg.to_dict(),
        "settings": dataclasses.asdict(bare.settings),
        "epoch": epoch,
        "metrics": metrics,
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }
    (tmp / "model.json").write_text(json.dumps(description, indent=2, default=float))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def read_description(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "model.json").read_text())


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[CCT, dict[str, Any]]:
    """Rebuild the model from a checkpoint folder; returns (model in eval mode, description)."""
    description = read_description(path)
    model = CCT(CCTSettings(**description["settings"]))
    state = torch.load(Path(path) / "model.pt", map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval(), description


def load_train_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    f = Path(path) / "train_state.pt"
    if not f.exists():
        return None
    return torch.load(f, map_location=map_location, weights_only=True)
