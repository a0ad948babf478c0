"""The committee as an MLflow pyfunc model: raw uint8 images in, the committee's class and
scores out, computed as the sweep measured them (SPEC section 6).

This module travels inside the registered model (mlflow `code_paths`, with the `cct` package
and analysis/committee/select.py), so it imports only numpy, torch, mlflow, `cct` and the
committee arithmetic: a colleague loads the model without the project installed.

Each member is predicted as cct.engine.predict does when a trial logs its logits: the
dataset's normalisation (cct.data.augment.normalize, the member's training mean and std),
batches of 512, bf16 autocast where the member's precision asks for it on that device. The
members' logits are combined by analysis.committee.select.combine, the function the
committee CLI measured with, so on the same device and precision the per-image predictions
are those the CLI measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

from analysis.committee.select import combine
from cct.config import TrainConfig
from cct.data.augment import normalize
from cct.device import autocast, use_bf16
from cct.models import CCT, CCTSettings

SPEC_ARTIFACT = "committee_spec"  # the artifact key of committee.json
MEMBER_ARTIFACT = "member_{}"  # the artifact key of member i's checkpoint folder
EVAL_BATCH = 512  # cct.engine.predict's batch size: the batch the logged logits were made in
PRECISIONS = ("auto", "fp32", "bf16")


class ModelInputError(ValueError):
    """A batch the committee cannot read (wrong shape or values), named in the message."""


def load_member(folder: Path, device: torch.device) -> tuple[CCT, TrainConfig]:
    """A member's checkpoint folder (model.json + model.pt) as an eval-mode model on `device`
    and its training config."""
    description = json.loads((folder / "model.json").read_text())
    model = CCT(CCTSettings(**description["settings"]))
    state = torch.load(folder / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), TrainConfig.from_dict(description["config"])


@torch.no_grad()
def member_logits(
    model: CCT, x: torch.Tensor, mean: list[float], std: list[float], *, bf16: bool
) -> np.ndarray:
    """float32 (N, classes) logits of uint8 (N, C, H, W) images, batch by batch."""
    out = []
    for i in range(0, x.shape[0], EVAL_BATCH):
        with autocast(x.device, bf16):
            out.append(model(normalize(x[i : i + EVAL_BATCH], mean, std)).float())
    return torch.cat(out).cpu().numpy()


def as_images(model_input: Any, channels: int, size: int) -> np.ndarray:
    """The batch as uint8 (N, C, H, W), or ModelInputError naming what is wrong."""
    if isinstance(model_input, dict):  # a named tensor input
        model_input = next(iter(model_input.values()))
    x = np.asarray(model_input)
    want = (channels, size, size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ModelInputError(
            f"input of shape {x.shape}: expected uint8 images (N, {channels}, {size}, {size}), "
            "the dataset's layout"
        )
    if x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))):
            raise ModelInputError(f"input of dtype {x.dtype}: pixel values must be 0..255")
        x = x.astype(np.uint8)
    return np.ascontiguousarray(x)


class CommitteeModel(mlflow.pyfunc.PythonModel):
    """Loads the members named by committee.json; `model_config` may give `device` ("cpu",
    the default, or "cuda", "cuda:1") and `precision` ("auto": each member's own, as its
    trial ran on such a device; "fp32"; "bf16")."""

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        self.device = torch.device(config.get("device", "cpu"))
        precision = config.get("precision", "auto")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        self.spec = json.loads(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        self.members = []
        for i, member in enumerate(self.spec["members"]):
            folder = Path(context.artifacts[MEMBER_ARTIFACT.format(i)])
            model, cfg = load_member(folder, self.device)
            own = cfg.precision if precision == "auto" else precision
            bf16 = use_bf16(own, self.device)
            self.members.append((model, member["mean"], member["std"], bf16))

    def member_logits(self, model_input: Any) -> list[np.ndarray]:
        """Each member's float32 logits for the batch (what a trial logs as its logits)."""
        shape = self.spec["input"]
        x = as_images(model_input, shape["channels"], shape["size"])
        xt = torch.from_numpy(x).to(self.device)
        return [
            member_logits(model, xt, mean, std, bf16=bf16)
            for model, mean, std, bf16 in self.members
        ]

    # np.ndarray: a type hint mlflow accepts without reading a schema from it (the signature
    # logged with the model is the schema)
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """{"prediction": int64 (N,), "scores": float64 (N, classes)}: the committee's class
        (first maximum) and its combined scores (mean probabilities or mean logits)."""
        scores = combine(self.member_logits(model_input), self.spec["combine"])
        return {"prediction": np.argmax(scores, axis=1).astype(np.int64), "scores": scores}
