"""Per-unit fields (SPEC 4.3): what each unit alone sends to each output of the readout.

The field of unit u on output j for input x is sum_{n in u} W[j, n] * pooled[x, n]: every
other unit's weights silenced, u's activations left as they are. F[u, i, j] is its mean over
held-out inputs of true label i. Because the field is linear in the pooled features, the mean
field is the field of the per-label mean pooled features — so the held-out pass only has to
accumulate per-label sums, never per-sample fields.
"""

from __future__ import annotations

import torch
from torch import Tensor


def unit_fields(weight: Tensor, class_mean_pooled: Tensor, unit_size: int) -> Tensor:
    """F (U, K, K): row = true label, column = output.

    weight (K, W) is the readout's; class_mean_pooled (K, W) the mean pooled feature of each
    true label; units are consecutive groups of `unit_size` nodes.
    """
    K, W = weight.shape
    if W % unit_size:
        raise ValueError(f"width {W} is not a multiple of the unit size {unit_size}")
    U = W // unit_size
    m = class_mean_pooled.reshape(K, U, unit_size)  # (K_true, U, s)
    w = weight.reshape(weight.shape[0], U, unit_size)  # (K_out, U, s)
    return torch.einsum("ius,jus->uij", m.double(), w.double())


def fields_error(fields: Tensor, logits: Tensor) -> float:
    """Largest |sum_u F[u] - logits|: the fields must add up to the readout's own mean
    logits per true label (computed separately, by its forward pass)."""
    return float((fields.sum(0) - logits.double()).abs().max())


def check_fields(fields: Tensor, logits: Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> float:
    """fields_error, raising when it exceeds rtol * max|logits| + atol (a real defect: the
    units, the pooling or the readout's forward disagree)."""
    err = fields_error(fields, logits)
    tol = rtol * float(logits.abs().max()) + atol
    if not err <= tol:
        raise RuntimeError(
            f"per-unit fields do not add up to the readout logits: max error {err:.3g} > {tol:.3g}"
        )
    return err
