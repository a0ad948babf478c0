"""`python -m cct.data NAME [NAME ...] [--root DIR]`: download (where allowed) and verify
datasets once, before trials start. On a cluster every node runs it at setup, so no two
trials on a node race to download the same archive and no trial spends its first minutes
on the network."""

from __future__ import annotations

import sys
import time

from cct.cli import OneLineParser, fail
from cct.config import DataConfig
from cct.data.sources import DATASETS, DatasetError


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m cct.data", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", metavar="NAME", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--root", default=DataConfig.root, help="data folder (default: %(default)s)")
    p.add_argument("--no-download", action="store_true", help="only verify a local copy")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in DATASETS]
    if unknown:
        fail(f"unknown dataset {unknown[0]!r} (choose from {', '.join(DATASETS)})")
    for name in args.names:
        start = time.perf_counter()
        cfg = DataConfig(dataset=name, root=args.root, download=not args.no_download)
        try:
            raw = DATASETS[name].read(cfg)
        except DatasetError as e:
            fail(e)
        sizes = ", ".join(
            f"{part} {len(getattr(raw, part).y):,}"
            for part in ("train", "val", "test")
            if getattr(raw, part, None) is not None
        )
        print(f"{name}: {sizes} images, ready in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
