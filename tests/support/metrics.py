"""Reading the admin port as Prometheus and a load balancer would: plain HTTP, parsed text."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: str


def get(port: int, path: str, method: str = "GET", timeout: float = 10) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode("utf-8")
        return Answer(response.status, response.getheader("Content-Type") or "", body)
    finally:
        conn.close()


class Samples:
    """Every sample of one scrape: value by (name, labels); all label values listed."""

    def __init__(self, text: str) -> None:
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; a series never written counts as 0."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def label_values(self) -> set[str]:
        return {value for _, labels in self.values for _, value in labels}

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


def scrape(port: int) -> Samples:
    answer = get(port, "/metrics")
    assert answer.status == 200, answer
    return Samples(answer.body)


def scrape_until(port: int, ready: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """Scrape until `ready` holds (events of sessions that just ended may still be on
    their way); the last scrape either way, so the assertions show what was there."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ready(samples) or time.monotonic() >= deadline:
            return samples
        time.sleep(0.05)
