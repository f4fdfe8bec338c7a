"""Every ShoalCluster and ShoalJob in manifests/examples/, applied to the
emulator with the real operator running, comes up as documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import NAMESPACE, Harness, wait_for

from shoal.operator.spec import parse_cluster_spec

ROOT = Path(__file__).resolve().parents[2]
DOCS = [(path.name, doc) for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") in ("ShoalCluster", "ShoalJob")]


@pytest.mark.parametrize(("filename", "doc"), DOCS,
                         ids=[f"{f}:{d['metadata']['name']}" for f, d in DOCS])
def test_example_comes_up(operator: Harness, filename: str, doc: dict[str, Any]) -> None:
    doc["metadata"]["namespace"] = NAMESPACE
    name = doc["metadata"]["name"]
    if doc["kind"] == "ShoalJob":
        operator.apply(doc)
        pod = wait_for(lambda: operator.get("pods", f"{name}-runner", api_version="v1"),
                       message="the runner pod")
        assert pod["spec"]["containers"][0]["command"] == doc["spec"]["runner"]["command"]
        return
    operator.scheduler(name).target = 0
    operator.apply(doc)
    spec = parse_cluster_spec(name, NAMESPACE, doc["spec"])
    expected = sum(g.clamp(g.replicas) for g in spec.groups)
    wait_for(lambda: ((operator.get("shoalclusters", name) or {}).get("status") or {})
             .get("phase") == "Running", message=f"{name} Running")
    wait_for(lambda: len(operator.pods(name)) == expected, message=f"{expected} workers")
