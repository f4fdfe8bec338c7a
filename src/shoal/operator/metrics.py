"""The operator's own Prometheus metrics (``shoal_operator_*``) and knobs.

Counters are incremented by the handlers; the clusters-by-phase gauge reads
the live registry of clusters at scrape time, so it can never drift from
what the operator believes. :class:`OperatorConfig` gathers the timing knobs
(reconcile interval, autoscaling window) so tests can shorten them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
PHASES = ("Pending", "Running", "Failed")


@dataclass
class OperatorConfig:
    """Timing knobs; each can be set by an environment variable of the same name."""

    reconcile_interval: float = 5.0  # SHOAL_OPERATOR_RECONCILE_INTERVAL
    scale_down_window: float = 60.0  # SHOAL_OPERATOR_SCALE_DOWN_WINDOW
    error_delay: float = 5.0  # SHOAL_OPERATOR_ERROR_DELAY

    @classmethod
    def from_environment(cls) -> OperatorConfig:
        config = cls()
        for name in ("reconcile_interval", "scale_down_window", "error_delay"):
            value = os.environ.get(f"SHOAL_OPERATOR_{name.upper()}")
            if value:
                setattr(config, name, float(value))
        return config


config = OperatorConfig.from_environment()

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("shoal_operator_reconciles", "Handler runs, by handler.",
                     ["handler"], registry=REGISTRY)
ERRORS = Counter("shoal_operator_errors", "Handler runs that failed, by handler and kind.",
                 ["handler", "kind"], registry=REGISTRY)
SCALING = Counter("shoal_operator_scaling_actions",
                  "Workers created or removed, by action (create, retire, replace, rollout).",
                  ["action"], registry=REGISTRY)


class PhaseCollector(Collector):
    """``shoal_operator_clusters{phase}``: ShoalClusters by phase, read at scrape time."""

    def __init__(self, phases: Callable[[], Iterable[str]]) -> None:
        self._phases = phases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("shoal_operator_clusters", "ShoalClusters by phase.",
                                   labels=["phase"])
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._phases():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in sorted(counts.items()):
            family.add_metric([phase], count)
        yield family


_collector: PhaseCollector | None = None


def watch_phases(phases: Callable[[], Iterable[str]]) -> None:
    """Register the clusters-by-phase gauge (once)."""
    global _collector
    if _collector is None:
        _collector = PhaseCollector(phases)
        REGISTRY.register(_collector)


def serve(port: int, host: str = "0.0.0.0") -> Callable[[], None]:
    """Serve ``/metrics`` on ``port`` in a background thread; answers the stop function."""
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
