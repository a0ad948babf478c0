"""ray_cluster.yaml: Ray's own validation accepts it, and it keeps its security promises
(token authentication on, the token and credentials never in the repository, nothing
listening on a public interface). Also the storage probe the driver runs on a multi-node
cluster, with the nodes' answers given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster import nodes_not_seeing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def _commands(config: dict, *keys: str) -> str:
    return "\n".join(cmd for key in keys for cmd in config.get(key, []))


def test_ray_validates_the_cluster_file(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    gpu = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r"))  # a CPU head
    assert prepared["provider"]["type"] == "aws"


def test_token_auth_is_on_everywhere_and_the_token_is_only_copied(config):
    assert "export RAY_AUTH_MODE=token" in _commands(config, "setup_commands")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config[key]:
            if "ray start" in cmd or "ray stop" in cmd:
                assert "source ~/.cct_env" in cmd, (key, cmd)
    # The token reaches the nodes from the user's home, never from this repository.
    mounts = config["file_mounts"]
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert not any((ROOT / p).exists() for p in ("auth_token", ".ray/auth_token"))


def test_nothing_listens_on_a_public_interface(config):
    head = _commands(config, "head_start_ray_commands")
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    mlflow = next(c for c in config["head_start_ray_commands"] if "nohup mlflow server" in c)
    # the private address (hostname -I) and loopback only
    assert re.search(r"--host \"\$\(hostname -I", mlflow)
    assert "--bind 127.0.0.1:5000" in mlflow
    assert '--backend-store-uri "sqlite:///' in mlflow  # a database backend
    assert "--artifacts-destination" in mlflow


def test_the_project_runs_on_every_node_with_cuda_torch(config):
    setup = _commands(config, "setup_commands")
    assert "torch==2.13.0" in setup and "download.pytorch.org/whl/cu" in setup
    assert '-e "$HOME/cct' in setup
    assert config["file_mounts"]["~/cct"] == "."
    assert "CCT_STORAGE_PATH=" in setup
    assert "MLFLOW_TRACKING_URI=http://" in _commands(config, "head_setup_commands")


def test_no_secrets_in_the_cluster_file():
    text = (ROOT / "ray_cluster.yaml").read_text()
    for pattern in (r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"PASSWORD=\S+"):
        assert not re.search(pattern, text), pattern


# -- the storage probe ------------------------------------------------------------------


def test_probe_reports_the_nodes_that_do_not_see_the_marker(tmp_path):
    seen = {}

    def ask(storage_path, relative, node_ids, timeout_s):
        marker = tmp_path / "store" / relative
        seen["marker_existed"] = marker.is_file()
        return {"a": True, "b": False}  # "c" never answered, and stays in the cluster

    blind = nodes_not_seeing(
        str(tmp_path / "store"), ["a", "b", "c"], ask=ask, alive=lambda: {"a", "b", "c"},
        timeout_s=0.3, retry_wait_s=0.05,
    )  # fmt: skip
    assert blind == {"b": "cannot see it", "c": "no answer in 0.3 s"}
    assert seen["marker_existed"]
    assert list((tmp_path / "store").iterdir()) == []  # the marker is cleaned up


def test_a_node_is_asked_again_until_it_answers_or_leaves(tmp_path):
    # a node that joined a moment ago may be unknown to the scheduler here: its first ask
    # fails; a node killed before it answered leaves the cluster and holds no trial
    asks = []
    alive = {"new", "killed", "good"}

    def ask(storage_path, relative, node_ids, timeout_s):
        asks.append(sorted(node_ids))
        if len(asks) == 2:
            alive.discard("killed")
        return {"good": True} if len(asks) == 1 else {"new": True} if len(asks) == 3 else {}

    blind = nodes_not_seeing(
        str(tmp_path), ["new", "killed", "good"], ask=ask, alive=lambda: set(alive),
        timeout_s=30, retry_wait_s=0.01,
    )  # fmt: skip
    assert blind == {}
    assert asks == [["good", "killed", "new"], ["killed", "new"], ["new"]]


def test_probe_on_a_path_every_node_sees(tmp_path):
    def ask(storage_path, relative, node_ids, timeout_s):
        from orchestrator.cluster import _sees

        return {n: _sees(storage_path, relative) for n in node_ids}

    assert nodes_not_seeing(str(tmp_path), ["a", "b"], ask=ask) == {}
    assert nodes_not_seeing(f"file://{tmp_path}", ["a"], ask=ask) == {}


def test_probe_fails_when_the_driver_cannot_write(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        nodes_not_seeing(str(blocker / "sub"), ["a"], ask=lambda *a: {})


def test_every_node_fetches_the_shipped_datasets(config):
    setup = _commands(config, "worker_setup_commands")
    shipped = {
        yaml.safe_load(p.read_text())["base"]["data"]["dataset"]
        for p in (ROOT / "search_spaces").glob("*.yaml")
    }
    fetched = set(re.search(r"python -m cct\.data ([\w ]+)", setup).group(1).split())
    assert shipped - {"digits", "synthetic"} <= fetched, (shipped, fetched)


# -- what Ray itself makes of the file (its defaults merged in, as `ray up` does) --------


@pytest.fixture(scope="module")
def prepared(config) -> dict:
    import copy

    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(config))


def test_every_node_type_boots_the_named_image(prepared):
    # Without ImageId Ray falls back on an old AMI table of its own; each type names one.
    images = {t["node_config"].get("ImageId") for t in prepared["available_node_types"].values()}
    assert len(images) == 1, images
    (image,) = images
    assert re.fullmatch(r"ami-[0-9a-f]{17}", image), image
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert "aws ssm get-parameter" in text and "base-oss-nvidia-driver-gpu-ubuntu-22.04" in text


def test_the_head_can_launch_nodes_with_boto3(prepared):
    from ray.autoscaler._private.util import fillout_defaults

    # Ray's own default head_setup_commands are what installs boto3; ours replace them.
    defaults = fillout_defaults({"provider": prepared["provider"]})
    assert any("boto3" in c for c in defaults["head_setup_commands"])
    head = prepared["head_setup_commands"]  # setup_commands + head_setup_commands, merged
    boto = [c for c in head if "boto3" in c]
    assert boto and all("--python ~/cct-env/bin/python" in c for c in boto), boto
    # and the head's ray start (the autoscaler) runs in that environment
    assert all("source ~/.cct_env" in c for c in prepared["head_start_ray_commands"] if "ray " in c)


def test_gpu_workers_carry_an_instance_profile_for_the_bucket(prepared):
    head = prepared["head_node_type"]
    for name, t in prepared["available_node_types"].items():
        if name == head:
            continue
        arn = t["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::[\w-]+:instance-profile/cct-sweeps-worker", arn), arn
    text = (ROOT / "ray_cluster.yaml").read_text() + (ROOT / "README.md").read_text()
    for command in ("aws iam create-role", "aws iam create-instance-profile",
                    "aws iam add-role-to-instance-profile", "iam:PassRole"):  # fmt: skip
        assert command in text, command
