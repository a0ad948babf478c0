"""The device a Ray Train worker trains on comes from what Ray assigned it, never from
what CUDA happens to show on the machine."""

from __future__ import annotations

import pytest
import torch

from cct import dist
from orchestrator.worker import loop as worker
from orchestrator.worker.loop import GpuUnusable, assigned_device, simulated_gpus


@pytest.fixture
def cuda_machine(monkeypatch):
    """A machine where CUDA works and shows GPUs (the CPU build of torch pretends)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(worker.ray.train.torch, "get_device", lambda: torch.device("cuda:2"))


def test_no_gpu_assigned_trains_on_cpu_even_on_a_gpu_machine(cuda_machine):
    assert torch.cuda.is_available()  # what device: auto would have followed
    assert assigned_device([], simulated=False) == torch.device("cpu")


def test_an_assigned_gpu_is_the_one_ray_train_names(cuda_machine):
    assert assigned_device(["2"], simulated=False) == torch.device("cuda:2")


def test_an_assigned_gpu_without_cuda_fails_at_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(worker.ray.util, "get_node_ip_address", lambda: "10.0.0.7")
    with pytest.raises(GpuUnusable) as e:
        assigned_device(["0"], simulated=False)
    msg = str(e.value)
    assert "GPU 0" in msg and "10.0.0.7" in msg and "CUDA is unusable" in msg
    assert "CCT_SIMULATED_GPUS=1" in msg


def test_logical_gpus_opt_out_and_train_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert assigned_device(["0"], simulated=True) == torch.device("cpu")


def test_simulated_gpus_from_the_driver_or_the_node(monkeypatch):
    monkeypatch.delenv("CCT_SIMULATED_GPUS", raising=False)
    assert not simulated_gpus({})
    assert simulated_gpus({"simulated_gpus": True})  # set for the driver, passed along
    monkeypatch.setenv("CCT_SIMULATED_GPUS", "1")  # set on the node
    assert simulated_gpus({"simulated_gpus": False})


def test_dist_setup_uses_a_given_device_as_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto would pick CUDA
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rank, dev = dist.setup(torch.device("cpu"))
    assert dev == torch.device("cpu") and rank.world_size == 1


def test_dist_teardown_leaves_a_group_it_did_not_create(monkeypatch, tmp_path):
    # Ray Train creates the group before the training function runs: setup joins it as is,
    # and teardown (for the group torchrun's ranks create in setup) must not destroy it.
    import torch.distributed as torch_dist

    torch_dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        rank, _ = dist.setup(torch.device("cpu"))
        assert rank.world_size == 1  # the existing group's size, not the environment's
        dist.teardown()
        assert torch_dist.is_initialized()
    finally:
        torch_dist.destroy_process_group()
