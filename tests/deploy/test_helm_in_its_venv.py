"""Runs the Helm chart tests with the real Helm library in its own venv.

helm-sdkpy needs Python >= 3.12 while the project tests run on 3.11+, so
`.ci/run` makes `.venv-helm` and this test drives `test_helm_chart.py` there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELM_PYTHON = ROOT / ".venv-helm" / "bin" / "python"


@pytest.mark.skipif(sys.version_info >= (3, 12) and "helm_sdkpy" in sys.modules,
                    reason="already running under the Helm venv")
def test_chart_with_the_real_helm_library():
    if not HELM_PYTHON.exists():
        pytest.skip("no .venv-helm (Python >= 3.12 with helm-sdkpy); .ci/run creates it")
    out = subprocess.run(
        [str(HELM_PYTHON), "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "deploy" / "test_helm_chart.py")],
        check=False, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " skipped" not in out.stdout.splitlines()[-1]
