"""Fixtures of the real-cluster tier: one KubeNode per session, a namespace per test.

Every test under tests/k8s is marked ``kubernetes`` (``pytest -m "not
kubernetes"`` is the fast suite) and gets a longer timeout, since the first
one also pays for starting the cluster. Under CI (``CI=true``) the tier never
skips: a cluster that cannot be built or started fails the tests. Elsewhere it
skips, saying why. The build itself (minutes, cold) is never run here:
``.ci/run`` runs tests/k8s/build-kubernetes.sh first.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import ARTIFACTS, ClusterUnavailable, KubeNode, missing_prerequisites

HERE = Path(__file__).parent
TIER_TIMEOUT = 600
"""Seconds per test in this tier unless the test sets its own."""
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.kubernetes)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TIER_TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the real-cluster tier cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"real-cluster tier skipped: {reason}")


@pytest.fixture(scope="session")
def kube_node(request: pytest.FixtureRequest) -> Iterator[KubeNode]:
    """The session's single-node cluster (started once, stopped at the end)."""
    reason = missing_prerequisites()
    if reason:
        _unavailable(reason)
    node = KubeNode()
    try:
        node.start()
    except ClusterUnavailable as exc:
        _unavailable(str(exc))
    yield node
    try:
        node.stop(save_logs=request.session.testsfailed > 0)
    finally:
        _TIMINGS.append(f"real-cluster tier: waited {node.lock_wait_seconds:.1f}s for the "
                        f"machine's cluster lock, started in {node.start_seconds:.1f}s, "
                        f"stopped in {node.stop_seconds:.1f}s")


_TIMINGS: list[str] = []
"""Filled at the cluster's teardown, printed in the terminal summary (not captured)."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _TIMINGS:
        terminalreporter.write_line(line)


@pytest.fixture
def kube_namespace(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    kube_node.check_alive()
    kube_node.kubectl("create", "namespace", name)
    yield name
    kube_node.check_alive()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        dump_namespace(kube_node, name, ARTIFACTS / name)
    # Not waited for: the kubelet takes ~10 s to confirm each pod's deletion, and
    # the session's shutdown waits for every pod anyway.
    kube_node.kubectl("delete", "namespace", name, "--wait=false")


def dump_namespace(node: KubeNode, namespace: str, dest: Path) -> None:
    """Objects, events and pod logs of a namespace, for a failed test's artifacts."""
    dest.mkdir(parents=True, exist_ok=True)
    commands = {
        "objects.txt": ("get", "all,events,configmaps,secrets,serviceaccounts", "-o", "wide"),
        "describe.txt": ("describe", "all"),
        "objects.yaml": ("get", "all", "-o", "yaml"),
    }
    for filename, args in commands.items():
        result = node.kubectl(*args, "-n", namespace, check=False)
        (dest / filename).write_text(result.stdout + result.stderr)
    pods = node.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout.split()
    for pod in pods:
        try:
            result = node.kubectl("logs", "-n", namespace, pod, "--all-containers",
                                  "--prefix", check=False, timeout=30)
        except subprocess.TimeoutExpired:
            continue
        (dest / f"{pod.replace('/', '_')}.log").write_text(result.stdout + result.stderr)
