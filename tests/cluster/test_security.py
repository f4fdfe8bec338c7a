"""A TLS cluster of real processes, and the attacks it refuses.

The scheduler and two workers are separate processes given their
credentials by command-line flags (as ``shoal scheduler --tls-ca-file ...``).
Each attack (a plain tcp:// client, one without a certificate, one with
another CA's, one with an expired certificate, a worker without credentials,
HTTP mutations without or with the wrong token) is refused, and the
legitimate client still gets correct results afterwards.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from shoal import Client, CommClosedError, EncryptionRequiredError, LocalCluster, Security, TLSError
from shoal.comm._security import ENV_VARIABLES, http_client_context

from ..pki import make_pki

HTTP_TIMEOUT = 10.0
TOKEN = "the-cluster-token"


def inc(x: int) -> int:
    return x + 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Security]:
    return make_pki(tmp_path_factory.mktemp("pki"), require_encryption=True, http_token=TOKEN)


@pytest.fixture(scope="module")
def cluster(pki: dict[str, Security]) -> Iterator[tuple[LocalCluster, Client]]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=0,
                      memory_limit="1GiB", security=pki["cluster"]) as local, \
            Client(local, timeout=20) as client:
        local.wait_for_workers(2)
        yield local, client


def assert_serving(client: Client) -> None:
    assert client.submit(inc, 41, pure=False).result(timeout=20) == 42
    assert sorted(client.gather(client.map(inc, range(20)))) == list(range(1, 21))


def test_every_address_is_tls_and_results_cross_workers(cluster) -> None:
    local, client = cluster
    workers = sorted(client.scheduler_info()["workers"])
    assert local.scheduler_address.startswith("tls://")
    assert len(workers) == 2 and all(w.startswith("tls://") for w in workers)
    made = client.submit(lambda: b"x" * 2_000_000, workers=[workers[0]], pure=False)
    used = client.submit(len, made, workers=[workers[1]])  # fetched worker to worker over TLS
    assert used.result(timeout=20) == 2_000_000
    assert_serving(client)


def submits_from_a_task(n: int) -> int:
    from shoal import get_client

    return get_client().submit(inc, n).result(timeout=20)


def test_a_task_opens_a_client_with_its_workers_credentials(cluster) -> None:
    _, client = cluster
    assert client.submit(submits_from_a_task, 6, pure=False).result(timeout=30) == 7


@pytest.mark.parametrize(("attacker", "error", "words"), [
    ("no-cert", TLSError, "refused this process's certificate"),
    ("other-ca", TLSError, "another CA"),
    ("expired", TLSError, "refused this process's certificate"),
])
def test_a_client_with_bad_credentials_is_refused(cluster, pki, attacker, error, words) -> None:
    local, client = cluster
    with pytest.raises(error, match=words):
        Client(local.scheduler_address, security=pki[attacker], timeout=10)
    assert_serving(client)


def test_a_plain_tcp_client_is_refused(cluster) -> None:
    local, client = cluster
    plain = local.scheduler_address.replace("tls://", "tcp://")
    with pytest.raises(CommClosedError, match="tls:// address"):
        Client(plain, timeout=2, security=Security())
    with pytest.raises(EncryptionRequiredError):  # and our own side refuses to try
        Client(plain, timeout=2, security=local.security)
    assert_serving(client)


def test_a_client_finds_credentials_in_the_environment(cluster, pki, monkeypatch) -> None:
    local, _ = cluster
    security = pki["cluster"]
    monkeypatch.setenv("SHOAL_TLS_CA_FILE", str(security.tls_ca_file))
    monkeypatch.setenv("SHOAL_TLS_CERT", str(security.tls_client_cert))
    monkeypatch.setenv("SHOAL_TLS_KEY", str(security.tls_client_key))
    with Client(local.scheduler_address, timeout=20) as client:
        assert client.submit(inc, 1).result(timeout=20) == 2


def _worker(scheduler: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **dict.fromkeys(ENV_VARIABLES, "")}
    return subprocess.run(
        [sys.executable, "-m", "shoal.cli", "worker", scheduler, "--no-nanny",
         "--death-timeout", "2", "--nthreads", "1", *flags],
        capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_worker_without_the_clusters_credentials_cannot_join(cluster, pki) -> None:
    local, client = cluster
    bare = _worker(local.scheduler_address)
    assert bare.returncode != 0 and "no TLS credentials" in bare.stderr, bare.stderr[-2000:]
    other = pki["other-ca"]
    foreign = _worker(local.scheduler_address, "--tls-ca-file", str(other.tls_ca_file),
                      "--tls-cert", str(other.tls_worker_cert),
                      "--tls-key", str(other.tls_worker_key))
    assert foreign.returncode != 0 and "another CA" in foreign.stderr, foreign.stderr[-2000:]
    assert len(client.scheduler_info()["workers"]) == 2
    assert_serving(client)


# ------------------------------------------------------------------ HTTP


def https(url: str, ca_file: str, method: str = "GET", body: Any = None,
          token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context: ssl.SSLContext = http_client_context(ca_file)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_is_https_and_mutations_need_the_token(cluster, pki) -> None:
    local, client = cluster
    ca = str(pki["cluster"].tls_ca_file)
    assert local.dashboard_link is not None and local.dashboard_link.startswith("https://")
    base = local.dashboard_link.rstrip("/")
    assert https(base + "/health", ca) == (200, b"ok")
    status, body = https(base + "/api/v1/workers", ca)  # read-only: open by default
    assert status == 200 and len(json.loads(body)["workers"]) == 2
    retire = base + "/api/v1/retire_workers"
    status, answer = https(retire, ca, "POST", {"n": 1})
    assert status == 401 and "Bearer" in answer["error"], answer
    status, answer = https(retire, ca, "POST", {"n": 1}, token="guess")
    assert status == 403, answer
    status, answer = https(retire, ca, "POST", {}, token=TOKEN)  # past the check: a 400
    assert status == 400, answer
    assert len(client.scheduler_info()["workers"]) == 2  # nothing retired
    for info in client.scheduler_info()["workers"].values():  # workers: HTTPS too
        assert info["http_address"].startswith("https://")
        assert https(info["http_address"] + "/health", ca) == (200, b"ok")
        assert https(info["http_address"] + "/metrics", ca)[0] == 200  # metrics_auth off
    with pytest.raises(OSError):  # plain HTTP on the HTTPS port: reset or refused
        urllib.request.urlopen(base.replace("https://", "http://") + "/health",
                               timeout=HTTP_TIMEOUT)
    assert_serving(client)


def test_client_security_true_starts_a_tls_cluster_of_its_own() -> None:
    with Client(security=True, processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None, memory_limit="1GiB") as client:
        assert client.scheduler_address.startswith("tls://")
        assert client.security.tls and client.security is client.cluster.security
        assert client.submit(inc, 1).result(timeout=20) == 2
