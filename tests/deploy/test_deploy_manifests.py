"""Every file in manifests/ is a valid Kubernetes object, and the examples are
valid ShoalClusters/ShoalJobs that show what the docs promise.

Built-in kinds are validated against the upstream schemas (kubernetes-validate,
strict), the CRDs as apiextensions.k8s.io/v1 CustomResourceDefinitions, and the
examples against the CRDs' own openAPIV3Schema (made strict, see
deploy_schemas). The negative tests prove the validators do reject mistakes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from deploy_schemas import (
    CRDS_DIR,
    EXAMPLES_DIR,
    MANIFESTS_DIR,
    load_crd_schemas,
    load_documents,
    manifest_files,
    validate_any,
    validate_custom,
    validate_upstream,
)

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], Obj]:
    return load_crd_schemas()


def _example(name: str) -> Obj:
    (doc,) = load_documents(EXAMPLES_DIR / name)
    return doc


def _shoal_examples() -> list[Obj]:
    return [doc for path in sorted(EXAMPLES_DIR.glob("*.yaml")) for doc in load_documents(path)
            if doc["kind"] in ("ShoalCluster", "ShoalJob")]


def _rel(path: Path) -> str:
    return str(path.relative_to(MANIFESTS_DIR))


def test_the_crds_and_examples_exist() -> None:
    assert {p.name for p in CRDS_DIR.glob("*.yaml")} >= {"shoalclusters.yaml", "shoaljobs.yaml"}
    kinds = {doc["kind"] for path in EXAMPLES_DIR.glob("*.yaml") for doc in load_documents(path)}
    assert {"ShoalCluster", "ShoalJob", "Role"} <= kinds


@pytest.mark.parametrize("path", manifest_files(), ids=_rel)
def test_every_manifest_is_valid(path: Path, schemas: dict[tuple[str, str], Obj]) -> None:
    docs = load_documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate_any(doc, schemas)


@pytest.mark.parametrize("path", sorted(CRDS_DIR.glob("*.yaml")), ids=_rel)
def test_crds_are_v1_custom_resource_definitions(path: Path) -> None:
    (crd,) = load_documents(path)
    assert (crd["apiVersion"], crd["kind"]) == (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
    )
    validate_upstream(crd)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert spec["scope"] == "Namespaced"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert "status" in version["subresources"]
    assert version["additionalPrinterColumns"]


def test_the_shoalcluster_crd_has_a_scale_subresource() -> None:
    (crd,) = load_documents(CRDS_DIR / "shoalclusters.yaml")
    scale = crd["spec"]["versions"][0]["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"


def test_the_small_cluster_has_one_fixed_size_group(schemas: dict[tuple[str, str], Obj]) -> None:
    cluster = _example("small-cluster.yaml")
    validate_custom(cluster, schemas)
    (group,) = cluster["spec"]["workerGroups"]
    assert group["replicas"] >= 1
    assert "minReplicas" not in group and "maxReplicas" not in group


def test_the_autoscaling_example_has_a_gpu_group() -> None:
    cluster = _example("autoscaling-gpu-cluster.yaml")
    groups = {group["name"]: group for group in cluster["spec"]["workerGroups"]}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["name"]
    gpu = groups["gpu"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["workerResources"] == {"GPU": 1}
    assert gpu["template"]["nodeSelector"]
    tolerations = gpu["template"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in tolerations)
    assert gpu["minReplicas"] == 0, "idle GPUs are expensive: the group may scale to zero"


def test_the_job_example_connects_through_the_scheduler_address() -> None:
    job = _example("job.yaml")
    runner = job["spec"]["runner"]
    script = " ".join(runner["command"] + runner["args"])
    assert "SHOAL_SCHEDULER_ADDRESS" in script
    compile(runner["args"][0], "job.yaml", "exec")
    assert job["spec"]["cluster"]["workerGroups"]


def test_example_names_make_valid_scheduler_service_names() -> None:
    for doc in _shoal_examples():
        service = f"{doc['metadata']['name']}-scheduler"
        assert len(service) <= 63 and service.islower(), service


# --- The validators catch mistakes (so the tests above can fail). ---


def test_a_misspelled_field_is_rejected(schemas: dict[tuple[str, str], Obj]) -> None:
    cluster = copy.deepcopy(_example("small-cluster.yaml"))
    cluster["spec"]["workerGroups"][0]["nthread"] = 2
    with pytest.raises(AssertionError, match="nthread"):
        validate_custom(cluster, schemas)


def test_a_wrong_type_is_rejected(schemas: dict[tuple[str, str], Obj]) -> None:
    cluster = copy.deepcopy(_example("small-cluster.yaml"))
    cluster["spec"]["workerGroups"][0]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas"):
        validate_custom(cluster, schemas)


def test_quantities_accept_integers_and_strings_only(schemas: dict[tuple[str, str], Obj]) -> None:
    cluster = copy.deepcopy(_example("small-cluster.yaml"))
    cluster["spec"]["workerGroups"][0]["memory"] = 4294967296
    validate_custom(cluster, schemas)
    cluster["spec"]["workerGroups"][0]["memory"] = ["4Gi"]
    with pytest.raises(AssertionError, match="memory"):
        validate_custom(cluster, schemas)


def test_a_bad_pod_override_is_rejected(schemas: dict[tuple[str, str], Obj]) -> None:
    cluster = copy.deepcopy(_example("autoscaling-gpu-cluster.yaml"))
    cluster["spec"]["workerGroups"][1]["template"]["tolerations"] = {"key": "nvidia.com/gpu"}
    with pytest.raises(AssertionError, match="tolerations"):
        validate_custom(cluster, schemas)


def test_a_bad_object_name_is_rejected(schemas: dict[tuple[str, str], Obj]) -> None:
    job = copy.deepcopy(_example("job.yaml"))
    job["metadata"]["name"] = "Monte_Carlo"
    with pytest.raises(AssertionError, match="name"):
        validate_custom(job, schemas)


def test_unknown_fields_in_builtin_objects_are_rejected() -> None:
    (deployment,) = load_documents(MANIFESTS_DIR / "operator" / "deployment.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(AssertionError, match="readinessprobe"):
        validate_upstream(broken)
