"""Datasets, splits and batch index streams. CIFAR and Flowers-102 are faked as tiny
archives in the standard layouts, so nothing is downloaded."""

import fcntl
import hashlib
import io
import multiprocessing
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cct.config import AugmentConfig, ConfigError, DataConfig
from cct.data import DatasetError, epoch_indices, eval_batches, load_dataset, sources, split_hash
from cct.data.splits import holdout


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust(monkeypatch, root: Path) -> None:
    """Accept the fake files under root as if their md5 were the published one."""
    for p in root.rglob("*"):
        if p.is_file():
            monkeypatch.setitem(sources.MD5, p.relative_to(root).as_posix(), md5(p))


def one_line_error(match: str, **cfg) -> str:
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(DataConfig(**cfg))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------
# digits, synthetic, splits


def test_digits_split_sizes_and_disjoint_ids():
    d = load_dataset(DataConfig(dataset="digits"))
    assert (len(d.train_ids), len(d.val_ids), len(d.test_ids)) == (1257, 180, 360)
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 8, 8)
    assert d.train_y.dtype == torch.int64 and d.train_ids.dtype == torch.int64
    assert (d.num_classes, d.in_channels, d.img_size) == (10, 1, 8)
    ids = [set(t.tolist()) for t in (d.train_ids, d.val_ids, d.test_ids)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(range(1797))
    assert torch.equal(d.val_ids, d.val_ids.sort().values)  # fixed, ascending order
    assert torch.bincount(d.val_y).tolist() == [18] * 10  # stratified
    assert int(d.train_x.max()) == 255
    # images and labels follow their ids into the source dataset
    from sklearn.datasets import load_digits

    src = load_digits()
    i = int(d.test_ids[5])
    assert int(d.test_y[5]) == src.target[i]
    assert np.array_equal(d.test_x[5, 0].numpy(), np.rint(src.images[i] * 255 / 16))


def test_split_is_fixed_by_split_seed():
    a = load_dataset(DataConfig(dataset="digits", split_seed=0))
    b = load_dataset(DataConfig(dataset="digits", split_seed=0))
    c = load_dataset(DataConfig(dataset="digits", split_seed=1))
    assert torch.equal(a.val_ids, b.val_ids) and torch.equal(a.test_ids, b.test_ids)
    assert a.split_hash == b.split_hash and len(a.split_hash) == 16
    assert not torch.equal(a.val_ids, c.val_ids)
    assert a.split_hash != c.split_hash
    d = load_dataset(DataConfig(dataset="digits", val_size=100))
    assert len(d.val_ids) == 100 and torch.equal(d.test_ids, a.test_ids)
    assert d.split_hash != a.split_hash


def test_holdout_and_hash_units():
    y = np.repeat(np.arange(4), 25)
    keep, held = holdout(y, 20, seed=3, stream=1)
    assert len(held) == 20 and len(keep) == 80 and not set(keep) & set(held)
    assert np.bincount(y[held]).tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="100"):
        holdout(y, 100, seed=0, stream=0)
    ids = np.arange(5)
    assert split_hash("x", 0, ids, ids) != split_hash("y", 0, ids, ids)
    assert split_hash("x", 0, ids, ids) != split_hash("x", 1, ids, ids)


def test_synthetic_is_deterministic_and_held_out():
    cfg = DataConfig(dataset="synthetic", synthetic_train=200, synthetic_test=50, synthetic_size=8)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert torch.equal(a.train_x, b.train_x) and a.split_hash == b.split_hash
    assert a.train_x.shape == (180, 3, 8, 8) and a.val_x.shape == (20, 3, 8, 8)
    assert a.test_x.shape == (50, 3, 8, 8) and a.num_classes == 10
    assert not set(a.train_ids.tolist()) & set(a.val_ids.tolist())
    c = load_dataset(DataConfig(**{**vars(cfg), "split_seed": 1}))
    assert not torch.equal(a.train_x, c.train_x)


