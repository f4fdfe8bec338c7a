"""docs/kubernetes.md stays true to the artifacts it describes.

Without a cluster the guide's commands cannot run, so what can be checked is
checked: every complete object in a YAML block is valid (upstream schema or
our CRDs), a block that shows an example file is that file, every Python
block compiles, every path a kubectl/helm command uses exists, and every
Helm value it mentions exists in values.yaml.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import yaml
from deploy_schemas import (
    CHART_DIR,
    EXAMPLES_DIR,
    REPO_ROOT,
    load_crd_schemas,
    load_documents,
    validate_any,
)

GUIDE = REPO_ROOT / "docs" / "kubernetes.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MONITORING = "monitoring.coreos.com/v1"

Obj = dict[str, Any]


def _blocks(language: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [body for lang, body in FENCE.findall(text) if lang == language]


def _complete_objects() -> list[Obj]:
    objects = []
    for block in _blocks("yaml"):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
            objects.append(doc)
    return objects


def test_the_guide_has_code() -> None:
    assert _blocks("yaml") and _blocks("python") and _complete_objects()


@pytest.mark.parametrize("index", range(len(_complete_objects())))
def test_every_object_in_the_guide_is_valid(index: int) -> None:
    doc = _complete_objects()[index]
    if doc["apiVersion"] == MONITORING:
        spec = doc["spec"]
        assert spec["selector"]["matchLabels"]
        endpoints = spec.get("podMetricsEndpoints") or spec.get("endpoints")
        assert endpoints and all(endpoint["port"] for endpoint in endpoints)
    else:
        validate_any(doc, load_crd_schemas())


def test_examples_shown_in_the_guide_are_the_files() -> None:
    examples = {doc["metadata"]["name"]: doc for path in EXAMPLES_DIR.glob("*.yaml")
                for doc in load_documents(path)}
    shown = [doc for doc in _complete_objects() if doc["kind"] in ("ShoalCluster", "ShoalJob")]
    assert shown
    for doc in shown:
        assert doc == examples[doc["metadata"]["name"]], doc["metadata"]["name"]


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_python_block_compiles(index: int) -> None:
    compile(_blocks("python")[index], f"{GUIDE.name} python block {index}", "exec")


def _command_paths() -> list[str]:
    paths = []
    for block in _blocks(""):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            words = line.split()
            if words[:1] not in (["kubectl"], ["helm"]):
                continue
            for flag, value in itertools.pairwise(words):
                if flag in ("-f", "-k") or value.startswith("./"):
                    paths.append(value)
    return paths


def test_commands_use_paths_that_exist() -> None:
    paths = _command_paths()
    assert "manifests/crds/" in paths and "./helm/shoal-operator" in paths
    for path in paths:
        assert (REPO_ROOT / path).exists(), path


def _value_paths(values: Obj, prefix: str = "") -> set[str]:
    found = set()
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        found.add(dotted)
        if isinstance(value, dict):
            found |= _value_paths(value, dotted)
    return found


def test_helm_values_in_the_guide_exist() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    known = _value_paths(values)
    text = GUIDE.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"--set ([\w.]+)=", text))
    mentioned |= {name for name in re.findall(r"`([a-z][\w]*(?:\.[\w]+)+)`", text)
                  if name.split(".")[0] in {key.split(".")[0] for key in known}}
    assert "rbac.namespaced" in mentioned
    unknown = {name for name in mentioned if name not in known
               and not name.startswith("metrics.serviceMonitor.labels.")}
    assert unknown == set()


def test_the_guide_says_how_it_is_tested() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for phrase in ("kubernetes-validate", "kmock", "helm-sdkpy", "tests/k8s",
                   "Kubernetes 1.20 and newer", "kubeVersion: >=1.20.0-0"):
        assert phrase in text


def test_the_guide_lists_every_real_cluster_scenario_module() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    tier = REPO_ROOT / "tests" / "k8s"
    scenarios = sorted(p.name for p in tier.glob("test_*.py")
                       if p.name.startswith(("test_operator_", "test_examples_")))
    assert scenarios
    for name in scenarios:
        assert f"`{name}`" in text, f"docs/kubernetes.md does not say what {name} proves"
    listed = re.findall(r"^\| `(test_[a-z_]+\.py)` \|", text, re.MULTILINE)
    assert sorted(listed) == scenarios


def test_the_chart_declares_the_supported_range() -> None:
    chart = yaml.safe_load((REPO_ROOT / "helm" / "shoal-operator" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.20.0-0"


