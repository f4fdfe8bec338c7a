"""A module next to the user's script imports on LocalCluster workers, whatever
directory the script was started from (as with dask's LocalCluster)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_module_next_to_the_script_imports_on_the_workers(tmp_path):
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "helpers_next_to_script.py").write_text("def triple(x):\n    return 3 * x\n")
    (project / "job.py").write_text(textwrap.dedent("""
        from shoal import Client, LocalCluster
        from helpers_next_to_script import triple

        with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, \\
                Client(cluster, timeout=20) as client:
            print("result", client.submit(triple, 14).result())
    """))
    out = subprocess.run([sys.executable, str(project / "job.py")], check=False,
                         capture_output=True, text=True, timeout=120, cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "result 42" in out.stdout
