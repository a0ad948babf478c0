"""A measured committee (or one trial) as a registered MLflow model: `--register NAME`.

Two steps, so that a refusal leaves nothing behind. `prepare` runs before the committee run
is logged: it downloads every member's checkpoint and rebuilds the model from it (a missing
or unreadable one is a RegistryError naming the member), and reads the input preprocessing
the member was trained with (the dataset's mean and std, cct.data) from the same split its
logits came from. `register` then logs one pyfunc model under the committee run, carrying
its code (analysis/committee/pyfunc_model.py, the committee arithmetic and the `cct`
package), and registers it as a new version of NAME, tagged with its lineage.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from analysis import runs
from analysis.committee.pyfunc_model import (
    MEMBER_ARTIFACT,
    SPEC_ARTIFACT,
    CommitteeModel,
    load_member,
)
from analysis.committee.select import Candidate
from cct.config import TrainConfig
from cct.data import DatasetError, load_dataset

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "committee"  # the logged model's name under the committee run
SPEC_FILE = "committee.json"
# What the model carries besides its weights: the pyfunc class, the arithmetic it shares
# with the CLI, and the whole `cct` package (the model, the normalisation, the config).
CARRIED_FILES = (
    "analysis/__init__.py",
    "analysis/committee/__init__.py",
    "analysis/committee/select.py",
    "analysis/committee/pyfunc_model.py",
)
CARRIED_PACKAGES = ("cct",)


class RegistryError(Exception):
    """Registration refused before anything was logged; the message names the member."""


@dataclass(frozen=True)
class Member:
    """A member ready to be packed: its run, checkpoint folder and preprocessing."""

    run_id: str
    trial_id: str | None
    folder: Path
    preprocessing: dict[str, Any]


def _load_checked(candidate: Candidate, client: MlflowClient, workdir: Path) -> TrainConfig:
    """Download the member's checkpoint into workdir/<run id>/checkpoint and rebuild it."""
    runs.download(client, candidate.run_id, runs.CHECKPOINT_DIR, workdir)
    _, cfg = load_member(workdir / candidate.run_id / runs.CHECKPOINT_DIR, torch.device("cpu"))
    return cfg


def _preprocessing(cfg: TrainConfig, candidate: Candidate, cache: dict[str, Any]) -> dict:
    """The member's input preprocessing, read from its dataset as its trial loaded it."""
    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True, default=str)
    if key not in cache:
        try:
            data = load_dataset(cfg.data, "cpu")
        except (DatasetError, OSError) as e:
            raise RegistryError(
                f"member {candidate.run_id}: its dataset {cfg.data.dataset!r} cannot be read "
                f"here for its normalisation ({e}); nothing registered"
            ) from None
        cache[key] = {
            "dataset": data.name,
            "mean": list(data.mean),
            "std": list(data.std),
            "channels": data.in_channels,
            "size": data.img_size,
            "num_classes": data.num_classes,
            "split_hash": data.split_hash,
        }
    pre = cache[key]
    if pre["split_hash"] != candidate.split_hash:
        raise RegistryError(
            f"member {candidate.run_id}: its config's split of {pre['dataset']} has hash "
            f"{pre['split_hash']}, its logits {candidate.split_hash}: the data changed since"
        )
    return pre


def prepare(client: MlflowClient, members: Sequence[Candidate], workdir: Path) -> list[Member]:
    """Every member's checkpoint, loaded once to prove it readable, and its preprocessing;
    RegistryError names the first member whose checkpoint is missing or unreadable."""
    out, cache = [], {}
    for c in members:
        trial = c.info.get("trial_id")
        try:
            cfg = _load_checked(c, client, workdir)
        except Exception as e:  # any failure to read it (absent, truncated, foreign) is one refusal
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RegistryError(
                f"member {c.run_id} (trial {trial}): checkpoint {c.info.get('checkpoint')} is "
                f"missing or unreadable ({type(e).__name__}: {first[:300]}); nothing registered"
            ) from None
        folder = workdir / c.run_id / runs.CHECKPOINT_DIR
        out.append(Member(c.run_id, trial, folder, _preprocessing(cfg, c, cache)))
    shapes = {(m.preprocessing["channels"], m.preprocessing["size"]) for m in out}
    if len(shapes) != 1:
        raise RegistryError(f"members take differently shaped images {sorted(shapes)}")
    return out


