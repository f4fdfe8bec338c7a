"""Helpers shared by the observability tests: HTTP calls, metric parsing, waiting.

Tasks in these tests use standard-library functions (``time.sleep``,
``bytes``, ``len``) so that worker processes can import them by reference.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HTTP_TIMEOUT = 10.0


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def http(url: str, method: str = "GET", body: bytes | None = None) -> Response:
    """One HTTP request; 4xx and 5xx answers are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as answer:
            return Response(answer.status, answer.headers.get("Content-Type", ""), answer.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers.get("Content-Type", ""), exc.read())


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET url`` and parse the exposition: ``{(sample name, labels): value}``."""
    answer = http(url)
    assert answer.status == 200, answer.text
    assert answer.content_type.startswith("text/plain"), answer.content_type
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not exposed; have {sorted(k[0] for k in samples)}"
    return samples[key]


