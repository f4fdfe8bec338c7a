"""``shoal operator``: run the kopf operator (``main(argv) -> exit code``).

Ports: Prometheus metrics on ``--metrics-port`` (default 8080, path
``/metrics``); kopf's liveness endpoint on ``--health-port`` (default 8081,
path ``/healthz``). Pass 0 to disable either.

Only one operator may act on a cluster at a time. The default is
``--standalone`` with a single replica (Deployment strategy Recreate);
``--peering NAME`` enables kopf peering instead (it needs kopf's
KopfPeering/ClusterKopfPeering CRDs), and then extra replicas wait as
hot standbys.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

from shoal.operator.metrics import DEFAULT_HEALTH_PORT, DEFAULT_METRICS_PORT

QUIET_LOGGERS = ("kopf.objects", "aiohttp.access")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal operator",
        description="Run the shoal Kubernetes operator (ShoalCluster, ShoalJob).")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (needs the ClusterRole)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help="Prometheus /metrics port (0: off; default %(default)s)")
    parser.add_argument("--health-port", type=int, default=DEFAULT_HEALTH_PORT,
                        help="liveness /healthz port (0: off; default %(default)s)")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME",
                         help="coordinate replicas through the kopf peering object NAME")
    peering.add_argument("--standalone", action="store_true",
                         help="no peering: run exactly one replica (the default)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def operator_settings(peering: str | None) -> Any:
    import kopf

    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shoal.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="shoal.dev", key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # k8s Events for warnings and errors only
    settings.watching.server_timeout = 300
    if peering is not None:
        settings.peering.name = peering
        settings.peering.standalone = False
    else:
        settings.peering.standalone = True
    return settings


async def run_operator(args: argparse.Namespace, *, stop_flag: Any = None,
                       ready_flag: Any = None, registry: Any = None,
                       configure: Callable[[Any], None] | None = None) -> None:
    """Run until ``stop_flag`` is set (or forever); handlers are registered on import.

    ``configure`` may adjust the kopf settings before the operator starts.
    """
    import kopf

    from shoal.operator import handlers, jobs, metrics  # noqa: F401 - registers the handlers

    settings = operator_settings(args.peering)
    if configure is not None:
        configure(settings)
    stop_metrics = metrics.serve(args.metrics_port) if args.metrics_port else None
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=args.peering is None,
            peering_name=args.peering,
            clusterwide=bool(args.all_namespaces),
            namespaces=args.namespace or (),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if stop_metrics is not None:
            await asyncio.to_thread(stop_metrics)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        build_parser().error("give --namespace NS (repeatable) or --all-namespaces")
    try:
        import kopf
    except ImportError:
        print("shoal operator needs the kubernetes extra: pip install 'shoal[kubernetes]'",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # One line per handler run and per probe would drown the operator's own lines.
        for chatty in QUIET_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        asyncio.run(run_operator(args))
    except kopf.LoginError as exc:
        print(f"shoal operator: no usable Kubernetes credentials (in-cluster service account "
              f"or kubeconfig): {exc}", file=sys.stderr)
        return 1
    return 0
