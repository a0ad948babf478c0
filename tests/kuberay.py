"""What KubeRay v1.6.2 (the version the README pins) makes of deploy/kuberay/, for tests
without a Kubernetes cluster:

- `schema_errors`: a manifest against the CRD's openAPIV3Schema (tests/kuberay_crds/, copied
  unchanged from the v1.6.2 tag), checked as `kubectl apply` (strict field validation) does:
  unknown fields are errors, `nullable` and `x-kubernetes-int-or-string` honoured.
- `generated_pods`: the pods KubeRay builds from a RayCluster or RayJob, as far as their
  security is concerned: the head with the autoscaler sidecar, the workers with their
  wait-gcs-ready init container, the RayJob's submitter Job pod (ray-operator/controllers/
  ray/common/pod.go, job.go, rayjob_controller.go at v1.6.2).
- `restricted_violations`: a pod spec against the Pod Security Standards "restricted"
  level (which includes "baseline"), field by field as the admission controller checks.
- `submitter_command`: the submitter's `bash -ce` script (K8sJobMode, the default).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path

import yaml

CRDS = Path(__file__).resolve().parent / "kuberay_crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
MAX_NAME = {"RayCluster": 53, "RayJob": 47}  # utils.MaxRayClusterNameLength, MaxRayJobNameLength


# --- schema -------------------------------------------------------------------------


def _strict(schema: dict) -> dict:
    """A CRD's structural schema as JSON Schema with kubectl's strict field validation:
    unknown fields rejected unless the schema preserves them."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = _strict(schema["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(s) for s in schema[key]]
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@cache
def crd_schema(kind: str) -> dict:
    """The strict JSON Schema of `kind`'s served version v1."""
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def _cel_rules_reached(schema: dict, doc, path: str) -> list[str]:
    """Paths in `doc` whose schema carries CEL rules (x-kubernetes-validations), which
    this check cannot evaluate: a manifest must not rely on them unchecked."""
    found = [path] if "x-kubernetes-validations" in schema else []
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in doc.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                found += _cel_rules_reached(sub, v, f"{path}.{k}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(doc):
            found += _cel_rules_reached(schema["items"], v, f"{path}[{i}]")
    return found


def schema_errors(doc: dict) -> list[str]:
    """Why the API server (with KubeRay v1.6.2's CRDs) and KubeRay's own name check would
    refuse `doc` (empty: they would accept it)."""
    import jsonschema

    schema = crd_schema(doc["kind"])
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    errors += [f"{p}: CEL rule not checked here" for p in _cel_rules_reached(schema, doc, "")]
    name = doc["metadata"]["name"]
    if len(name) > MAX_NAME[doc["kind"]] or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errors.append(f"metadata.name {name!r}: not a DNS-1035 label of <= {MAX_NAME[doc['kind']]}")
    return errors


# --- the pods KubeRay generates -------------------------------------------------------


def _health_probe(ray_version: str) -> dict:
    """initLivenessAndReadinessProbe: HTTP on the dashboard agent for Ray >= 2.53, else a
    `wget ... | grep success` exec probe (which needs wget in the image)."""
    major, minor = (int(x) for x in ray_version.split(".")[:2])
    if (major, minor) >= (2, 53):
        return {"httpGet": {"path": "/api/healthz", "port": 52365}}
    return {"exec": {"command": ["bash", "-c", "wget ... | grep success"]}}


def _ray_container(spec: dict, cluster: dict) -> dict:
    ray = spec["containers"][0]  # utils.RayContainerIndex
    probe = _health_probe(cluster["rayVersion"])
    ray.setdefault("livenessProbe", probe)
    ray.setdefault("readinessProbe", probe)
    return ray


def _head_pod(cluster: dict) -> dict:
    spec = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
    ray = _ray_container(spec, cluster)
    spec.setdefault("volumes", []).append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions", {})
        sidecar = {  # BuildAutoscalerContainer + mergeAutoscalerOverrides
            "name": "autoscaler",
            "image": options.get("image", ray["image"]),
            "env": [{"name": "KUBERAY_CRD_VER", "value": "v1"}, *options.get("env", [])],
            "resources": options.get("resources", {"limits": {"cpu": "500m"}}),
        }
        if "securityContext" in options:
            sidecar["securityContext"] = copy.deepcopy(options["securityContext"])
        spec["containers"].append(sidecar)
        spec["volumes"].append({"name": "ray-logs", "emptyDir": {}})
    return spec


def _worker_pod(cluster: dict, group: dict) -> dict:
    spec = copy.deepcopy(group["template"]["spec"])
    ray = _ray_container(spec, cluster)
    init = {  # DefaultWorkerPodTemplate: ENABLE_INIT_CONTAINER_INJECTION defaults to true
        "name": "wait-gcs-ready",
        "image": ray["image"],
        "env": copy.deepcopy(ray.get("env", [])),
        "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}},
    }
    if "securityContext" in ray:
        init["securityContext"] = copy.deepcopy(ray["securityContext"])
    spec.setdefault("initContainers", []).append(init)
    spec.setdefault("volumes", []).append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
    return spec


def _submitter_pod(job: dict) -> dict:
    """GetSubmitterTemplate: the RayJob's submitterPodTemplate as given, else KubeRay's
    default (a container with the head's image and no securityContext)."""
    if "submitterPodTemplate" in job:
        spec = copy.deepcopy(job["submitterPodTemplate"]["spec"])
    else:
        head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        spec = {
            "containers": [{"name": "ray-job-submitter", "image": head["image"]}],
            "restartPolicy": "Never",
        }
    spec["containers"][0].setdefault("command", ["/bin/bash", "-ce", "--"])
    return spec


def generated_pods(doc: dict) -> dict[str, dict]:
    """Pod specs KubeRay v1.6.2 creates for a RayCluster or RayJob: name -> spec."""
    cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    pods = {"head": _head_pod(cluster)}
    for group in cluster.get("workerGroupSpecs", []):
        pods[f"worker/{group['groupName']}"] = _worker_pod(cluster, group)
    if doc["kind"] == "RayJob":
        pods["submitter"] = _submitter_pod(doc["spec"])
    return pods


# --- Pod Security Standards: restricted ------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def _pod_level(spec: dict) -> list[str]:
    bad = [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {vol['name']}: type {sorted(kinds)}")
    for sysctl in spec.get("securityContext", {}).get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl['name']}")
    return bad


def _container_level(c: dict, pod: dict) -> list[str]:
    sc, name, bad = c.get("securityContext", {}), c["name"], []
    if sc.get("privileged"):
        bad.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        bad.append(f"{name}: allowPrivilegeEscalation must be false")
    caps = sc.get("capabilities", {})
    if "ALL" not in caps.get("drop", []):
        bad.append(f"{name}: capabilities.drop must include ALL")
    if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
        bad.append(f"{name}: capabilities.add {caps['add']}")
    non_root = sc.get("runAsNonRoot", pod.get("runAsNonRoot"))
    if non_root is not True:
        bad.append(f"{name}: runAsNonRoot must be true (pod or container)")
    if sc.get("runAsUser", pod.get("runAsUser")) == 0:
        bad.append(f"{name}: runAsUser 0")
    seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        bad.append(f"{name}: seccompProfile.type must be RuntimeDefault or Localhost")
    if sc.get("procMount", "Default") != "Default":
        bad.append(f"{name}: procMount")
    if any(p.get("hostPort") for p in c.get("ports", [])):
        bad.append(f"{name}: hostPort")
    selinux = sc.get("seLinuxOptions", {})
    if selinux.get("user") or selinux.get("role"):
        bad.append(f"{name}: seLinuxOptions user/role")
    return bad


def restricted_violations(spec: dict) -> list[str]:
    """What the Pod Security admission controller at level "restricted" (latest) would
    reject in a pod spec (empty: it admits it)."""
    pod_sc = spec.get("securityContext", {})
    bad = _pod_level(spec)
    if pod_sc.get("runAsUser") == 0:
        bad.append("spec.securityContext.runAsUser 0")
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind, []):
            bad += _container_level(c, pod_sc)
    return bad


# --- the submitter ---------------------------------------------------------------------


def submitter_command(job: dict, job_id: str, dashboard: str) -> list[str]:
    """The submitter container's command in K8sJobMode (KubeRay v1.6.2: configureSubmitter-
    Container runs `/bin/bash -ce -- <BuildJobSubmitCommand joined with spaces>`): the
    entrypoint is pasted in as it is, unquoted, after `--`."""
    modelled = {"entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
                "rayClusterSpec", "submitterPodTemplate"}  # fmt: skip
    if set(job["spec"]) - modelled:  # these add flags to `ray job submit`: model them first
        raise NotImplementedError(f"RayJob fields not modelled: {set(job['spec']) - modelled}")
    address = dashboard if dashboard.startswith("http://") else f"http://{dashboard}"
    entrypoint = job["spec"]["entrypoint"].strip()
    words = [
        "if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1",
        ";", "then",
        "ray", "job", "submit", "--address", address, "--no-wait", "--submission-id", job_id,
        "--", entrypoint, ";",
        "fi", ";",
        "ray", "job", "logs", "--address", address, "--follow", job_id,
    ]  # fmt: skip
    return ["/bin/bash", "-ce", "--", " ".join(words)]
