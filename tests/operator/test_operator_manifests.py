"""Every manifest the operator builds validates against the upstream Kubernetes
schemas (kubernetes-validate), and ShoalCluster/ShoalJob objects against the
CRDs' own OpenAPI schemas; the CRD files are what the code generates."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shoal.operator import builders, crds
from shoal.operator.spec import parse_cluster_spec

# The oldest schemas kubernetes-validate ships that we check, and its newest.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))

GPU_SPEC: dict[str, Any] = {
    "image": "shoal:1",
    "imagePullPolicy": "Always",
    "idleTimeout": 600,
    "scheduler": {
        "serviceType": "LoadBalancer",
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "env": [{"name": "SHOAL_LOG", "value": "debug"}],
        "template": {"nodeSelector": {"pool": "system"}, "serviceAccountName": "shoal"},
    },
    "workerGroups": [
        {"name": "cpu", "replicas": 3, "nthreads": 4, "memory": "8Gi",
         "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        {"name": "gpu", "minReplicas": 0, "maxReplicas": 4, "image": "shoal:1-cuda",
         "resources": {"limits": {"nvidia.com/gpu": 1}},
         "template": {
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                              "effect": "NoSchedule"}],
             "containers": [{"name": "worker", "volumeMounts": [
                 {"name": "scratch", "mountPath": "/scratch"}]}],
             "volumes": [{"name": "scratch", "emptyDir": {}}],
         }},
    ],
}
SPECS = {"minimal": {}, "gpu": GPU_SPEC}


def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def cr(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": crds.API_VERSION, "kind": kind,
            "metadata": {"name": "demo", "namespace": "ns"}, "spec": spec}


def built_objects(spec_body: dict[str, Any]) -> list[dict[str, Any]]:
    spec = parse_cluster_spec("demo", "ns", spec_body)
    objects = [builders.scheduler_deployment(spec), builders.scheduler_service(spec)]
    objects += [builders.worker_pod(spec, g, builders.new_worker_name("demo", g.name))
                for g in spec.groups]
    objects.append(builders.runner_pod("job", "ns", spec, {
        "command": ["python", "main.py"], "args": ["--fast"],
        "resources": {"limits": {"cpu": 1}}, "template": {"nodeSelector": {"a": "b"}}}))
    return objects


def test_crd_files_are_generated_from_the_code() -> None:
    for filename, crd in crds.all_crds().items():
        path = ROOT / "manifests" / "crds" / filename
        assert path.read_text() == crds.render(crd), \
            f"{path} is stale: run python -m shoal.operator.crds manifests/crds"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("filename", sorted(crds.all_crds()))
def test_crds_are_valid_kubernetes_objects(filename: str, version: str) -> None:
    crd = yaml.safe_load((ROOT / "manifests" / "crds" / filename).read_text())
    kubernetes_validate.validate(crd, version, strict=True)
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.shoal.dev"
    version_spec = crd["spec"]["versions"][0]
    assert version_spec["subresources"]["status"] == {}
    assert version_spec["additionalPrinterColumns"]


def test_cluster_crd_scales_the_first_group() -> None:
    scale = crds.cluster_crd()["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas",
                     "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_built_manifests_validate_against_kubernetes(name: str, version: str) -> None:
    for obj in built_objects(SPECS[name]):
        kubernetes_validate.validate(obj, version, strict=True)


def test_worker_pod_carries_command_resources_and_template() -> None:
    spec = parse_cluster_spec("demo", "ns", GPU_SPEC)
    cpu = builders.worker_pod(spec, spec.group("cpu"), "demo-cpu-abcde")
    (container,) = cpu["spec"]["containers"]
    assert container["command"] == [
        "shoal", "worker", "tls://demo-scheduler.ns.svc.cluster.local:8786", "--name",
        "$(POD_NAME)", "--host", "$(POD_IP)", "--http-port", "8788", "--nthreads", "4",
        "--memory-limit", str(8 * 2**30)]
    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    assert pod_ip in container["env"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http",
                                                      "scheme": "HTTPS"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http",
                                                     "scheme": "HTTPS"}
    assert container["resources"]["limits"]["memory"] == "8Gi"
    gpu = builders.worker_pod(spec, spec.group("gpu"), "demo-gpu-abcde")
    (container,) = gpu["spec"]["containers"]
    assert container["command"][-2:] == ["--resources", "GPU=1"]
    assert container["image"] == "shoal:1-cuda"
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/shoal"},
        {"name": "shoal-tls", "mountPath": "/etc/shoal/tls", "readOnly": True},
        {"name": "shoal-token", "mountPath": "/etc/shoal/token", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"}]
    assert gpu["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["metadata"]["labels"] == {
        "app.kubernetes.io/name": "shoal", "shoal.dev/cluster": "demo",
        "shoal.dev/component": "worker", "shoal.dev/worker-group": "gpu"}


def test_scheduler_probes_and_service() -> None:
    spec = parse_cluster_spec("demo", "ns", GPU_SPEC)
    deployment = builders.scheduler_deployment(spec)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http",
                                                      "scheme": "HTTPS"}
    assert {p["containerPort"] for p in container["ports"]} == {8786, 8787}
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert builders.scheduler_service(spec)["spec"]["type"] == "LoadBalancer"


@pytest.mark.parametrize("kind", ["scheduler", "worker", "runner"])
def test_every_pod_is_non_root_with_a_read_only_root_filesystem(kind: str) -> None:
    spec = parse_cluster_spec("demo", "ns", {"image": "shoal:1"})
    pod = {"scheduler": lambda: builders.scheduler_deployment(spec)["spec"]["template"],
           "worker": lambda: builders.worker_pod(spec, spec.groups[0], "demo-default-abcde"),
           "runner": lambda: builders.runner_pod("job", "ns", spec, {"image": "shoal:1"}),
           }[kind]()["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]
              if not m.get("readOnly")}  # the credentials are read-only Secret volumes
    assert mounts == {"/tmp": "tmp", "/home/shoal": "home"}
    assert {v["name"]: v for v in pod["volumes"]}["tmp"] == {"name": "tmp", "emptyDir": {}}


def test_a_template_can_relax_the_security_context() -> None:
    relaxed = {"containers": [{"name": "worker",
                               "securityContext": {"readOnlyRootFilesystem": False}}]}
    spec = parse_cluster_spec("demo", "ns", {"workerGroups": [{"name": "w",
                                                               "template": relaxed}]})
    (container,) = builders.worker_pod(spec, spec.groups[0], "demo-w-abcde")["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_spec_hash_changes_with_the_pod_spec_only() -> None:
    spec = parse_cluster_spec("demo", "ns", GPU_SPEC)
    group = spec.group("cpu")
    a = builders.worker_pod(spec, group, "demo-cpu-aaaaa")
    b = builders.worker_pod(spec, group, "demo-cpu-bbbbb")
    assert a["metadata"]["annotations"] == b["metadata"]["annotations"]
    changed = copy.deepcopy(GPU_SPEC)
    changed["workerGroups"][0]["image"] = "shoal:2"
    spec2 = parse_cluster_spec("demo", "ns", changed)
    c = builders.worker_pod(spec2, spec2.group("cpu"), "demo-cpu-ccccc")
    assert c["metadata"]["annotations"] != a["metadata"]["annotations"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_cluster_specs_match_the_crd_schema(name: str) -> None:
    jsonschema.validate(cr("ShoalCluster", SPECS[name]), crd_schema(crds.cluster_crd()))


@pytest.mark.parametrize("bad", [
    {"workerGroups": []},
    {"workerGroups": [{"name": "Bad_Name"}]},
    {"workerGroups": [{"name": "a", "replicas": -1}]},
    {"scheduler": {"serviceType": "Ingress"}},
    {"imagePullPolicy": "Sometimes"},
    {"idleTimeout": "soon"},
])
def test_crd_schema_rejects_bad_cluster_specs(bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cr("ShoalCluster", bad), crd_schema(crds.cluster_crd()))


def test_job_spec_matches_the_crd_schema() -> None:
    schema = crd_schema(crds.job_crd())
    jsonschema.validate(cr("ShoalJob", {"runner": {"command": ["python", "x.py"]},
                                        "cluster": GPU_SPEC}), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cr("ShoalJob", {"cluster": {}}), schema)


def test_status_written_by_the_operator_matches_the_schema() -> None:
    status = {"phase": "Running", "schedulerAddress": "tls://x:8786", "replicas": 2,
              "selector": builders.worker_selector("demo", "cpu"),
              "workerGroups": {"cpu": {"desired": 2, "ready": 1}},
              "conditions": [{"type": "SpecValid", "status": "True", "reason": "Valid",
                              "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    jsonschema.validate({**cr("ShoalCluster", {}), "status": status},
                        crd_schema(crds.cluster_crd()))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_match_the_crds_and_the_operator_accepts_them(path: Path) -> None:
    schemas = {"ShoalCluster": crd_schema(crds.cluster_crd()),
               "ShoalJob": crd_schema(crds.job_crd())}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in schemas:
            continue
        jsonschema.validate(doc, schemas[doc["kind"]])
        spec = doc["spec"] if doc["kind"] == "ShoalCluster" else doc["spec"].get("cluster", {})
        parsed = parse_cluster_spec(doc["metadata"]["name"], "ns", spec)
        for obj in [builders.scheduler_deployment(parsed), builders.scheduler_service(parsed),
                    *(builders.worker_pod(parsed, g, f"x-{g.name}-abcde")
                      for g in parsed.groups)]:
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
