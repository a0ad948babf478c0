"""deploy/: the KubeRay manifests against the CRD schemas of the KubeRay version the README
pins (v1.6.2, tests/kuberay_crds/), every pod KubeRay would make of them (the autoscaler
sidecar, the init containers, the submitter Job included) against the Pod Security
"restricted" level, and the manifests, the Dockerfile, the sweep file the RayJob runs,
ray_cluster.yaml and the README against each other. No Kubernetes here: what only a cluster
shows (storage classes, GPU nodes) is not tested; tests/kuberay.py says what is modelled."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.kuberay import generated_pods, restricted_violations, schema_errors

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
README = ROOT / "README.md"
POSTGRES_IMAGE = "postgres:17"  # postgres.yaml's database: its image's own user, 999


def _docs(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for f in sorted(KUBERAY.rglob("*.yaml")) for d in _docs(f)]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _ray_docs(manifests) -> list[dict]:
    return [d for k, d in manifests.items() if k.startswith(("RayCluster/", "RayJob/"))]


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


def _all_pods(manifests) -> dict[str, dict]:
    """Every pod spec these manifests make, KubeRay's generated pods included."""
    pods = {}
    for doc in _ray_docs(manifests):
        for name, spec in generated_pods(doc).items():
            pods[f"{doc['kind']}/{doc['metadata']['name']}: {name}"] = spec
    for key, doc in manifests.items():
        if key.startswith(("Deployment/", "StatefulSet/")):
            pods[key] = doc["spec"]["template"]["spec"]
    return pods


def _ours(container: dict) -> bool:
    """A container of this project's image (not the database's)."""
    return container["image"] != POSTGRES_IMAGE


def _workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), flags=re.M)
    return workdir


def _entrypoint_args(manifests) -> list[str]:
    return shlex.split(_rayjob(manifests)["spec"]["entrypoint"])


def _in_repo(image_path: str) -> Path:
    """A path inside the image's project folder, as a path of this checkout."""
    assert image_path.startswith(_workdir() + "/"), image_path
    return ROOT / image_path.removeprefix(_workdir() + "/")


# --- KubeRay v1.6.2: schema, generated pods, security -----------------------------------


def test_every_ray_manifest_matches_the_kuberay_crd_schema(manifests):
    for doc in _ray_docs(manifests):
        assert schema_errors(doc) == [], doc["metadata"]["name"]


def test_the_schema_check_rejects_what_kubectl_would(manifests):
    job = copy.deepcopy(_rayjob(manifests))
    job["spec"]["entrypointt"] = "typo"  # unknown field: kubectl's strict validation
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"  # not an int
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["securityContext"]["seccompProfile"] = {"typ": "RuntimeDefault"}
    errors = "\n".join(schema_errors(job))
    assert "'entrypointt' was unexpected" in errors
    assert "maxReplicas: '8' is not of type 'integer'" in errors
    assert "'typ' was unexpected" in errors


def test_plain_pod_templates_match_the_pod_schema_too(manifests):
    # The MLflow Deployment's and the PostgreSQL StatefulSet's pod templates, checked against
    # the PodTemplateSpec schema the RayCluster CRD embeds (the same core/v1 schema).
    for key, doc in manifests.items():
        if key.startswith(("Deployment/", "StatefulSet/")):
            cluster = {
                "apiVersion": "ray.io/v1",
                "kind": "RayCluster",
                "metadata": {"name": "pod-template-check"},
                "spec": {
                    "headGroupSpec": {"rayStartParams": {}, "template": doc["spec"]["template"]}
                },
            }
            assert schema_errors(cluster) == [], key


def test_every_pod_passes_pod_security_restricted(manifests):
    pods = _all_pods(manifests)
    assert any("autoscaler" in str(p) for p in pods.values())  # the sidecar is modelled
    assert any(k.endswith("submitter") for k in pods)
    for name, spec in pods.items():
        assert restricted_violations(spec) == [], name


def test_the_restricted_check_catches_kuberays_defaults(manifests):
    job = copy.deepcopy(_rayjob(manifests))
    del job["spec"]["submitterPodTemplate"]  # KubeRay's default submitter
    del job["spec"]["rayClusterSpec"]["autoscalerOptions"]["securityContext"]
    pods = generated_pods(job)
    assert any("ray-job-submitter: allowPrivilegeEscalation" in v
               for v in restricted_violations(pods["submitter"]))  # fmt: skip
    assert "autoscaler: capabilities.drop must include ALL" in restricted_violations(pods["head"])


def _image_uid() -> str:
    (user,) = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), flags=re.M)
    assert user[0] == user[1]  # one id for user and group
    return user[0]


def test_pods_run_as_the_image_user_and_own_their_volumes(manifests):
    uid = int(_image_uid())  # numeric: the kubelet can verify runAsNonRoot against it
    for name, spec in _all_pods(manifests).items():
        sc = spec["securityContext"]
        if not _ours(spec["containers"][0]):
            uid = 999  # the postgres image's own user: its entrypoint then runs initdb itself
        assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, uid), name
        if any("persistentVolumeClaim" in v for v in spec.get("volumes", [])):
            assert sc["fsGroup"] == uid, name  # a fresh volume is root's