def test_synthetic_is_learnable():
    # nearest class mean on raw pixels must be far above chance: the templates carry signal
    d = load_dataset(DataConfig(dataset="synthetic"))
    x, xt = d.train_x.flatten(1).float(), d.test_x.flatten(1).float()
    means = torch.stack([x[d.train_y == k].mean(0) for k in range(d.num_classes)])
    acc = (torch.cdist(xt, means).argmin(1) == d.test_y).float().mean()
    assert acc > 0.5


def test_synthetic_groups_is_deterministic_structured_and_hard():
    """laptop_verdicts' data: labels in groups of 4 easy to tell apart, siblings hard. The
    oracle (nearest true template) sits between chance and perfect, so models disagree on
    enough images for the paired tests, and every error stays inside the label's group."""

    cfg = DataConfig(dataset="synthetic_groups", synthetic_classes=20, synthetic_size=8,
                     synthetic_train=300, synthetic_test=2000, val_size=100)  # fmt: skip
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert torch.equal(a.test_x, b.test_x) and a.split_hash == b.split_hash
    assert a.train_x.shape == (200, 3, 8, 8) and a.test_x.shape == (2000, 3, 8, 8)
    assert a.num_classes == 20
    templates = torch.from_numpy(sources._group_templates(20, 8, 0)).flatten(1).float() + 128
    pred = torch.cdist(a.test_x.flatten(1).float(), templates).argmin(1)
    assert 0.9 < (pred == a.test_y).float().mean() < 0.99
    assert (pred // sources.GROUP_SIZE == a.test_y // sources.GROUP_SIZE).float().mean() > 0.999


def test_img_size_resizes_fixed_size_datasets_and_scales_padding():
    d = load_dataset(DataConfig(dataset="digits", img_size=16))
    assert d.train_x.shape[1:] == (1, 16, 16) and d.img_size == 16
    assert d.augment.crop_padding == 2


def test_augment_overrides_and_validation():
    cfg = DataConfig(dataset="digits", augment=AugmentConfig(crop_padding=0, mixup=0.5))
    s = load_dataset(cfg).augment
    assert (s.crop_padding, s.mixup, s.flip) == (0, 0.5, False)
    with pytest.raises(ConfigError, match="erase_prob"):
        load_dataset(DataConfig(dataset="digits", augment=AugmentConfig(erase_prob=2.0)))


def test_bad_val_size_is_a_clear_error():
    one_line_error("val_size=5000", dataset="digits", val_size=5000)


# --------------------------------------------------------------------------------------
# CIFAR in the python-pickle layout


def write_cifar(root: Path, c100: bool, per_file: int = 6) -> dict:
    folder = root / ("cifar-100-python" if c100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = ["train", "test"] if c100 else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    key, k = ("fine_labels", 100) if c100 else ("labels", 10)
    rng = np.random.default_rng(0)
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, k, per_file)]
        entry = {"data": data, key: labels}
        if c100:
            entry["coarse_labels"] = [0] * per_file
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        written[name] = (data, labels)
    meta = "meta" if c100 else "batches.meta"
    with open(folder / meta, "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(k)]}, f)
    return written


@pytest.mark.parametrize("c100", [False, True])
def test_cifar_folder_loads_with_ids_and_labels(tmp_path, monkeypatch, c100):
    written = write_cifar(tmp_path, c100)
    trust(monkeypatch, tmp_path)
    name = "cifar100" if c100 else "cifar10"
    d = load_dataset(DataConfig(dataset=name, root=str(tmp_path), val_size=4, download=False))
    n_train = 6 if c100 else 30
    assert len(d.train_ids) == n_train - 4 and len(d.val_ids) == 4 and len(d.test_ids) == 6
    assert d.train_x.shape[1:] == (3, 32, 32) and d.num_classes == (100 if c100 else 10)
    assert d.augment.flip and d.augment.crop_padding == 4 and d.augment.mixup == 0.8
    assert d.mean == (sources.CIFAR100_MEAN if c100 else sources.CIFAR10_MEAN)
    train_data = np.concatenate([v[0] for k, v in written.items() if "test" not in k])
    train_labels = sum((v[1] for k, v in written.items() if "test" not in k), [])
    for x, y, ids in ((d.train_x, d.train_y, d.train_ids), (d.val_x, d.val_y, d.val_ids)):
        for row, i in enumerate(ids.tolist()):
            assert np.array_equal(x[row].numpy().reshape(-1), train_data[i])
            assert int(y[row]) == train_labels[i]
    test_data, test_labels = written["test" if c100 else "test_batch"]
    assert d.test_ids.tolist() == list(range(6)) and d.test_y.tolist() == test_labels
    assert np.array_equal(d.test_x.numpy().reshape(6, -1), test_data)


def test_cifar_bad_checksum_of_extracted_file(tmp_path):
    write_cifar(tmp_path, False)  # md5 table not patched: the fake files fail the check
    msg = one_line_error("checksum", dataset="cifar10", root=str(tmp_path), download=False)
    assert "data_batch_1" in msg


def test_cifar_corrupt_pickle(tmp_path, monkeypatch):
    write_cifar(tmp_path, False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    trust(monkeypatch, tmp_path)
    msg = one_line_error("corrupt", dataset="cifar10", root=str(tmp_path), download=False)
    assert "data_batch_2" in msg


def make_tarball(src_root: Path, folder: str, dest: Path) -> None:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)


def test_cifar_targz_is_verified_then_extracted(tmp_path, monkeypatch):
    src, root = tmp_path / "src", tmp_path / "root"
    write_cifar(src, True)
    root.mkdir()
    make_tarball(src, "cifar-100-python", root / "cifar-100-python.tar.gz")
    cfg = dict(dataset="cifar100", root=str(root), val_size=2, download=False)

    msg = one_line_error("checksum mismatch", **cfg)  # the real md5 does not match the fake
    assert "cifar-100-python.tar.gz" in msg and not (root / "cifar-100-python").exists()

    trust(monkeypatch, src)  # the extracted files
    monkeypatch.setitem(
        sources.MD5, "cifar-100-python.tar.gz", md5(root / "cifar-100-python.tar.gz")
    )
    d = load_dataset(DataConfig(**cfg))
    assert len(d.train_ids) == 4 and len(d.test_ids) == 6
    assert (root / "cifar-100-python" / "train").is_file()


def test_missing_cifar_without_download(tmp_path):
    msg = one_line_error("cifar10", dataset="cifar10", root=str(tmp_path), download=False)
    assert str(tmp_path) in msg and "cifar-10-batches-py" in msg and "download=False" in msg


def test_failed_download_is_one_line_error(tmp_path, monkeypatch):
    def offline(c100, root):
        raise OSError("network is unreachable\nsecond line")

    monkeypatch.setattr(sources, "_torchvision_cifar", offline)
    msg = one_line_error("download failed", dataset="cifar100", root=str(tmp_path), download=True)
    assert "cifar-100-python" in msg and "network is unreachable" in msg


# --------------------------------------------------------------------------------------
# Flowers-102: flowers-102/{jpg/ or 102flowers.tgz, imagelabels.mat, setid.mat}

FLOWER_LABELS = [1, 2, 1, 3, 2, 3]  # 1-based, as in imagelabels.mat
FLOWER_SETS = {"trnid": [1, 4], "valid": [2, 5], "tstid": [6, 3]}


def flower_colour(i: int) -> tuple[int, int, int]:
    return (40 * i, 250 - 40 * i, 120)


def write_flowers(root: Path, as_tgz: bool) -> None:
    from PIL import Image
    from scipy.io import savemat

    folder = root / "flowers-102"
    folder.mkdir(parents=True)
    blobs = {}
    for i in range(1, 7):
        w, h = (40, 30) if i % 2 else (30, 50)  # landscape and portrait
        buf = io.BytesIO()
        Image.new("RGB", (w, h), flower_colour(i)).save(buf, format="JPEG", quality=95)
        blobs[f"jpg/image_{i:05d}.jpg"] = buf.getvalue()
    if as_tgz:
        with tarfile.open(folder / "102flowers.tgz", "w:gz") as tar:
            for name, data in blobs.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (folder / "jpg").mkdir()
        for name, data in blobs.items():
            (folder / name).write_bytes(data)
    savemat(folder / "imagelabels.mat", {"labels": np.array([FLOWER_LABELS])})
    savemat(folder / "setid.mat", {k: np.array([v]) for k, v in FLOWER_SETS.items()})


@pytest.mark.parametrize("as_tgz", [False, True])
def test_flowers_loads_official_splits(tmp_path, monkeypatch, as_tgz):
    write_flowers(tmp_path, as_tgz)
    trust(monkeypatch, tmp_path)
    cfg = DataConfig(dataset="flowers102", root=str(tmp_path), img_size=16, download=False)
    d = load_dataset(cfg)
    assert d.train_x.shape == (2, 3, 16, 16) and d.img_size == 16 and d.num_classes == 3
    assert d.train_ids.tolist() == [0, 3] and d.val_ids.tolist() == [1, 4]
    assert d.test_ids.tolist() == [2, 5]  # ascending, whatever the order in setid.mat
    assert d.train_y.tolist() == [0, 2] and d.test_y.tolist() == [0, 2]
    for x, ids in ((d.train_x, d.train_ids), (d.test_x, d.test_ids)):
        for row, i in enumerate(ids.tolist()):
            colour = torch.tensor(flower_colour(i + 1), dtype=torch.float32)
            mean_px = x[row].float().mean(dim=(1, 2))
            assert (mean_px - colour).abs().max() < 8, (i, mean_px)
    assert d.mean == sources.IMAGENET_MEAN
    assert d.augment.crop_padding == 1 and d.augment.flip  # round(16 / 14)
    assert (tmp_path / "flowers-102" / "cct-cache-16.npy").is_file()
    again = load_dataset(cfg)  # from the cache
    assert torch.equal(again.test_x, d.test_x)


def test_flowers_val_size_resplits_train_and_val(tmp_path, monkeypatch):
    write_flowers(tmp_path, as_tgz=False)
    trust(monkeypatch, tmp_path)
    cfg = DataConfig(dataset="flowers102", root=str(tmp_path), img_size=8, val_size=1)
    d = load_dataset(cfg)
    assert len(d.val_ids) == 1 and len(d.train_ids) == 3 and d.test_ids.tolist() == [2, 5]
    assert set(d.train_ids.tolist()) | set(d.val_ids.tolist()) == {0, 1, 3, 4}


def test_flowers_bad_mat_checksum_and_missing_images(tmp_path, monkeypatch):
    write_flowers(tmp_path, as_tgz=False)
    msg = one_line_error("checksum", dataset="flowers102", root=str(tmp_path), img_size=8)
    assert ".mat" in msg
    trust(monkeypatch, tmp_path)
    (tmp_path / "flowers-102" / "jpg" / "image_00004.jpg").unlink()
    one_line_error("image_00004.jpg", dataset="flowers102", root=str(tmp_path), img_size=8)


def test_missing_flowers_without_download(tmp_path):
    msg = one_line_error("flowers102", dataset="flowers102", root=str(tmp_path), download=False)
    assert "setid.mat" in msg and str(tmp_path) in msg


# --------------------------------------------------------------------------------------
# batch index streams


def shards(n, epoch, seed, world, bs):
    return [
        epoch_indices(
            n, epoch=epoch, seed=seed, rank=r, world_size=world, batch_size=bs, device="cpu"
        )
        for r in range(world)
    ]


def test_epoch_indices_shard_one_global_batch_per_step():
    two = shards(103, epoch=0, seed=7, world=2, bs=8)
    one = shards(103, epoch=0, seed=7, world=1, bs=16)[0]
    assert two[0].shape == (6, 8) and one.shape == (6, 16)
    assert two[0].dtype == torch.int64
    for step in range(6):
        a, b = set(two[0][step].tolist()), set(two[1][step].tolist())
        assert not a & b
        assert a | b == set(one[step].tolist())  # the same global batch as one rank at 2x
    flat = torch.cat([t.flatten() for t in two])
    assert len(set(flat.tolist())) == 96 and int(flat.max()) < 103  # no repeats within an epoch


def test_epoch_indices_seeded_by_seed_and_epoch():
    a = shards(64, epoch=3, seed=1, world=1, bs=8)[0]
    assert torch.equal(a, shards(64, epoch=3, seed=1, world=1, bs=8)[0])
    assert not torch.equal(a, shards(64, epoch=4, seed=1, world=1, bs=8)[0])
    assert not torch.equal(a, shards(64, epoch=3, seed=2, world=1, bs=8)[0])
    assert sorted(a.flatten().tolist()) == list(range(64))


def test_epoch_indices_rejects_too_small_datasets_and_bad_rank():
    with pytest.raises(ValueError, match="global batch of 32"):
        shards(20, epoch=0, seed=0, world=2, bs=16)
    with pytest.raises(ValueError, match="rank"):
        epoch_indices(64, epoch=0, seed=0, rank=2, world_size=2, batch_size=8, device="cpu")


def test_eval_batches_fixed_order_with_short_tail():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    got = list(eval_batches(x, y, 4))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    assert torch.equal(torch.cat([b[0] for b in got]), x)


# --------------------------------------------------------------------------------------
# python -m cct.data: fetch and verify ahead of trials (cluster node setup)


def test_fetch_cli_verifies_a_local_copy(tmp_path, monkeypatch, capsys):
    from cct.data.__main__ import main

    write_cifar(tmp_path, c100=True)
    trust(monkeypatch, tmp_path)
    assert main(["cifar100", "--root", str(tmp_path), "--no-download"]) == 0
    assert "cifar100: train 6, test 6 images" in capsys.readouterr().out


def test_fetch_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from cct.data.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["cifar100", "--root", str(tmp_path), "--no-download"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cifar100: not found under") and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["imagenet"])
    assert e.value.code == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# one download per node: concurrent trials wait for the first one's files


def _read_in_child(cfg: DataConfig, out: Path) -> None:
    try:
        raw = sources.read_cifar(cfg)
        out.write_text(str(len(raw.train.y)))
    except Exception as e:  # the parent asserts on what was written
        out.write_text(f"error: {e}")


def test_two_processes_download_once(tmp_path, monkeypatch):
    src, root = tmp_path / "src", tmp_path / "root"
    write_cifar(src, True)
    trust(monkeypatch, src)
    calls = tmp_path / "calls"

    def slow_download(c100, dest):  # half-written files for a while, as a real download
        with calls.open("a") as f:
            f.write(f"{os.getpid()}\n")
        (dest / "cifar-100-python").mkdir(parents=True)
        for name in ("train", "test"):
            time.sleep(0.5)
            (dest / "cifar-100-python" / name).write_bytes(
                (src / "cifar-100-python" / name).read_bytes()
            )

    monkeypatch.setattr(sources, "_torchvision_cifar", slow_download)
    cfg = DataConfig(dataset="cifar100", root=str(root), download=True)
    ctx = multiprocessing.get_context("fork")  # children inherit the patched download
    procs = [ctx.Process(target=_read_in_child, args=(cfg, tmp_path / f"out{i}")) for i in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [(tmp_path / f"out{i}").read_text() for i in (0, 1)] == ["6", "6"]
    assert len(calls.read_text().splitlines()) == 1  # the second process waited, then read


def test_a_waiter_gives_up_with_the_lock_named(tmp_path):
    (tmp_path / ".cifar10.lock").touch()
    with open(tmp_path / ".cifar10.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DatasetError, match=r"waited 0.5 s .*\.cifar10\.lock"):
            with sources.node_lock("cifar10", tmp_path, timeout_s=0.5):
                pass
