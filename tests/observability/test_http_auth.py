"""Who may call what on the scheduler's and workers' HTTP servers.

Clusters run in this process (``processes=False``); every request goes over
real HTTP(S).  The rules are those of docs/security.md: ``/health`` is
always open; mutations need the bearer token when one is configured and are
refused outright with TLS but no token; ``http_auth="all"`` and
``metrics_auth`` protect the rest.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from shoal import Client, LocalCluster, Security
from shoal.comm._http import TOKEN_COOKIE
from shoal.comm._security import http_client_context

TIMEOUT = 10.0
TOKEN = "t0ken"


def call(url: str, security: Security, method: str = "GET", body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """(status, body, response headers); errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    context: ssl.SSLContext | None = (http_client_context(security.tls_ca_file)
                                      if security.tls else None)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:
            return answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def local(security: Security) -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                        dashboard_address=0, memory_limit="1GiB", security=security)


def test_a_token_without_tls_still_guards_mutations() -> None:
    security = Security(http_token=TOKEN)
    with local(security) as cluster, Client(cluster) as client:
        base = str(cluster.dashboard_link).rstrip("/")
        assert base.startswith("http://")
        retire = base + "/api/v1/retire_workers"
        status, answer, headers = call(retire, security, "POST", {"n": 1})
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), answer
        assert call(retire, security, "POST", {"n": 1}, bearer("wrong"))[0] == 403
        assert call(retire, security, "POST", {"n": 1}, {"Authorization": "Basic x"})[0] == 403
        assert len(client.scheduler_info()["workers"]) == 1
        status, answer, _ = call(retire, security, "POST", {"n": 0}, bearer(TOKEN))
        assert (status, json.loads(answer)) == (200, {"retired": []})
        assert client.submit(sum, [1, 2]).result(timeout=10) == 3


def test_tls_without_a_token_refuses_mutations() -> None:
    security = Security.temporary(http_token=None)
    with local(security) as cluster, Client(cluster) as client:
        base = str(cluster.dashboard_link).rstrip("/")
        assert base.startswith("https://")
        status, answer, _ = call(base + "/api/v1/retire_workers", security, "POST", {"n": 1},
                                 bearer("anything"))
        assert status == 403 and "no HTTP token configured" in answer["error"], answer
        assert call(base + "/api/v1/workers", security)[0] == 200
        assert len(client.scheduler_info()["workers"]) == 1


def test_without_tls_or_token_http_stays_as_it_was() -> None:
    security = Security()
    with local(security) as cluster:
        base = str(cluster.dashboard_link).rstrip("/")
        status, answer, _ = call(base + "/api/v1/retire_workers", security, "POST", {})
        assert status == 400, answer  # reached the handler: no token asked for


def test_everything_but_health_can_need_the_token() -> None:
    security = Security.temporary(http_token=TOKEN, http_auth="all", metrics_auth=True)
    with local(security) as cluster, Client(cluster) as client:
        base = str(cluster.dashboard_link).rstrip("/")
        assert call(base + "/health", security)[:2] == (200, b"ok")
        for path in ("/api/v1/workers", "/metrics", "/", "/static/dashboard.js"):
            assert call(base + path, security)[0] == 401, path
            assert call(base + path, security, headers=bearer("nope"))[0] == 403, path
        assert call(base + "/api/v1/workers", security, headers=bearer(TOKEN))[0] == 200
        assert call(base + "/metrics", security, headers=bearer(TOKEN))[0] == 200
        # a browser opens /?token=... once; the cookie carries it to the page's requests
        status, _, headers = call(base + f"/?token={TOKEN}", security)
        cookie = headers["Set-Cookie"]
        assert status == 200 and cookie.startswith(f"{TOKEN_COOKIE}=")
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        assert call(base + "/api/v1/dashboard", security, headers=jar)[0] == 200
        # ...but never authorizes a mutation (no cross-site request can retire workers)
        assert call(base + "/api/v1/retire_workers", security, "POST", {"n": 1},
                    headers=jar)[0] == 401
        assert len(client.scheduler_info()["workers"]) == 1
