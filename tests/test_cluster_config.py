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
START = ROOT / "deploy/head/start.sh"


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
    assert len(gpu) == 2  # spot and on-demand
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
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
    # the head's start is deploy/head/start.sh, shared with the on-prem file
    assert config["head_start_ray_commands"] == ["bash ~/cct/deploy/head/start.sh"]
    head = START.read_text()
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    assert '--host "$ADDRESS"' in head  # the private address (or CCT_HEAD_ADDRESS) ...
    assert "--bind 127.0.0.1:$MLFLOW_PORT" in head  # ... and loopback only
    assert "BACKEND=${CCT_MLFLOW_BACKEND_URI:-sqlite:///" in head  # a database backend
    assert "--artifacts-destination" in head


def test_the_region_is_set_where_the_cluster_runs(config):
    # boto3 (MLflow's S3 artifacts on the head) signs for it; never left to a default
    region = config["provider"]["region"]
    assert f"export AWS_DEFAULT_REGION={region}" in _commands(config, "setup_commands")


def test_the_project_runs_on_every_node_with_cuda_torch(config):
    setup = _commands(config, "setup_commands")
    assert "torch==2.13.0" in setup and "download.pytorch.org/whl/cu" in setup
    assert '-e "$HOME/cct' in setup
    assert config["file_mounts"]["~/cct"] == "."
    assert "CCT_STORAGE_PATH=" in setup
    # the driver's MLFLOW_TRACKING_URI: written by the head's start, read by ~/.cct_env
    assert "~/.cct/head_env" in setup and "MLFLOW_TRACKING_URI=" in START.read_text()


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
    no_files = {"digits", "synthetic", "synthetic_groups"}  # bundled with sklearn, or generated
    assert shipped - no_files <= fetched, (shipped, fetched)


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
    assert "source ~/.cct_env" in START.read_text()


def test_the_head_has_a_profile_of_its_own_so_ray_creates_no_role(prepared):
    from ray.autoscaler._private.aws.config import _configure_iam_role

    # With a head profile in the file Ray neither creates ray-autoscaler-v1 nor calls AWS.
    assert _configure_iam_role(prepared) is prepared
    head = prepared["available_node_types"][prepared["head_node_type"]]["node_config"]
    arn = head["IamInstanceProfile"]["Arn"]
    assert arn.endswith(":instance-profile/cct-sweeps-head"), arn
    text = (ROOT / "ray_cluster.yaml").read_text() + (ROOT / "README.md").read_text()
    assert "--role-name ray-autoscaler-v1" not in text  # Ray's own role, made by ray up


def test_ssh_is_open_only_where_the_user_says_and_imdsv2_is_required(prepared):
    from ray.autoscaler._private.aws.config import _configure_security_group

    # Every node type names its security group: Ray then makes none (and so none with its
    # SSH rule from 0.0.0.0/0), without calling AWS.
    assert _configure_security_group(prepared) is prepared
    for name, t in prepared["available_node_types"].items():
        node = t["node_config"]
        assert node["SecurityGroupIds"], name
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
    readme = (ROOT / "README.md").read_text()
    assert "authorize-security-group-ingress" in readme and "/32" in readme


def test_spot_first_with_an_on_demand_fallback(prepared):
    import copy

    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.core.generated.autoscaler_pb2 import ResourceRequest, ResourceRequestByCount

    types = {k: v for k, v in prepared["available_node_types"].items() if k != "head"}
    spot = [k for k, t in types.items() if t["node_config"].get("InstanceMarketOptions")]
    demand = [k for k in types if k not in spot]
    assert spot == ["gpu_spot"] and demand == ["gpu_ondemand"]
    assert (
        types["gpu_spot"]["node_config"]["InstanceType"]
        == (types["gpu_ondemand"]["node_config"]["InstanceType"])
    )
    # `ray up`'s autoscaler (v2) scheduling two one-GPU trials on g5.xlarge-sized types:
    # spot first; on-demand once spot launches failed (their availability drops to 0)
    config = copy.deepcopy({**prepared, "file_mounts": {}})  # (it hashes mounted files)
    for name, t in config["available_node_types"].items():
        t["resources"] = {"CPU": 8} if name == "head" else {"CPU": 4, "GPU": 1}
    types = AutoscalingConfig(config).get_node_type_configs()
    trial = ResourceRequest(resources_bundle={"CPU": 4, "GPU": 1})

    def launch(availability: dict) -> dict:
        reply = ResourceDemandScheduler(None).schedule(
            SchedulingRequest(
                disable_launch_config_check=True,
                node_type_configs=types,
                max_num_nodes=8,
                resource_requests=[ResourceRequestByCount(request=trial, count=2)],
                recoverable_resource_availabilities=availability,
                cloud_resource_availabilities=availability,
            )
        )
        return {r.instance_type: r.count for r in reply.to_launch}

    assert launch({}) == {"gpu_spot": 2}
    assert launch({"gpu_spot": 0.0}) == {"gpu_ondemand": 2}


def test_gpu_workers_carry_an_instance_profile_for_the_bucket(prepared):
    head = prepared["head_node_type"]
    for name, t in prepared["available_node_types"].items():
        if name == head:
            continue
        arn = t["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::[\w-]+:instance-profile/cct-sweeps-worker", arn), arn
    text = (ROOT / "README.md").read_text()
    for command in ("aws iam create-role", "aws iam create-instance-profile",
                    "aws iam add-role-to-instance-profile", "iam:PassRole"):  # fmt: skip
        assert command in text, command


