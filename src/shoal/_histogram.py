"""Run-time histograms for Prometheus, counted on the hot path for next to nothing.

prometheus-client's ``Histogram.observe`` takes a lock per bucket increment
and per sum, a few microseconds for each finished task; at tens of
thousands of tasks a second that was a measurable share of the scheduler.
:class:`Durations` counts into plain lists instead (one ``bisect`` and two
additions per observation) and builds the histogram family only when
``/metrics`` is scraped.  It is meant for one thread, the server's event
loop, which both observes and serves the scrape.

The exposition is the one prometheus-client writes for a histogram (``_bucket``
with cumulative ``le`` labels, ``_sum``, ``_count``), without the ``_created``
series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["Durations"]


class Durations(Collector):
    """Observations in fixed buckets, per value of an optional label."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 label: str | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.buckets = tuple(sorted(buckets))
        self.label = label
        self._bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        self._counts: dict[str, list[int]] = {}  # per label value: one count per bucket
        self._sums: dict[str, float] = {}

    def observe(self, seconds: float, value: str = "") -> None:
        self.observe_many((seconds,), value)

    def observe_many(self, seconds: Iterable[float], value: str = "") -> None:
        counts = self._counts.get(value)
        if counts is None:
            counts = self._counts[value] = [0] * (len(self.buckets) + 1)
            self._sums[value] = 0.0
        buckets, total = self.buckets, 0.0
        for s in seconds:
            counts[bisect_left(buckets, s)] += 1  # the first bucket whose bound is >= s
            total += s
        self._sums[value] += total

    def count(self, value: str = "") -> int:
        return sum(self._counts.get(value, ()))

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=[self.label] if self.label else None)
        for value, counts in sorted(self._counts.items()):
            running, cumulative = 0, []
            for bound, n in zip(self._bounds, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            family.add_metric([value] if self.label else [], cumulative, self._sums[value])
        return family

    def collect(self) -> Iterator[Metric]:
        yield self.family()
