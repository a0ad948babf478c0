"""Raw datasets as uint8 numpy arrays: images (N, C, H, W), int64 labels, int64 source ids.

Each reader returns the dataset's own partitions (train, and test / official validation where
the dataset has them); `loader.py` holds validation (and, for digits, test) out with
`splits.py`. Ids index the source's own file: CIFAR train ids are positions in
data_batch_1..5 (or `train`), CIFAR test ids positions in test_batch (or `test`); digits ids
index sklearn's load_digits; flowers102 ids are image numbers - 1 (image_00001.jpg -> 0).

Local copies use the standard archive layouts (the ones torchvision writes) under `cfg.root`;
every file read is checked against its published md5. Any problem is a one-line DatasetError.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import io
import os
import pickle
import re
import shutil
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cct.config import DataConfig
from cct.data.augment import AugmentSpec, recipe_augment


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or fails its checksum; the message says which and where."""


# Published md5 values (the CIFAR and Oxford pages; torchvision checks the same ones), keyed
# by path relative to cfg.root. Tests patch entries to accept their tiny fake archives.
MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "flowers-102/102flowers.tgz": "52808999861908f626f3c1f4e79d11fa",
    "flowers-102/imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
    "flowers-102/setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c",
}

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# CIFAR-100: the CCT authors' values (their cct_7-3x1_cifar100_300epochs config, SPEC 3)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 60  # per socket operation: an unreachable host fails instead of hanging
LOCK_TIMEOUT_S = 3600.0  # waiting for another process's download (Flowers-102 is 330 MB)


@dataclass
class Part:
    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)
    ids: np.ndarray  # int64 (N,), ascending

    def take(self, idx: np.ndarray) -> Part:
        return Part(self.x[idx], self.y[idx], self.ids[idx])


@dataclass
class Raw:
    train: Part  # the pool validation is held out of
    test: Part | None  # None: no official test split, the loader holds one out (digits)
    val: Part | None  # an official validation split (flowers102)
    num_classes: int
    mean: tuple[float, ...] | None  # None: computed from the training split
    std: tuple[float, ...] | None


@dataclass(frozen=True)
class Source:
    read: Callable[[DataConfig], Raw]
    val_size: int | None  # default held-out validation; None: official split or 10% of train
    test_size: int | None  # held-out test size, only for datasets without a test split
    augment: Callable[[int], AugmentSpec]  # default augmentation for a given image size


# --------------------------------------------------------------------------------------
# digits, synthetic