def test_no_gpu_is_visible_to_pods_without_one(manifests):
    # The CUDA base image sets NVIDIA_VISIBLE_DEVICES=all: every container of the image that
    # holds no GPU says "void" (the head, the autoscaler, the submitter, MLflow).
    assert re.search(r"^FROM nvidia/cuda:", DOCKERFILE.read_text(), flags=re.M)
    for name, spec in _all_pods(manifests).items():
        for c in filter(_ours, spec["containers"]):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}):
                assert "NVIDIA_VISIBLE_DEVICES" not in env, (name, c["name"])  # device plugin's
            else:
                assert env.get("NVIDIA_VISIBLE_DEVICES") == "void", (name, c["name"])


def test_ray_pods_are_probed_over_http_by_the_pinned_kuberay(manifests):
    # KubeRay >= 1.6 probes Ray >= 2.53 over HTTP; older ones run `wget`, not in the image.
    readme = README.read_text()
    assert "kuberay/kuberay-operator --version 1.6.2" in readme
    assert "v1.6.2" in (ROOT / "tests" / "kuberay_crds" / "SOURCE.md").read_text()
    assert "wget" not in DOCKERFILE.read_text()
    for name, spec in _all_pods(manifests).items():
        if "submitter" not in name and not name.startswith(("Deployment/", "StatefulSet/")):
            assert "httpGet" in spec["containers"][0]["readinessProbe"], name


def test_deleting_the_manifests_keeps_the_data(manifests):
    # `kubectl delete -f deploy/kuberay/` reads the folder's own files, not subfolders:
    # no volume claim may be among them; every claim the pods use lives in volumes/.
    deleted = [d for f in KUBERAY.iterdir() if f.suffix in (".yaml", ".yml", ".json")
               for d in _docs(f)]  # fmt: skip
    assert not [d for d in deleted if d["kind"] in ("PersistentVolumeClaim", "PersistentVolume")]
    kept = {d["metadata"]["name"] for d in _docs(KUBERAY / "volumes" / "volumes.yaml")}
    claims = {v["persistentVolumeClaim"]["claimName"]
              for spec in _all_pods(manifests).values() for v in spec.get("volumes", [])
              if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == kept == {"cct-mlflow", "cct-shared", "cct-postgres"}


# --- the RayJob's entrypoint ----------------------------------------------------------


def test_the_entrypoint_is_one_plain_command(manifests):
    # KubeRay pastes it unquoted into the submitter's shell: an operator would split it.
    entrypoint = _rayjob(manifests)["spec"]["entrypoint"]
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    assert not [w for w in words if set(w) & set(";&|<>()`$\"'\\")], words
    assert words[:3] == ["python", "-m", "orchestrator.sweep"] and "cd" not in words


def test_the_rayjob_runs_a_shipped_sweep_and_cleans_up(manifests):
    job = _rayjob(manifests)["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    args = _entrypoint_args(manifests)
    assert _in_repo(args[args.index("--config") + 1]).is_file()
    assert "--address" in args


def test_gpu_limits_match_the_ray_resources_and_the_sweep_file(manifests):
    args = _entrypoint_args(manifests)
    spec = yaml.safe_load(_in_repo(args[args.index("--config") + 1]).read_text())
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


# --- agreement with the Dockerfile, ray_cluster.yaml and the README --------------------


def test_one_image_everywhere_and_the_dockerfile_names_it(manifests):
    images = {c["image"] for d in manifests.values() for c in _containers(d) if _ours(c)}
    assert len(images) == 1, images
    assert f"-t {images.pop()} ." in DOCKERFILE.read_text()


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
    # `kubectl port-forward svc/cct-mlflow <any port>:5000` sends Host: localhost:<port>
    (hosts,) = [a.split("=", 1)[1] for a in mlflow["command"] if a.startswith("--allowed-hosts=")]
    assert {"cct-mlflow", f"cct-mlflow:{port}", "localhost:*", "127.0.0.1:*"} <= set(
        hosts.split(",")
    )


def test_the_dockerfile_installs_as_the_readme_says():
    dockerfile = DOCKERFILE.read_text()
    steps = re.findall(r"^RUN (pip install .+)$", dockerfile, flags=re.M)
    assert len(steps) == 2, steps
    for step in steps:
        assert step in README.read_text(), step
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


def test_mlflow_keeps_its_runs_in_the_postgres_statefulset_with_the_secrets_password(manifests):
    (db,) = manifests["StatefulSet/cct-postgres"]["spec"]["template"]["spec"]["containers"]
    assert db["image"] == POSTGRES_IMAGE
    db_env = {e["name"]: e for e in db["env"]}
    secret = {"secretKeyRef": {"name": "cct-postgres", "key": "password"}}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"] == secret
    service = manifests["Service/cct-postgres"]["spec"]
    assert service["type"] == "ClusterIP" and service["selector"] == {"app": "cct-postgres"}
    (mlflow,) = manifests["Deployment/cct-mlflow"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["CCT_DB_PASSWORD"]["valueFrom"] == secret
    names = [e["name"] for e in mlflow["env"]]  # $(VAR) expands only from variables above it
    assert names.index("CCT_DB_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    url = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    user, database = db_env["POSTGRES_USER"]["value"], db_env["POSTGRES_DB"]["value"]
    assert url == f"postgresql+psycopg://{user}:$(CCT_DB_PASSWORD)@$(CCT_DB_HOST)/{database}"
    assert env["CCT_DB_HOST"]["value"] == f"cct-postgres:{service['ports'][0]['port']}"
    assert not [a for a in mlflow["command"] if "backend-store-uri" in a]  # env, not argv
    # the image has the driver: the Dockerfile installs the postgres extra
    assert re.search(r'pip install -e "\.\[[^]]*postgres', DOCKERFILE.read_text())
    assert "kubectl create secret generic cct-postgres" in README.read_text()
