"""What every benchmark of cct/perf measures against: the SPEC's CIFAR recipe (its
augmentation and epoch) and each GPU's dense bf16 peak, for the model-FLOPs utilisation."""

from __future__ import annotations

import re
from typing import Any

from cct.data.augment import recipe_augment

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, keyed by
# the words of the name torch reports. A key matches whole words in order, most specific key
# first: "H200 NVL" is not an H200 SXM, "L40" is not an L4, "A10G" (AWS's A10 variant, fewer
# tensor-core clocks) is not an A10.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM; same tensor cores as H100 SXM, more memory
    ("GH200", 989.0),
    ("A100", 312.0),  # SXM and PCIe
    ("A10G", 70.0),  # the default GPU of ray_cluster.yaml (AWS g5)
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
]

# The SPEC section 3 recipe (CIFAR): what a sweep trial's step actually pays for.
RECIPE_AUGMENT = recipe_augment("cct300", 32)  # RandomResizedCrop + RandAugment included
# The schedule's epoch in a benchmark: CIFAR's 50,000 training images at the timed batch, so
# the learning rate moves per step as it does in a CIFAR run of the recipe.
RECIPE_TRAIN_IMAGES = 50_000


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def peak_tflops_for(name: str) -> float | None:
    """The dense bf16 peak of a CUDA device by its name, or None when it is not in the table."""
    words = _words(name)
    for key, tflops in PEAK_BF16_TFLOPS:
        k = _words(key)
        if any(words[i : i + len(k)] == k for i in range(len(words) - len(k) + 1)):
            return tflops
    return None


def utilisation(batch_macs: int, step_s: float, peak_tflops: float | None) -> dict[str, Any]:
    """Model TFLOP/s of a training step over `batch_macs` forward MACs, and the MFU against
    the peak (None without one)."""
    # Model FLOPs (Chowdhery et al. 2022, PaLM appendix B): backward costs twice the forward.
    tflops = 3 * 2 * batch_macs / step_s / 1e12
    return {
        "model_tflops_per_s": tflops,
        "peak_tflops": peak_tflops,
        "mfu": tflops / peak_tflops if peak_tflops else None,
    }