def read_digits(cfg: DataConfig) -> Raw:
    images, target = _digits_arrays()
    # values are 0..16 -> 0..255 so every dataset shares the uint8 pipeline
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = target.astype(np.int64)
    return Raw(Part(x, y, np.arange(len(y))), None, None, 10, None, None)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8), labels) from the CSV bundled with scikit-learn (no download),
    read as `load_digits` reads it, without importing scikit-learn: half a second of every
    digits run's start (each sweep trial's worker) on a 2-core machine."""
    spec = importlib.util.find_spec("sklearn")  # finds the package, executes nothing
    roots = spec.submodule_search_locations if spec is not None else None
    csv = Path(roots[0]) / "datasets" / "data" / "digits.csv.gz" if roots else None
    if csv is None or not csv.is_file():  # another layout: ask scikit-learn itself
        # deferred: scikit-learn's import (about 3 s) is paid by the digits dataset only
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    data = np.loadtxt(csv, delimiter=",")  # 64 pixel columns, then the label
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def read_synthetic(cfg: DataConfig) -> Raw:
    """Each class is a random smooth (4x4 upsampled) RGB template; samples add pixel noise.

    Deterministic in split_seed; train and test come from separate streams so their contents
    do not depend on each other's sizes.
    """
    k, s = cfg.synthetic_classes, cfg.synthetic_size
    if k < 2 or s < 4 or cfg.synthetic_train < 1 or cfg.synthetic_test < 1:
        raise DatasetError(
            f"synthetic: need classes >= 2, size >= 4, train/test >= 1; got classes={k},"
            f" size={s}, train={cfg.synthetic_train}, test={cfg.synthetic_test}"
        )
    coarse = np.random.default_rng([cfg.split_seed, 0]).normal(size=(k, 3, 4, 4))
    up = F.interpolate(torch.from_numpy(coarse), size=(s, s), mode="bilinear", align_corners=False)
    templates = up.numpy() / up.numpy().std()  # (k, 3, s, s), unit variance

    def draw(n: int, stream: int) -> Part:
        rng = np.random.default_rng([cfg.split_seed, stream])
        y = rng.integers(0, k, n)
        x = 128 + 32 * templates[y] + 48 * rng.normal(size=(n, 3, s, s))
        return Part(np.rint(x.clip(0, 255)).astype(np.uint8), y.astype(np.int64), np.arange(n))

    return Raw(draw(cfg.synthetic_train, 1), draw(cfg.synthetic_test, 2), None, k, None, None)


GROUP_SIZE = 4  # synthetic_groups: labels per group (CIFAR-100 has 20 superclasses of 5)
GROUP_SIGNAL, CLASS_SIGNAL, GROUP_NOISE = 24.0, 12.0, 48.0  # pixel units (std 1 templates)


def read_synthetic_groups(cfg: DataConfig) -> Raw:
    """A harder synthetic set with label structure, for laptop sweeps that must reach the
    report's verdicts (search_spaces/laptop_verdicts.yaml): labels come in groups of
    GROUP_SIZE that share a smooth group template (4x4 upsampled, as `synthetic`); each label
    adds a weaker template of its own, so a label is easy to tell from other groups and hard
    to tell from its siblings, like CIFAR-100's superclasses. The amplitudes leave the
    nearest-template oracle at about 97 % on 20 labels at 8x8, all its errors inside a group
    (tests/test_data.py); small CCTs trained for minutes reach 75-85 %, so models disagree on
    enough images for the paired tests to have something to count.

    Deterministic in split_seed; train and test come from separate streams."""
    k, s = cfg.synthetic_classes, cfg.synthetic_size
    if k < GROUP_SIZE or s < 4 or cfg.synthetic_train < 1 or cfg.synthetic_test < 1:
        raise DatasetError(
            f"synthetic_groups: need classes >= {GROUP_SIZE}, size >= 4, train/test >= 1; got "
            f"classes={k}, size={s}, train={cfg.synthetic_train}, test={cfg.synthetic_test}"
        )
    templates = _group_templates(k, s, cfg.split_seed)

    def draw(n: int, stream: int) -> Part:
        rng = np.random.default_rng([cfg.split_seed, stream])
        y = rng.integers(0, k, n)
        x = 128 + templates[y] + GROUP_NOISE * rng.normal(size=(n, 3, s, s))
        return Part(np.rint(x.clip(0, 255)).astype(np.uint8), y.astype(np.int64), np.arange(n))

    return Raw(draw(cfg.synthetic_train, 1), draw(cfg.synthetic_test, 2), None, k, None, None)


def _group_templates(k: int, s: int, seed: int) -> np.ndarray:
    """(k, 3, s, s) pixel offsets: label j's group template plus its own weaker one."""
    groups = -(-k // GROUP_SIZE)
    rng = np.random.default_rng([seed, 3])
    coarse = np.concatenate([rng.normal(size=(groups, 3, 4, 4)), rng.normal(size=(k, 3, 4, 4))])
    up = F.interpolate(torch.from_numpy(coarse), size=(s, s), mode="bilinear", align_corners=False)
    up = up.numpy() / up.numpy().std()  # unit variance
    group_of = np.arange(k) // GROUP_SIZE
    return GROUP_SIGNAL * up[:groups][group_of] + CLASS_SIGNAL * up[groups:]


# --------------------------------------------------------------------------------------
# files: presence, checksums, archives, optional download


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(name: str, root: Path, rel: str) -> Path:
    path = root / rel
    want = MD5.get(rel)
    got = md5sum(path)
    if want is not None and got != want:
        raise DatasetError(
            f"{name}: checksum mismatch for {path}: md5 {got}, expected {want}"
            " (corrupt or partial file: delete it and fetch it again)"
        )
    return path


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _missing(name: str, root: Path, expected: str, why: str) -> DatasetError:
    return DatasetError(f"{name}: not found under {root} (expected {expected}); {why}")


@contextmanager
def node_lock(name: str, root: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold `root`/.{name}.lock: one process per node downloads or extracts a dataset
    (several trials on one multi-GPU node would otherwise write the same archive at
    once); the others wait here, then find the files in place. An advisory flock, which
    the kernel drops when its holder dies, so a killed download never blocks the next."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatasetError(
                        f"{name}: waited {timeout_s:g} s for another process's download into "
                        f"{root} (lock {f.name}); is it stuck?"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_present(
    name: str, root: Path, present: Callable[[], bool], obtain: Callable[[], None]
) -> None:
    """`obtain()` the files unless `present()`, under the node's lock for `name`, checking
    again once the lock is held: whoever waited finds the files another process fetched."""
    if present():
        return
    with node_lock(name, root):
        if not present():
            obtain()


def _download(name: str, root: Path, expected: str, fetch: Callable[[], None]) -> None:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        fetch()
    except Exception as e:  # ImportError (no torchvision), no network, bad checksum, ...
        raise _missing(name, root, expected, f"download failed: {_one_line(e)}") from e
    finally:
        socket.setdefaulttimeout(old)


def extract(name: str, root: Path, archive: str) -> None:
    """Verify `archive`'s md5, then unpack it into root (via a temp dir, so concurrent
    trials never see a half-extracted folder)."""
    path = check_md5(name, root, archive)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")
        for item in tmp.iterdir():
            if not (root / item.name).exists():
                os.replace(item, root / item.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{name}: cannot extract {path}: {_one_line(e)}") from e
    finally:
        _rmtree(tmp)


def _rmtree(path: Path) -> None:

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle version)


def _unpickle(name: str, path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise DatasetError(f"{name}: corrupt file {path}: {_one_line(e)}") from e


def read_cifar(cfg: DataConfig) -> Raw:
    name = cfg.dataset
    c100 = name == "cifar100"
    folder = "cifar-100-python" if c100 else "cifar-10-batches-py"
    archive = "cifar-100-python.tar.gz" if c100 else "cifar-10-python.tar.gz"
    train_files = ["train"] if c100 else [f"data_batch_{i}" for i in range(1, 6)]
    test_file = "test" if c100 else "test_batch"
    label_key = "fine_labels" if c100 else "labels"
    root = Path(cfg.root).expanduser()
    files = [f"{folder}/{f}" for f in [*train_files, test_file]]
    expected = f"{folder}/{{{','.join([*train_files, test_file])}}} or {archive}"

    def present() -> bool:
        return all((root / f).is_file() for f in files)

    def obtain() -> None:
        if (root / archive).is_file():
            extract(name, root, archive)
        elif cfg.download:
            _download(name, root, expected, lambda: _torchvision_cifar(c100, root))
        else:
            raise _missing(name, root, expected, "download=False")
        if not present():
            raise _missing(name, root, expected, "still missing after extract/download")

    if not present() and not (root / archive).is_file() and not cfg.download:
        raise _missing(name, root, expected, "download=False")  # nothing to lock for
    ensure_present(name, root, present, obtain)

    def part(rels: list[str]) -> Part:
        xs, ys = [], []
        for rel in rels:
            d = _unpickle(name, check_md5(name, root, rel))
            try:
                xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(d[label_key], dtype=np.int64))
            except (KeyError, ValueError) as e:
                raise DatasetError(f"{name}: corrupt file {root / rel}: {_one_line(e)}") from e
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(x) != len(y):
            raise DatasetError(f"{name}: {len(x)} images but {len(y)} labels in {root / folder}")
        return Part(x, y, np.arange(len(y)))

    train, test = part(files[:-1]), part(files[-1:])
    k = 100 if c100 else 10
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if c100 else (CIFAR10_MEAN, CIFAR10_STD)
    return Raw(train, test, None, k, mean, std)


def _torchvision_cifar(c100: bool, root: Path) -> None:
    # deferred: optional: torchvision downloads only (the `download` extra)
    import torchvision.datasets as tvd  # lazy: optional, only to download

    cls = tvd.CIFAR100 if c100 else tvd.CIFAR10
    cls(str(root), train=True, download=True)


# --------------------------------------------------------------------------------------
# Oxford Flowers-102: flowers-102/{jpg/ or 102flowers.tgz, imagelabels.mat, setid.mat}


def _decode_center(data: bytes, size: int) -> np.ndarray:
    # deferred: optional: Pillow decodes Flowers-102 only
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))  # let the JPEG decoder downscale by 2^k: much faster
        im = im.convert("RGB")
        # shorter side -> size, then the centre square: the flower is almost always central
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _flower_images(name: str, root: Path, n: int, size: int) -> np.ndarray:
    """All n images decoded at size x size, (n, 3, size, size) uint8, cached as .npy in root."""
    folder = root / "flowers-102"
    cache = folder / f"cct-cache-{size}.npy"
    if cache.is_file():
        try:
            x = np.load(cache)
            if x.shape == (n, 3, size, size) and x.dtype == np.uint8:
                return x
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it

    blobs: dict[int, bytes] = {}
    if (folder / "jpg").is_dir():
        for i in range(1, n + 1):
            p = folder / "jpg" / f"image_{i:05d}.jpg"
            if p.is_file():
                blobs[i] = p.read_bytes()
    else:
        tgz = check_md5(name, root, "flowers-102/102flowers.tgz")
        try:
            with tarfile.open(tgz, "r:gz") as tar:
                for m in tar:
                    hit = re.fullmatch(r"(?:.*/)?image_(\d+)\.jpg", m.name)
                    if hit and m.isfile():
                        blobs[int(hit.group(1))] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"{name}: corrupt archive {tgz}: {_one_line(e)}") from e
    missing = [i for i in range(1, n + 1) if i not in blobs]
    if missing:
        raise DatasetError(
            f"{name}: {len(missing)} of {n} images missing under {folder} (first: image_{missing[0]:05d}.jpg)"
        )

    def decode(i: int) -> np.ndarray:
        try:
            return _decode_center(blobs[i], size)
        except Exception as e:
            raise DatasetError(f"{name}: cannot decode image_{i:05d}.jpg: {_one_line(e)}") from e

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL releases the GIL
        x = np.stack(list(pool.map(decode, range(1, n + 1))))
    try:  # write-then-rename: concurrent trials never read a half-written cache
        tmp = folder / f".cct-cache-{size}.{os.getpid()}.npy"
        np.save(tmp, x)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only copy still works, just without the cache
    return x


