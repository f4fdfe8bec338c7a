"""The Python code of the job example and of the guide runs on a real cluster.

A ShoalJob's runner is a command line that gets the scheduler's address in
SHOAL_SCHEDULER_ADDRESS; here it runs as a local process against a real
LocalCluster (scheduler and worker processes), which is exactly what the
runner pod does against the scheduler Service. The guide's notebook snippet
runs the same way, with the in-cluster address replaced by the local one.
The cluster is secured, as on Kubernetes by default, and both get its
credentials the way pods do: files named by SHOAL_TLS_* variables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from deploy_schemas import EXAMPLES_DIR, REPO_ROOT, load_documents

GUIDE = REPO_ROOT / "docs" / "kubernetes.md"
IN_CLUSTER_ADDRESS = "tls://small-scheduler.default.svc.cluster.local:8786"
RUN_TIMEOUT = 90  # seconds


_credentials: dict[str, str] = {}


@pytest.fixture(scope="module")
def scheduler_address() -> Iterator[str]:
    shoal = pytest.importorskip("shoal")
    with shoal.LocalCluster(n_workers=2, threads_per_worker=1, security=True) as cluster:
        security = cluster.security
        _credentials.update(SHOAL_TLS_CA_FILE=security.tls_ca_file or "",
                            SHOAL_TLS_CERT=security.tls_client_cert or "",
                            SHOAL_TLS_KEY=security.tls_client_key or "")
        assert cluster.scheduler_address.startswith("tls://")
        yield cluster.scheduler_address


def _run(argv: list[str], address: str) -> subprocess.CompletedProcess[str]:
    path = [str(REPO_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "SHOAL_SCHEDULER_ADDRESS": address, "PYTHONPATH": os.pathsep.join(path),
           **_credentials}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=False)


def test_the_job_runner_computes_pi(scheduler_address: str) -> None:
    (job,) = load_documents(EXAMPLES_DIR / "job.yaml")
    runner = job["spec"]["runner"]
    assert runner["command"][0] == "python"
    done = _run([sys.executable, *runner["command"][1:], *runner["args"]], scheduler_address)
    assert done.returncode == 0, done.stderr
    match = re.search(r"pi is about ([0-9.]+)", done.stdout)
    assert match, done.stdout
    assert abs(float(match.group(1)) - 3.14159) < 0.01


def test_the_guide_notebook_snippet_runs(scheduler_address: str) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    (snippet,) = [block for block in blocks if IN_CLUSTER_ADDRESS in block]
    done = _run([sys.executable, "-c", snippet.replace(IN_CLUSTER_ADDRESS, scheduler_address)],
                scheduler_address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(x**2 for x in range(1000)))
