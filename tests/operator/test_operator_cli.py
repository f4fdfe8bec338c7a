"""``shoal operator``: argument parsing, the metrics port and the health port."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from operator_harness import NAMESPACE, Harness, OperatorThread, wait_for

from shoal.operator import cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_parser_defaults_and_scopes() -> None:
    args = cli.build_parser().parse_args(["--namespace", "a", "-n", "b"])
    assert (args.namespace, args.all_namespaces) == (["a", "b"], False)
    assert (args.metrics_port, args.health_port, args.peering) == (8080, 8081, None)
    args = cli.build_parser().parse_args(["-A", "--peering", "shoal", "--metrics-port", "0"])
    assert (args.all_namespaces, args.peering, args.metrics_port) == (True, "shoal", 0)


@pytest.mark.parametrize("argv", [[], ["-n", "a", "--all-namespaces"],
                                  ["-A", "--peering", "x", "--standalone"]])
def test_bad_command_lines_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_metrics_and_health_endpoints(harness: Harness, make_cluster) -> None:
    metrics_port, health_port = free_port(), free_port()
    harness.scheduler("watched")
    thread = OperatorThread(["--namespace", NAMESPACE, "--metrics-port", str(metrics_port),
                             "--health-port", str(health_port)])
    try:
        harness.apply(make_cluster("watched"))
        wait_for(lambda: ((harness.get("shoalclusters", "watched") or {}).get("status") or {})
                 .get("phase") == "Running", message="Running")
        status, _ = wait_for(lambda: fetch(f"http://127.0.0.1:{health_port}/healthz"))
        assert status == 200

        def scraped() -> str | None:
            body = fetch(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            return body if 'shoal_operator_clusters{phase="Running"} 1.0' in body else None
        body = wait_for(scraped, message="the Running cluster in the metrics")
        assert 'shoal_operator_reconciles_total{handler="create"}' in body
        assert 'shoal_operator_scaling_actions_total{action="create"}' in body
        assert "shoal_operator_errors_total" in body
    finally:
        thread.stop()


def test_without_credentials_it_exits_with_a_clear_message(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    code = ("import sys; from shoal.operator.cli import main; "
            "sys.exit(main(['-n', 'x', '--metrics-port', '0', '--health-port', '0']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60,
                            env={"PYTHONPATH": str(src), "HOME": str(tmp_path),
                                 "KUBECONFIG": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "shoal operator: no usable Kubernetes credentials" in result.stderr