def read_flowers(cfg: DataConfig) -> Raw:
    name = cfg.dataset
    root = Path(cfg.root).expanduser()
    folder = root / "flowers-102"
    size = cfg.img_size or 224
    expected = "flowers-102/{jpg/ or 102flowers.tgz, imagelabels.mat, setid.mat}"

    def present() -> bool:
        has_images = (folder / "jpg").is_dir() or (folder / "102flowers.tgz").is_file()
        mats = (folder / "imagelabels.mat").is_file() and (folder / "setid.mat").is_file()
        return has_images and mats

    def obtain() -> None:
        _download(name, root, expected, lambda: _torchvision_flowers(root))
        if not present():
            raise _missing(name, root, expected, "still missing after download")

    if not present() and not cfg.download:
        raise _missing(name, root, expected, "download=False")
    ensure_present(name, root, present, obtain)

    try:
        # deferred: optional: scipy reads Flowers-102's .mat labels only
        from scipy.io import loadmat

        labels_mat = loadmat(check_md5(name, root, "flowers-102/imagelabels.mat"))
        setid = loadmat(check_md5(name, root, "flowers-102/setid.mat"))
        labels = np.asarray(labels_mat["labels"], dtype=np.int64).ravel() - 1  # 1..102 -> 0..
        splits = {
            k: np.sort(np.asarray(setid[k], dtype=np.int64).ravel() - 1)
            for k in ("trnid", "valid", "tstid")
        }
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{name}: corrupt .mat file in {folder}: {_one_line(e)}") from e
    n = len(labels)
    for k, ids in splits.items():
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise DatasetError(f"{name}: setid.mat {k} refers to images outside 1..{n}")

    x = _flower_images(name, root, n, size)
    every = Part(x, labels, np.arange(n))
    train, val, test = (every.take(splits[k]) for k in ("trnid", "valid", "tstid"))
    return Raw(train, test, val, int(labels.max()) + 1, IMAGENET_MEAN, IMAGENET_STD)


