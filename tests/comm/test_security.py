"""Security: what it reads, what it writes, and the token that follows its file."""

from __future__ import annotations

import os
import stat

import pytest

from shoal import Security
from shoal.comm import _security


def test_temporary_security_writes_private_files_and_a_token() -> None:
    security = Security.temporary()
    assert security.tls and security.require_encryption and security.http_token
    for path in (security.tls_ca_file, security.tls_worker_cert, security.tls_worker_key):
        assert path is not None
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(security.tls_ca_file)).st_mode) == 0o700
    assert security.http_token not in repr(security)
    assert security.connection_args("worker") is security.connection_args("worker")


def test_security_from_env_uses_one_pair_for_every_role(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    env = {"SHOAL_TLS_CA_FILE": "/ca.pem", "SHOAL_TLS_CERT": "/tls.crt",
           "SHOAL_TLS_KEY": "/tls.key", "SHOAL_HTTP_TOKEN_FILE": str(token_file),
           "SHOAL_REQUIRE_ENCRYPTION": "true", "SHOAL_HTTP_AUTH": "all"}
    security = Security.from_env(env)
    for role in ("client", "scheduler", "worker"):
        assert security.cert_pair(role) == ("/tls.crt", "/tls.key")  # type: ignore[arg-type]
    assert security.require_encryption and security.http_auth == "all"
    token = security.token()
    assert token is not None and token.current() == b"s3cret"
    assert not Security.from_env({}).tls and Security.from_env({}).token() is None


def test_a_rotated_token_file_is_followed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_security, "TOKEN_RECHECK_SECONDS", 0.0)
    path = tmp_path / "token"
    path.write_text("first")
    token = _security.HttpToken(None, str(path))
    assert token.current() == b"first"
    path.write_text("second")
    os.utime(path, (1, 1))  # a new mtime, whatever the clock's resolution
    assert token.current() == b"second"


def test_a_missing_certificate_file_is_named(tmp_path) -> None:
    security = Security(tls_ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match="nope.pem"):
        security.connection_args("client")


def test_the_command_line_takes_flags_then_the_environment(tmp_path, monkeypatch) -> None:
    from shoal.cli import _parser
    from shoal.cli import _security as security_from_args

    for name in _security.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    half = _parser().parse_args(["scheduler", "--tls-ca-file", "/ca.pem"])
    with pytest.raises(SystemExit, match="all three"):
        security_from_args(half)
    monkeypatch.setenv("SHOAL_TLS_CA_FILE", "/env-ca.pem")
    monkeypatch.setenv("SHOAL_TLS_CERT", "/env.crt")
    monkeypatch.setenv("SHOAL_TLS_KEY", "/env.key")
    monkeypatch.setenv("SHOAL_HTTP_TOKEN", "from-env")
    args = _parser().parse_args(["worker", "tls://h:1", "--tls-cert", "/flag.crt",
                                 "--http-auth", "all"])
    security = security_from_args(args)
    assert security.tls_ca_file == "/env-ca.pem"
    assert security.cert_pair("worker") == ("/flag.crt", "/env.key")
    assert security.http_token == "from-env" and security.http_auth == "all"
    assert "--tls-cert" in security.cli_args("worker")
    assert "from-env" not in " ".join(security.cli_args("worker"))  # never on a command line
