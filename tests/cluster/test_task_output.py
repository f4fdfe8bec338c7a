"""What tasks print or warn on a multi-process LocalCluster reaches the
process that started it, and printed lines are never taken for a worker's
announcement."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import warnings
    from shoal import Client, LocalCluster

    def noisy(x):
        print("printed-by-task", x)
        print('{"address": "tcp://192.0.2.1:1", "name": "impostor", "pid": 1}', flush=True)
        warnings.warn("warned-by-task")
        return x

    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster, timeout=20) as client:
        assert client.submit(noisy, 7).result() == 7
        (proc,) = cluster.workers.values()
        print("announcements", len(proc.announcements), proc.announcements[0]["name"])
        client.run(lambda: print("printed-by-run", flush=True))
""")


def test_print_and_warnings_in_tasks_reach_the_terminal_that_started_the_cluster(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "printed-by-task 7" in out.stdout
    assert '"name": "impostor"' in out.stdout  # shown as output, not read as a worker
    assert "announcements 1 local-0" in out.stdout
    assert "printed-by-run" in out.stdout
    assert "warned-by-task" in out.stderr