def _torchvision_flowers(root: Path) -> None:
    # deferred: optional: torchvision downloads only (the `download` extra)
    import torchvision.datasets as tvd  # lazy: optional, only to download

    tvd.Flowers102(str(root), split="train", download=True)


# --------------------------------------------------------------------------------------
# the table: dataset name -> reader and its defaults


def _cifar_augment(size: int) -> AugmentSpec:
    # The CCT authors' 300-epoch CIFAR recipe (RandomResizedCrop + RandAugment); the older
    # 4-pixel padded crop is `augment.recipe: cct200`.
    return recipe_augment("cct300", size)


def _flowers_augment(size: int) -> AugmentSpec:
    # Flowers are centred and fill the frame: a shift of ~7% (16 px at 224) keeps the flower
    # in view, while CIFAR's 12.5% would often cut it; the rest follows the CIFAR recipe.
    return AugmentSpec(round(size / 14), True, 0.8, 1.0, 0.25, 0.1)


def _digits_augment(size: int) -> AugmentSpec:
    # 8x8 digits: one-pixel shifts only; flips turn digits into other shapes (2 vs 5), and
    # mixing/erasing destroys too much of a 64-pixel image for small models to learn quickly.
    return AugmentSpec(max(1, round(size / 8)), False, 0.0, 0.0, 0.0, 0.1)


def _synthetic_augment(size: int) -> AugmentSpec:
    # Class templates are not mirror-symmetric, so no flips; just small shifts.
    return AugmentSpec(1, False, 0.0, 0.0, 0.0, 0.0)


DATASETS: dict[str, Source] = {
    "digits": Source(read_digits, 180, 360, _digits_augment),
    "synthetic": Source(read_synthetic, None, None, _synthetic_augment),
    "synthetic_groups": Source(read_synthetic_groups, None, None, _synthetic_augment),
    "cifar10": Source(read_cifar, 5000, None, _cifar_augment),
    "cifar100": Source(read_cifar, 5000, None, _cifar_augment),
    "flowers102": Source(read_flowers, None, None, _flowers_augment),
}
