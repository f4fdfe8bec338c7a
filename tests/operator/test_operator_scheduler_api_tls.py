"""The operator's client of a TLS scheduler's HTTP API: HTTPS checked against
the cluster's CA, and the bearer token on every call (a real Scheduler)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import kopf
import pytest

from shoal import Scheduler, Security
from shoal.operator import scheduler_api


@pytest.fixture(autouse=True)
def _restore_resolvers() -> Iterator[None]:
    yield
    scheduler_api.set_url_resolver(None)
    scheduler_api.set_credentials_resolver(None)


def test_calls_a_tls_scheduler_with_its_token_and_ca() -> None:
    security = Security.temporary()
    ca, token = security.tls_ca_file, security.http_token

    async def scenario() -> None:
        scheduler = await Scheduler(http_port=0, security=security).start()
        try:
            assert scheduler.http_address is not None
            assert scheduler.http_address.startswith("https://")
            plain = scheduler.http_address.replace("https://", "http://")
            scheduler_api.set_url_resolver(lambda cluster, namespace: plain)
            # explicit credentials; the CA turns the URL into https://
            assert await scheduler_api.adaptive_target("c", "ns", ca_file=ca) == 0
            assert await scheduler_api.retire_workers("c", "ns", n=0, token=token,
                                                      ca_file=ca) == []
            with pytest.raises(kopf.TemporaryError, match="401"):
                await scheduler_api.retire_workers("c", "ns", n=0, ca_file=ca)
            with pytest.raises(kopf.TemporaryError, match="403"):
                await scheduler_api.retire_workers("c", "ns", n=0, token="wrong", ca_file=ca)
            # or from the resolver, per cluster
            scheduler_api.set_credentials_resolver(
                lambda cluster, namespace: scheduler_api.Credentials(token, ca))
            assert await scheduler_api.retire_workers("c", "ns", n=0) == []
            assert await scheduler_api.workers("c", "ns") == []
        finally:
            await scheduler.close()

    asyncio.run(scenario())


def test_credentials_come_from_the_environment_by_default(tmp_path, monkeypatch) -> None:
    (tmp_path / "token").write_text("from-a-file\n")
    monkeypatch.setenv("SHOAL_HTTP_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("SHOAL_TLS_CA_FILE", "/var/run/shoal/ca.pem")
    found = scheduler_api._credentials("c", "ns")
    assert found == scheduler_api.Credentials("from-a-file", "/var/run/shoal/ca.pem")