def signature(channels: int, size: int, classes: int) -> ModelSignature:
    """uint8 (N, C, H, W) images in; the committee's class and (N, classes) scores out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, channels, size, size))]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.int64), (-1,), "prediction"),
                TensorSpec(np.dtype(np.float64), (-1, classes), "scores"),
            ]
        ),
    )


def stage_code(workdir: Path) -> list[str]:
    """Copies of the carried code under workdir/code, as mlflow `code_paths` entries (each
    top-level package lands on the loading process's sys.path)."""
    code = workdir / "code"
    for rel in CARRIED_FILES:
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, code / rel)
    for pkg in CARRIED_PACKAGES:
        shutil.copytree(
            ROOT / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    tops = {Path(rel).parts[0] for rel in CARRIED_FILES} | set(CARRIED_PACKAGES)
    return [str(code / top) for top in sorted(tops)]


def spec(members: Sequence[Member], combine: str) -> dict[str, Any]:
    """committee.json: what the pyfunc reads at load time."""
    pre = members[0].preprocessing
    return {
        "format": 1,
        "combine": combine,
        "weights": [1.0 / len(members)] * len(members),  # the CLI's committees: plain means
        "input": {
            "layout": "NCHW",
            "dtype": "uint8",
            "channels": pre["channels"],
            "size": pre["size"],
        },  # fmt: skip
        "num_classes": pre["num_classes"],
        "dataset": pre["dataset"],
        "members": [
            {
                "run_id": m.run_id,
                "trial_id": m.trial_id,
                "mean": m.preprocessing["mean"],
                "std": m.preprocessing["std"],
            }  # fmt: skip
            for m in members
        ],
    }


def lineage_tags(members: Sequence[Member], context: dict[str, Any]) -> dict[str, str]:
    """Model-version tags: the sweep run, the committee run, each member's trial run, and the
    selection settings (context: the committee run's params plus its run id)."""
    tags = {k: str(v) for k, v in context.items() if v is not None}
    for i, m in enumerate(members):
        tags[f"member.{i}.run_id"] = m.run_id
        tags[f"member.{i}.trial_id"] = str(m.trial_id)
    tags["size"] = str(len(members))
    tags["dataset"] = members[0].preprocessing["dataset"]
    return {k: v[:5000] for k, v in tags.items()}


def requirements() -> list[str]:
    """Pinned to what logged it (given, so mlflow need not load the model to infer them)."""
    torch_version = torch.__version__.split("+")[0]
    return [f"torch=={torch_version}", f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"]


def register(
    tracking_uri: str,
    name: str,
    *,
    members: Sequence[Member],
    combine: str,
    context: dict[str, Any],
    workdir: Path,
) -> Any:
    """Log the pyfunc under context["committee_run_id"] and register it as a new version of
    `name`; returns the ModelVersion."""
    (workdir / SPEC_FILE).write_text(json.dumps(spec(members, combine), indent=2))
    artifacts = {SPEC_ARTIFACT: str(workdir / SPEC_FILE)}
    artifacts |= {MEMBER_ARTIFACT.format(i): str(m.folder) for i, m in enumerate(members)}
    pre = members[0].preprocessing
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # the fluent API logs models; restored below
    try:
        with mlflow.start_run(run_id=context["committee_run_id"]), warnings.catch_warnings():
            # No input example: mlflow would load and run the model while logging it to check
            # it; the signature says what it takes, and the tests run it.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=CommitteeModel(),
                artifacts=artifacts,
                code_paths=stage_code(workdir),
                signature=signature(pre["channels"], pre["size"], pre["num_classes"]),
                pip_requirements=requirements(),
                # the defaults; load_model(..., model_config={...}) may override them
                model_config={"device": "cpu", "precision": "auto"},
            )
        tags = lineage_tags(members, context)
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        client = MlflowClient(tracking_uri)
        client.set_tag(context["committee_run_id"], "registered_model", f"{name}/{version.version}")
    finally:
        mlflow.set_tracking_uri(previous)
    return version
