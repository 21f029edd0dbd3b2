"""A client calling a stable URL at a steady rate, recording every answer and the endpoint's status."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from inference_endpoints.persistence.registry import Registry


@dataclass
class Sample:
    at: float  # monotonic
    outcome: str  # "200", "503", or the exception's name
    status: str  # the endpoint's registry status when the answer came


@dataclass
class ClientLoop:
    """`rate` completions per second through `url` (the stable URL), until stopped."""

    url: str
    key: str
    model: str
    registry: Registry
    endpoint_id: str
    rate: float = 2.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ClientLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        # Generous: these loops count errors, not latency (a 2-core host loading a second
        # engine can hold a 2-token completion for tens of seconds).
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v1/completions",
                                    headers={"Authorization": f"Bearer {self.key}"},
                                    json={"model": self.model, "prompt": "Hello", "max_tokens": 2})
                    outcome = str(r.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                ep = self.registry.get_endpoint(self.endpoint_id)
                self.samples.append(Sample(time.monotonic(), outcome, ep.status if ep else "gone"))
                self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if since <= s.at <= until and s.outcome != "200"]

    def count(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(1 for s in self.samples if since <= s.at <= until)
