"""`python -m cct.data.preview --out batch.png`: one training batch before and after a recipe's
augmentation, as a picture, to see what the model is shown.

Three rows per image column: the image as stored; after the uint8 stage (crop, flip,
RandAugment); and what the model gets (after erasing and mixup/cutmix, mapped back from the
normalised values to pixels, clipped). The same seed draws the same batch and the same
augmentation, so two recipes can be compared image by image.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from cct.cli import OneLineParser, fail
from cct.config import DataConfig
from cct.data.augment import DeviceAugment, recipe_augment
from cct.data.loader import load_dataset
from cct.data.sources import DATASETS, DatasetError

RECIPES = ("cct300", "cct200")


def augmented_rows(x: torch.Tensor, y: torch.Tensor, aug: DeviceAugment, seed: int):
    """(stored, after the uint8 stage, what the model gets) as uint8 (B, C, H, W) batches.
    The uint8 stage is the same recipe without erasing and mixing, from the same seed: its
    draws come first, so both calls see the same crops, flips and ops."""
    uint8_only = dataclasses.replace(aug.spec, erase_prob=0.0, mixup=0.0, cutmix=0.0)
    stage = DeviceAugment(uint8_only, aug.num_classes, aug.mean, aug.std)
    mean = torch.tensor(aug.mean).view(1, -1, 1, 1)
    std = torch.tensor(aug.std).view(1, -1, 1, 1)

    def pixels(z: torch.Tensor) -> torch.Tensor:
        return ((z * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)

    mid, _ = stage(x, y, torch.Generator().manual_seed(seed))
    out, _ = aug(x, y, torch.Generator().manual_seed(seed))
    return x, pixels(mid), pixels(out)


def draw(rows, path: Path, title: str) -> None:
    # deferred: matplotlib (about 1.4 s) loads only to draw, after choosing the Agg backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.1 * n, 3.6), squeeze=False)
    labels = ("stored", "crop, flip,\nRandAugment", "+ erase, mix\n(model input)")
    for r, (batch, label) in enumerate(zip(rows, labels, strict=True)):
        for i in range(n):
            ax = axes[r][i]
            img = batch[i].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cct.data.preview", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--root", default=DataConfig.root, help="data folder (default: %(default)s)")
    p.add_argument("--recipe", default="cct300", help=f"one of {', '.join(RECIPES)}")
    p.add_argument("--images", type=int, default=12, help="batch size shown (default 12)")
    p.add_argument("--img-size", type=int, default=32, help="pixels (default 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.dataset not in DATASETS:
        fail(f"--dataset {args.dataset!r}: choose from {', '.join(DATASETS)}")
    if args.recipe not in RECIPES:
        fail(f"--recipe {args.recipe!r}: choose from {', '.join(RECIPES)}")
    if not 1 <= args.images <= 64:
        fail(f"--images {args.images}: must be in [1, 64]")
    out = Path(args.out)
    if not out.parent.is_dir():
        fail(f"--out {args.out}: folder {str(out.parent)!r} does not exist")
    cfg = DataConfig(dataset=args.dataset, root=args.root, img_size=args.img_size)
    if args.dataset == "synthetic":
        cfg = dataclasses.replace(cfg, synthetic_train=max(200, args.images), synthetic_test=10)
    try:
        data = load_dataset(cfg)
    except DatasetError as e:
        fail(e)
    spec = recipe_augment(args.recipe, args.img_size)
    aug = DeviceAugment(spec, int(data.train_y.max()) + 1, data.mean, data.std)
    x, y = data.train_x[: args.images], data.train_y[: args.images]
    title = f"{args.dataset}, recipe {args.recipe} ({spec.randaugment or 'no RandAugment'})"
    draw(augmented_rows(x, y, aug, args.seed), out, title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
