"""deploy/: the KubeRay manifests and the Dockerfile agree with each other, with the sweep
file the RayJob runs, with ray_cluster.yaml and with the README. Read with yaml.safe_load;
no Kubernetes here, so what a cluster would make of them is not tested."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"


def _docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / name).read_text()))


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for f in sorted(KUBERAY.glob("*.yaml")) for d in _docs(f.name)]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _cluster_specs(manifests) -> list[dict]:
    specs = [d["spec"] for k, d in manifests.items() if k.startswith("RayCluster/")]
    specs += [d["spec"]["rayClusterSpec"] for k, d in manifests.items() if k.startswith("RayJob/")]
    assert len(specs) == 2
    return specs


def _containers(doc) -> list[dict]:
    found = []
    if isinstance(doc, dict):
        found += doc.get("containers", [])
        for v in doc.values():
            found += _containers(v)
    elif isinstance(doc, list):
        for v in doc:
            found += _containers(v)
    return found


def _rayjob(manifests) -> dict:
    (job,) = [d for k, d in manifests.items() if k.startswith("RayJob/")]
    return job


def test_one_image_everywhere_and_the_dockerfile_names_it(manifests):
    images = {c["image"] for d in manifests.values() for c in _containers(d)}
    assert len(images) == 1, images
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert f"-t {images.pop()} ." in dockerfile


def test_gpu_limits_match_the_ray_resources_and_the_sweep_file(manifests):
    sweep_file = shlex.split(_rayjob(manifests)["spec"]["entrypoint"])
    spec = yaml.safe_load((ROOT / sweep_file[sweep_file.index("--config") + 1]).read_text())
    res = spec["resources"]
    for cluster in _cluster_specs(manifests):
        assert cluster["authOptions"] == {"mode": "token"}
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["rayVersion"].startswith("2.60")
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0"
        (group,) = cluster["workerGroupSpecs"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        (worker,) = group["template"]["spec"]["containers"]
        gpus = worker["resources"]["limits"]["nvidia.com/gpu"]
        assert group["rayStartParams"]["num-gpus"] == gpus
        assert int(gpus) >= res["gpus_per_worker"] * res["workers_per_trial"]
        cpus = float(group["rayStartParams"]["num-cpus"])
        assert cpus >= res["cpus_per_worker"]
        assert float(worker["resources"]["limits"]["cpu"]) >= cpus


def test_the_rayjob_runs_a_shipped_sweep_and_cleans_up(manifests):
    job = _rayjob(manifests)["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    args = shlex.split(job["entrypoint"])
    assert args[args.index("python") : args.index("python") + 3] == [
        "python",
        "-m",
        "orchestrator.sweep",
    ]
    assert (ROOT / args[args.index("--config") + 1]).is_file()
    assert "--address" in args


def test_env_agrees_with_the_mlflow_service_and_ray_cluster_yaml(manifests):
    service = manifests["Service/cct-mlflow"]["spec"]
    assert service["type"] == "ClusterIP"  # cluster-internal
    port = service["ports"][0]["port"]
    setup = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cluster_env = " ".join(setup["setup_commands"])
    for cluster in _cluster_specs(manifests):
        for c in _containers(cluster):
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["RAY_AUTH_MODE"] == "token" and "export RAY_AUTH_MODE=token" in cluster_env
            assert env["MLFLOW_TRACKING_URI"] == f"http://cct-mlflow:{port}"
            assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= env.keys()
            assert env["MLFLOW_TRACKING_PASSWORD"] is None  # from a Secret, never a value
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert any(env["CCT_STORAGE_PATH"].startswith(m) for m in mounts)
    (mlflow,) = manifests["Deployment/cct-mlflow"]["spec"]["template"]["spec"]["containers"]
    assert "--app-name=basic-auth" in mlflow["command"] and "--workers=1" in mlflow["command"]
    assert f"--port={port}" in mlflow["command"]


def test_the_dockerfile_installs_as_the_readme_says():
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    steps = re.findall(r"^RUN (pip install .+)$", dockerfile, flags=re.M)
    assert len(steps) == 2, steps
    for step in steps:
        assert step in readme, step
    assert "FROM nvidia/cuda:12.8" in dockerfile and "whl/cu128" in steps[0]


def test_no_secrets_in_deploy():
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file():
            text = path.read_text()
            for pattern in (
                r"AKIA[0-9A-Z]{16}",
                r"PASSWORD=[A-Za-z0-9+/_-]{8,}",
                r"password:\s*\S",
            ):
                assert not re.search(pattern, text), (path, pattern)
