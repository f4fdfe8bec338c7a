"""The ``shoal`` command: scheduler, worker, local cluster, demo, operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from .cluster._process import announce
from .comm import CommLimits, Security
from .comm._http import DEFAULT_MAX_BODY_BYTES
from .protocol._ops import MAX_NTHREADS
from .worker._memory import MemoryThresholds, parse_bytes
from .worker._monitor import DEFAULT_STUCK_TIMEOUT

logger = logging.getLogger("shoal")


def _resources(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, sep, amount = part.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"resource {part!r} is not NAME=AMOUNT")
            out[name] = float(amount)
    return out


def _fraction(text: str) -> float | bool:
    if text.lower() in ("false", "off", "no"):
        return False
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction or false") from None


def _nthreads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads") from None
    if not 1 <= value <= MAX_NTHREADS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_NTHREADS}, got {value}")
    return value


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


#: The flags every server takes for what it accepts from its peers.
LIMIT_FLAGS = ("max_message_size", "handshake_timeout", "read_idle_timeout", "http_max_body")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    env = CommLimits.from_env()
    parser.add_argument("--max-message-size", type=_size, default=env.max_message_bytes,
                        help="largest message a peer may send (e.g. 512MiB)")
    parser.add_argument("--handshake-timeout", type=_seconds, default=env.handshake_timeout,
                        help="drop a connection that has not said hello within this many seconds")
    parser.add_argument("--read-idle-timeout", type=_seconds, default=env.read_idle_timeout,
                        help="drop a peer that stops sending for this long mid-message")
    parser.add_argument("--http-max-body", type=_size,
                        default=int(os.environ.get("SHOAL_HTTP_MAX_BODY_BYTES")
                                    or DEFAULT_MAX_BODY_BYTES),
                        help="largest HTTP request body (larger ones get 413)")


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    """TLS and HTTP-token flags; each falls back to its SHOAL_* variable (Security.from_env)."""
    group = parser.add_argument_group("security (docs/security.md)")
    group.add_argument("--tls-ca-file", default=None,
                       help="the cluster's CA (PEM); turns on tls:// [SHOAL_TLS_CA_FILE]")
    group.add_argument("--tls-cert", default=None,
                       help="this process's certificate (PEM) [SHOAL_TLS_CERT]")
    group.add_argument("--tls-key", default=None,
                       help="the certificate's private key (PEM) [SHOAL_TLS_KEY]")
    group.add_argument("--require-encryption", action="store_true", default=None,
                       help="refuse tcp:// addresses [SHOAL_REQUIRE_ENCRYPTION]")
    group.add_argument("--http-token-file", default=None,
                       help="file holding the bearer token HTTP mutations need; re-read when "
                            "it changes [SHOAL_HTTP_TOKEN_FILE, or SHOAL_HTTP_TOKEN itself]")
    group.add_argument("--http-auth", choices=("mutations", "all"), default=None,
                       help="what needs the token: only mutations (default) or every page "
                            "but /health [SHOAL_HTTP_AUTH]")
    group.add_argument("--metrics-auth", action="store_true", default=None,
                       help="/metrics needs the token too [SHOAL_METRICS_AUTH]")


def _security(args: argparse.Namespace) -> Security:
    """The flags, falling back to the environment; a half-given TLS setup is refused."""
    try:
        env = Security.from_env()
    except ValueError as exc:
        raise SystemExit(f"shoal: {exc}") from None
    ca = args.tls_ca_file or env.tls_ca_file
    cert = args.tls_cert or env.tls_scheduler_cert
    key = args.tls_key or env.tls_scheduler_key
    if any((ca, cert, key)) and not all((ca, cert, key)):
        raise SystemExit("shoal: TLS needs all three of --tls-ca-file, --tls-cert and --tls-key "
                         "(or SHOAL_TLS_CA_FILE, SHOAL_TLS_CERT and SHOAL_TLS_KEY)")
    token_file = args.http_token_file or env.http_token_file
    try:
        return Security(
            tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
            tls_scheduler_cert=cert, tls_scheduler_key=key,
            tls_worker_cert=cert, tls_worker_key=key,
            require_encryption=bool(args.require_encryption or env.require_encryption),
            http_token=None if args.http_token_file else env.http_token,
            http_token_file=token_file,
            http_auth=args.http_auth or env.http_auth,
            metrics_auth=bool(args.metrics_auth or env.metrics_auth),
        )
    except ValueError as exc:
        raise SystemExit(f"shoal: {exc}") from None


def _limits(args: argparse.Namespace) -> CommLimits:
    try:
        return CommLimits(args.max_message_size, args.handshake_timeout, args.read_idle_timeout)
    except ValueError as exc:
        raise SystemExit(f"shoal: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("SHOAL_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scheduler", help="run a scheduler")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8786)
    s.add_argument("--http-port", type=int, default=8787,
                   help="HTTP port for health, API, metrics and dashboard (-1: off)")
    s.add_argument("--worker-ttl", type=float, default=10.0,
                   help="remove a worker silent for this many seconds")
    s.add_argument("--allowed-failures", type=int, default=None)
    _add_limit_flags(s)
    _add_security_flags(s)
    s.add_argument("--story-size", type=int, default=50_000,
                   help="task transitions kept for client.story() (a ring buffer)")
    s.add_argument("--rejoin-grace", type=float, default=60.0,
                   help="seconds a rejoining worker's data waits for a client to claim it")
    s.add_argument("--announce", action="store_true", help=argparse.SUPPRESS)

    w = sub.add_parser("worker", help="run a worker (under a nanny by default)")
    w.add_argument("address", nargs="?", default=os.environ.get("SHOAL_SCHEDULER_ADDRESS"))
    w.add_argument("--name", default=None)
    w.add_argument("--host", default=None)
    w.add_argument("--port", type=int, default=0)
    w.add_argument("--nthreads", type=_nthreads, default=os.cpu_count() or 1)
    w.add_argument("--memory-limit", default="auto",
                   help="bytes (4GiB), a fraction of the machine (0.5), auto, or none")
    defaults = MemoryThresholds()
    for name, what in (("target", "managed results above it spill to disk"),
                       ("spill", "process memory above it spills results"),
                       ("pause", "process memory above it pauses new tasks"),
                       ("terminate", "the nanny restarts the worker above it")):
        w.add_argument(f"--memory-{name}", type=_fraction, default=getattr(defaults, name),
                       help=f"fraction of the memory limit (or false): {what}")
    w.add_argument("--memory-stuck-timeout", type=float, default=DEFAULT_STUCK_TIMEOUT,
                   help="seconds paused with a full spill disk before the tasks waiting to "
                        "start fail with WorkerMemoryError")
    w.add_argument("--resources", action="append", default=[], help="e.g. GPU=2")
    w.add_argument("--http-port", type=int, default=None)
    w.add_argument("--death-timeout", type=float, default=60.0)
    w.add_argument("--local-directory", default=None,
                   help="where the worker keeps spill files (default: the temp directory)")
    w.add_argument("--warm-imports", default=None, metavar="MODULES",
                   help="comma-separated modules to import in the background at start, "
                        "if installed (default: numpy,dask._task_spec; '' for none)")
    w.add_argument("--no-nanny", dest="nanny", action="store_false")
    _add_limit_flags(w)
    _add_security_flags(w)
    w.add_argument("--announce", action="store_true", help=argparse.SUPPRESS)

    local = sub.add_parser("local", help="run a local cluster until interrupted")
    local.add_argument("--workers", type=int, default=None)
    local.add_argument("--threads", type=int, default=None)
    _add_security_flags(local)

    demo = sub.add_parser("demo", help="run the demo computation and print its report")
    demo.add_argument("--scheduler", default=None, help="run on this cluster instead")
    demo.add_argument("--units", type=int, default=None)
    demo.add_argument("--workers", type=int, default=2)

    op = sub.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    op.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "operator":  # everything after belongs to the operator
        from .operator.cli import main as operator_main

        return operator_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = {"scheduler": _scheduler, "worker": _worker, "local": _local, "demo": _demo}
    return command[args.command](args)


def _tune_gc() -> None:
    """Collect young objects less often, and never scan old ones (see ``shoal._gc``)."""
    from ._gc import freeze_old_objects

    freeze_old_objects()


def _run_until_signal(start: Any, stop: Any) -> None:
    """Run ``start()`` on a fresh loop, then wait for SIGTERM/SIGINT or ``finished``."""

    async def run() -> None:
        server = await start()
        _tune_gc()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        finished = getattr(server, "finished", None)
        waiters = [asyncio.ensure_future(done.wait())]
        if finished is not None:
            waiters.append(asyncio.ensure_future(finished()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        await stop(server)

    asyncio.run(run())


def _scheduler(args: argparse.Namespace) -> int:
    from .scheduler import Scheduler

    security = _security(args)
    if not security.tls and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s without TLS: anyone who can reach the port can run "
                       "code on the workers (docs/security.md)", args.host)

    async def start() -> Scheduler:
        http = None if args.http_port < 0 else args.http_port
        scheduler = await Scheduler(args.host, args.port, http_port=http, security=security,
                                    worker_ttl=args.worker_ttl,
                                    allowed_failures=args.allowed_failures,
                                    limits=_limits(args),
                                    http_max_body_bytes=args.http_max_body,
                                    story_size=args.story_size,
                                    rejoin_grace=args.rejoin_grace).start()
        logger.info("scheduler at %s, HTTP at %s", scheduler.address, scheduler.http_address)
        if args.announce:
            announce(address=scheduler.address, http_address=scheduler.http_address,
                     pid=os.getpid())
        return scheduler

    async def stop(scheduler: Scheduler) -> None:
        await scheduler.close()

    _run_until_signal(start, stop)
    return 0


def _worker(args: argparse.Namespace) -> int:
    if not args.address:
        print("shoal worker: give the scheduler address (or set SHOAL_SCHEDULER_ADDRESS)",
              file=sys.stderr)
        return 2
    try:
        MemoryThresholds(args.memory_target, args.memory_spill, args.memory_pause,
                         args.memory_terminate)
    except ValueError as exc:
        print(f"shoal worker: {exc}", file=sys.stderr)
        return 2
    if args.nanny:
        from .worker._nanny import run_nanny

        return run_nanny(_worker_argv(args), args)
    from .worker import Worker
    from .worker._nanny import watch_parent_from_env

    watch_parent_from_env()

    security = _security(args)

    async def start() -> Worker:
        worker = await Worker(
            args.address, nthreads=args.nthreads, name=args.name, security=security,
            host=args.host or _default_host(args.address), port=args.port,
            memory_limit=args.memory_limit, resources=_resources(args.resources),
            death_timeout=args.death_timeout, http_port=args.http_port,
            local_directory=args.local_directory,
            limits=_limits(args), http_max_body_bytes=args.http_max_body,
            memory_thresholds=MemoryThresholds(args.memory_target, args.memory_spill,
                                               args.memory_pause, args.memory_terminate),
            memory_stuck_timeout=args.memory_stuck_timeout, own_process=True,
            **_warm_imports(args),
        ).start()
        if args.announce:
            announce(address=worker.address, name=worker.name, pid=os.getpid())
        return worker

    async def stop(worker: Worker) -> None:
        await worker.close()

    _run_until_signal(start, stop)
    return 0


def _warm_imports(args: argparse.Namespace) -> dict[str, Any]:
    """``warm_imports=`` for the Worker, unless the flag was left to its default."""
    if args.warm_imports is None:
        return {}
    return {"warm_imports": [m.strip() for m in args.warm_imports.split(",") if m.strip()]}


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line of the worker process a nanny supervises."""
    argv = ["--log-level", args.log_level, "worker", args.address, "--no-nanny",
            "--nthreads", str(args.nthreads),
            "--memory-limit", str(args.memory_limit), "--port", str(args.port),
            "--death-timeout", str(args.death_timeout),
            "--memory-stuck-timeout", str(args.memory_stuck_timeout)]
    for flag, value in (("--name", args.name), ("--host", args.host),
                        ("--http-port", args.http_port),
                        ("--local-directory", args.local_directory),
                        ("--warm-imports", args.warm_imports)):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.resources:
        argv += ["--resources", item]
    for name in LIMIT_FLAGS:
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    for name in ("target", "spill", "pause", "terminate"):
        argv += [f"--memory-{name}", str(getattr(args, f"memory_{name}")).lower()]
    argv += _security(args).cli_args("worker")
    if args.announce:
        argv.append("--announce")
    return argv


def _default_host(scheduler_address: str) -> str:
    """Listen on loopback when the scheduler is local, on all interfaces otherwise."""
    local = ("127.0.0.1", "localhost", "[::1]")
    return "127.0.0.1" if any(f"//{h}:" in scheduler_address for h in local) else "0.0.0.0"


def _local(args: argparse.Namespace) -> int:
    from .cluster import LocalCluster

    security = _security(args)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                           security=security)
    print(f"shoal local cluster: scheduler at {cluster.scheduler_address}", flush=True)
    if cluster.dashboard_link:
        print(f"dashboard: {cluster.dashboard_link}", flush=True)
    stop = {"now": False}

    def on_signal(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop["now"]:
            signal.pause()
    finally:
        cluster.close()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import format_report, run_demo
    from .client import Client
    from .cluster import LocalCluster

    kwargs = {} if args.units is None else {"units": args.units}
    cluster = None
    if args.scheduler is None:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1)
    try:
        with Client(args.scheduler or cluster) as client:
            start = time.perf_counter()
            summary = run_demo(client, **kwargs)
            elapsed = time.perf_counter() - start
        print(format_report(summary, elapsed))
    finally:
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