# -- the on-prem file, the head's start both files run, and deploy/up.sh --------------------


CLUSTER_FILES = ("ray_cluster.yaml", "deploy/onprem/cluster.yaml")


def test_the_onprem_file_validates_with_rays_local_provider():
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "deploy/onprem/cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    node_type = prepared["available_node_types"]["local.cluster.node"]
    assert node_type["min_workers"] == node_type["max_workers"] == 2  # the listed workers
    assert "CCT_PYTHON_ENV=" in config["setup_commands"][0]  # an environment to reuse


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_both_files_share_the_head_start_and_keep_secrets_and_outputs_home(name):
    config = yaml.safe_load((ROOT / name).read_text())
    assert config["head_start_ray_commands"] == ["bash ~/cct/deploy/head/start.sh"]
    mounts = config["file_mounts"]
    assert mounts["~/.cct/mlflow_credentials"] == "~/.cct/mlflow_credentials"
    assert mounts["~/.cct/mlflow_db.env"] == "~/.cct/mlflow_db.env"  # the database's URL
    assert mounts["~/cct/deploy/provenance"] == "deploy/provenance"
    # rsync keeps a file's mode: right after the copy the secrets become 0600
    assert (
        "chmod 600 ~/.ray/auth_token ~/.cct/mlflow_credentials ~/.cct/mlflow_db.env"
        in config["initialization_commands"][0]
    )
    excluded = set(config["rsync_exclude"])
    assert {"optuna", "ray_results", "mlflow.db", "mlartifacts", "**/.git"} <= excluded
    assert "set -a; . ~/.cct/mlflow_credentials; set +a" in _commands(config, "setup_commands")


def test_the_head_start_runs_mlflow_as_it_must_and_never_pkill():
    head = START.read_text()
    code = [line for line in head.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "pkill" in line]  # it would match its own shell
    assert 'kill -TERM -- "-$pid"' in head  # the earlier server, by its process group
    for needed in ("--app-name basic-auth", '--workers "$WORKERS"', "MLFLOW_AUTH_ADMIN_PASSWORD=",
                   "MLFLOW_FLASK_SERVER_SECRET_KEY=", "MLFLOW_SERVER_ALLOWED_HOSTS=", "/health"):  # fmt: skip
        assert needed in head, needed
    # sqlite (the default): one server worker; the database's URL (its password) reaches the
    # server through its environment, never its command line, which every user's ps shows
    assert "sqlite:*) AUTH_DB=sqlite:///$HOME/mlflow/mlflow_auth.db WORKERS=1 ;;" in head
    assert "MLFLOW_BACKEND_STORE_URI=$BACKEND" in head and "--backend-store-uri" not in head


def _up(args: list[str], tmp_path: Path, ray_stub: bool = True):
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if ray_stub:  # stands in for Ray's CLI: records what it was asked, makes a token
        (bin_dir / "ray").write_text(
            '#!/bin/sh\necho "ray $*" >> "$HOME/ray-calls"\n'
            'if [ "$1" = get-auth-token ]; then echo tok > "$HOME/.ray/auth_token"; fi\n'
        )
        (bin_dir / "ray").chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path),
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    return subprocess.run(
        [str(ROOT / "deploy/up.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_up_refuses_a_file_with_placeholders_naming_the_lines(name, tmp_path):
    done = _up([str(ROOT / name), "-y"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "still has the placeholders above" in done.stderr
    assert re.search(r"cluster\.yaml:\d+: .*(EDIT-|REPLACE-AMI|192\.0\.2\.)", done.stdout)
    assert not (tmp_path / "ray-calls").exists()  # nothing was launched


def test_up_makes_the_secrets_0600_and_the_provenance_then_runs_ray_up(tmp_path):
    text = (ROOT / "deploy/onprem/cluster.yaml").read_text()
    text = re.sub(r"192\.0\.2\.(\d+)", r"10.0.0.\1", text)
    (tmp_path / "lab.yaml").write_text(text)
    done = _up([str(tmp_path / "lab.yaml"), "-y"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = (tmp_path / "ray-calls").read_text().splitlines()
    assert calls == ["ray get-auth-token --generate", f"ray up {tmp_path / 'lab.yaml'} -y"]
    for secret in (".ray/auth_token", ".cct/mlflow_credentials", ".cct/mlflow_db.env"):
        assert (tmp_path / secret).stat().st_mode & 0o777 == 0o600, secret
    assert (tmp_path / ".cct/mlflow_db.env").read_text() == ""  # sqlite unless the lab says
    creds = (tmp_path / ".cct/mlflow_credentials").read_text()
    assert re.fullmatch(r"MLFLOW_TRACKING_USERNAME=cct\nMLFLOW_TRACKING_PASSWORD=\S{20,}\n", creds)
    import json
    import subprocess

    prov = json.loads((ROOT / "deploy/provenance/provenance.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert prov["commit"] == head.stdout.strip() and isinstance(prov["dirty"], bool)
    # never committed: git ignores it (and rsync's .gitignore filter then skips it in ~/cct,
    # which is why the file_mounts name its folder on its own)
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/provenance/provenance.json"],
                             cwd=ROOT)  # fmt: skip
    assert ignored.returncode in (0, 128)  # 128: no git here
