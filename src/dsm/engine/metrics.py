"""Prometheus metrics with upstream's names (server-protocol.md §6) plus latency histograms.

Upstream's counters carry no ``_total`` suffix and counters and gauges have the constant label
``handler="all"``; this registry exposes them the same way so existing dashboards (Unmute's
Grafana board) work unchanged. Each server has its own registry, so several servers can run in
one process (tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ASR_STEP_BUCKETS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08)
_ASR_CONN_STEPS_BUCKETS = (2, 25, 125, 250, 500, 750, 1125, 1500, 2250, 3000, 4500)
_PY_STEP_BUCKETS = (0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.08)
_PY_CONN_STEPS_BUCKETS = (2, 25, 62.5, 125, 250, 500, 750)
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)

_COUNTERS = {
    "asr_connect": "STT WebSocket connections",
    "py_connect": "TTS WebSocket connections",
    "py_total_steps": "TTS model step calls",
    "py_active_steps": "TTS step calls in which some AR step ran",
    "dsm_rejected_no_free_channels": "connections refused because every slot was busy",
    "dsm_protocol_errors": "connections closed for an invalid message",
    "dsm_timeouts": "connections that lost their slot for inactivity",
    "dsm_slow_clients": "connections dropped because they did not read their results",
    "dsm_unknown_voices": "TTS sessions that asked for an unknown voice and got the default one",
    "dsm_http_transcriptions": "POST /v1/audio/transcriptions requests served",
    "dsm_wyoming_connections": "Wyoming protocol connections",
}


class _Collector:
    """Counters and gauges read at scrape time, named exactly as upstream."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, doc in _COUNTERS.items():
            metric = Metric(name, doc, "counter")
            metric.add_sample(name, {"handler": "all"}, float(self.metrics.counters[name]))
            yield metric
        for name, (doc, read) in self.metrics.gauges.items():
            metric = Metric(name, doc, "gauge")
            metric.add_sample(name, {"handler": "all"}, float(read()))
            yield metric


class ServerMetrics:
    """All metrics of one server (thread-safe increments)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.asr_step = self._histogram(
            "asr_model_step_duration", "batched STT step time (s)", _ASR_STEP_BUCKETS
        )
        self.asr_connection_steps = self._histogram(
            "asr_connection_num_steps", "frames processed per STT connection",
            _ASR_CONN_STEPS_BUCKETS,
        )  # fmt: skip
        self.asr_frame_latency = self._histogram(
            "dsm_asr_frame_latency_seconds",
            "time from an audio frame's arrival to the delivery of its step's results",
            _LATENCY_BUCKETS,
        )
        self.py_step = self._histogram(
            "py_model_step_duration", "TTS step time (s)", _PY_STEP_BUCKETS
        )
        self.py_connection_steps = self._histogram(
            "py_model_connection_num_steps", "AR steps per TTS connection", _PY_CONN_STEPS_BUCKETS
        )
        self.tts_first_audio = self._histogram(
            "dsm_tts_first_audio_seconds", "time from the first text to the first audio frame",
            _LATENCY_BUCKETS,
        )  # fmt: skip
        self.http_duration = Histogram(
            "dsm_http_request_duration_seconds",
            "HTTP API request duration (s)",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=self.registry)

    @staticmethod
    def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
        """``histogram.observe(v)`` for each of ``values``, as one update per bucket (the model
        thread records a latency per frame of a step of up to thousands of frames)."""
        if len(values) == 0:
            return
        try:
            bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
        except AttributeError:  # another prometheus_client: one at a time
            for value in values:
                histogram.observe(value)
            return
        array = np.asarray(values, dtype=np.float64)
        # Bucket i holds the values in (bounds[i-1], bounds[i]] (the last bound is +Inf).
        counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
        for i in np.flatnonzero(counts).tolist():
            buckets[i].inc(int(counts[i]))
        total.inc(float(array.sum()))

    def inc(self, name: str, amount: int = 1) -> None:
        """Increase a counter (one of the names in ``_COUNTERS``)."""
        with self._lock:
            self.counters[name] += amount

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose ``read()`` as gauge ``name`` at every scrape."""
        self.gauges[name] = (doc, read)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
