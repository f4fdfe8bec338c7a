"""Static checks of the Helm chart's files and of the Dockerfile.

These need no Helm library, so they run in the main test venv: the chart's
CRDs are byte-identical to manifests/crds/, every value in values.yaml is
commented and described by values.schema.json (which rejects unknown keys),
and the Dockerfile builds the one image the manifests use: the package with
its kubernetes extra, run as a non-root user. Rendering and linting the chart
with the real Helm library is in test_helm_chart.py (Python >= 3.12).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_schemas import CHART_DIR, CRDS_DIR, MANIFESTS_DIR, REPO_ROOT, load_documents

Obj = dict[str, Any]


def _values() -> Obj:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))


def _schema() -> Obj:
    return json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))


def test_chart_crds_are_identical_to_the_manifests() -> None:
    ours = sorted(path.name for path in CRDS_DIR.glob("*.yaml"))
    chart = sorted(path.name for path in (CHART_DIR / "crds").glob("*.yaml"))
    assert ours and chart == ours, "helm/shoal-operator/crds/ must hold manifests/crds/*.yaml"
    for name in ours:
        assert (CHART_DIR / "crds" / name).read_bytes() == (CRDS_DIR / name).read_bytes(), (
            f"helm/shoal-operator/crds/{name} differs from manifests/crds/{name}: "
            "copy it again (cp manifests/crds/*.yaml helm/shoal-operator/crds/)"
        )


def _key_lines(node: yaml.Node, path: str = "") -> list[tuple[str, int]]:
    """(dotted key, 0-based line) of every mapping key, recursively."""
    found: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{path}.{key.value}" if path else key.value
            found.append((dotted, key.start_mark.line))
            found.extend(_key_lines(value, dotted))
    return found


def _commented(lines: list[str], line: int) -> bool:
    if "#" in lines[line]:
        return True
    previous = line - 1
    return previous >= 0 and lines[previous].lstrip().startswith("#")


# Free-form blocks (Kubernetes objects passed through as they are): their own
# comment covers the keys inside them.
FREE_FORM_BLOCKS = ("resources.", "podSecurityContext.", "securityContext.",
                    "health.livenessProbe.", "health.readinessProbe.")


def test_every_value_is_commented() -> None:
    text = (CHART_DIR / "values.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    missing = [
        dotted
        for dotted, line in _key_lines(yaml.compose(text))
        if not _commented(lines, line) and not dotted.startswith(FREE_FORM_BLOCKS)
    ]
    assert missing == [], f"values without a comment: {missing}"


def test_the_comment_check_finds_a_bare_value() -> None:
    text = "# -- Documented.\ndocumented: 1\nbare: 2\n"
    lines = text.splitlines()
    bare = [d for d, line in _key_lines(yaml.compose(text)) if not _commented(lines, line)]
    assert bare == ["bare"]


def test_the_default_values_match_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.Draft7Validator(_schema()).validate(_values())


def _leaf_paths(values: Obj, schema: Obj, path: str = "") -> list[str]:
    """Value paths the schema does not describe."""
    missing: list[str] = []
    properties = schema.get("properties")
    for key, value in values.items():
        dotted = f"{path}.{key}" if path else key
        if properties is None:
            continue  # a free-form object (resources, securityContext, ...)
        if key not in properties:
            missing.append(dotted)
        elif isinstance(value, dict):
            missing.extend(_leaf_paths(value, properties[key], dotted))
    return missing


def test_the_schema_describes_every_value() -> None:
    assert _leaf_paths(_values(), _schema()) == []


def _descriptions_missing(schema: Obj, path: str = "") -> list[str]:
    missing = [] if "description" in schema or not path else [path]
    for key, sub in (schema.get("properties") or {}).items():
        missing.extend(_descriptions_missing(sub, f"{path}.{key}" if path else key))
    return missing


def test_the_schema_describes_every_property() -> None:
    assert _descriptions_missing(_schema()) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"rbac": {"namespaced": "yes"}},
        {"rbac": {"clusterWide": True}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"metrics": {"serviceMonitor": {"interval": "soon"}}},
        {"replicaCount": 2},
    ],
    ids=str,
)
def test_the_schema_rejects_bad_values(bad: Obj) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(bad)


# --- Dockerfile ---


def _instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_the_image_installs_the_kubernetes_extra_on_python_311() -> None:
    # The image is built and run for real by tests/k8s; this only pins the defaults.
    instructions = _instructions()
    assert ("ARG", "BASE=python:3.11-slim") in instructions
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install" in runs and "kubernetes" in runs


def test_the_image_runs_as_the_non_root_user_of_the_manifests() -> None:
    users = [rest for word, rest in _instructions() if word == "USER"]
    assert users, "the image must not run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes check runAsNonRoot"
    (deployment,) = load_documents(MANIFESTS_DIR / "operator" / "deployment.yaml")
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))


def test_the_image_exposes_the_scheduler_ports_and_sets_no_entrypoint() -> None:
    instructions = _instructions()
    exposed = {port for word, rest in instructions if word == "EXPOSE" for port in rest.split()}
    assert {"8786", "8787", "8080", "8081"} <= exposed
    assert "ENTRYPOINT" not in {word for word, _ in instructions}


def test_the_build_context_holds_what_the_image_copies() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:  # a copy between stages
            *sources, _ = [part for part in rest.split() if not part.startswith("--")]
            for source in sources:
                assert source in allowed, f"{source} is excluded by .dockerignore"
                assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file"


def _file(path: str) -> Path:
    return REPO_ROOT / path


def test_the_image_in_manifests_and_chart_agree() -> None:
    (deployment,) = load_documents(MANIFESTS_DIR / "operator" / "deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    chart = yaml.safe_load(_file("helm/shoal-operator/Chart.yaml").read_text(encoding="utf-8"))
    expected = f"{_values()['image']['repository']}:{chart['appVersion']}"
    assert container["image"] == expected
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["SHOAL_DEFAULT_IMAGE"] == expected
