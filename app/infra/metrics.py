"""Prometheus metrics of the API and the workers (`MTL_METRICS_ENABLED`).

`mtl serve` runs the API and a worker in two processes, and the distributed setup runs several
of each, so every process writes its values to files in one folder (prometheus_client's
multiprocess mode): `PROMETHEUS_MULTIPROC_DIR` when set, else `MTL_DATA_DIR/metrics`. The API's
`/metrics` adds them all up, so a worker's training durations show there too. Each process's
files are named after its host and pid, so workers on several machines sharing the data
directory do not write to the same file.

Until `setup` has run with metrics enabled, every function here does nothing, and
prometheus_client is not even imported.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from app.infra.settings import Settings

_lock = threading.Lock()
_metrics: _Metrics | None = None

# Seconds; a small request takes milliseconds, a training job minutes to days.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_JOB_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.request_seconds = Histogram(
            "mtl_http_request_duration_seconds",
            "HTTP requests by method, route template and status code, and their latency",
            ["method", "route", "code"],
            buckets=_REQUEST_BUCKETS,
        )
        self.predict_batch = Histogram(
            "mtl_predict_batch_images",
            "images in one forward pass of predict (micro-batched requests together)",
            buckets=_BATCH_BUCKETS,
        )
        self.predict_cache = Counter(
            "mtl_predict_cache_requests",
            "predict requests whose classifier was already loaded (hit) or had to be (miss)",
            ["result"],
        )
        # Each API process has its own cache: the gauges add up the live processes' caches.
        self.cache_bytes = Gauge(
            "mtl_predict_cache_bytes",
            "bytes of classifier tensors loaded in the predict caches (MTL_PREDICT_CACHE_BYTES "
            "bounds each API process's)",
            multiprocess_mode="livesum",
        )
        self.cache_classifiers = Gauge(
            "mtl_predict_cache_classifiers",
            "classifiers loaded in the predict caches (MTL_PREDICT_CACHE_SIZE bounds each API "
            "process's)",
            multiprocess_mode="livesum",
        )
        self.cache_evictions = Counter(
            "mtl_predict_cache_evictions",
            "classifiers dropped from a predict cache to keep it within its bounds",
        )
        self.jobs_created = Counter(
            "mtl_jobs_created", "jobs created, by kind", ["kind"]
        )
        self.jobs_finished = Counter(
            "mtl_jobs_finished",
            "job attempts that ended, by kind and status (succeeded, failed, cancelled, lost)",
            ["kind", "status"],
        )
        self.queue_wait = Histogram(
            "mtl_job_queue_wait_seconds",
            "from a job's creation to a worker claiming it, by kind",
            ["kind"],
            buckets=_JOB_BUCKETS,
        )
        self.run_seconds = Histogram(
            "mtl_job_run_seconds",
            "how long one attempt of a job ran in its worker, by kind and outcome",
            ["kind", "status"],
            buckets=_JOB_BUCKETS,
        )


def setup(settings: Settings) -> None:
    """Turn metrics on in this process when the settings ask for it (once per process: the
    folder cannot change after the first value is written)."""
    global _metrics
    if not settings.metrics_enabled:
        return
    with _lock:
        if _metrics is not None:
            return
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(settings.metrics_dir)
        os.makedirs(folder, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        from prometheus_client import values

        host = socket.gethostname()
        values.ValueClass = values.MultiProcessValue(lambda: f"{host}-{os.getpid()}")
        _metrics = _Metrics()


def enabled() -> bool:
    return _metrics is not None


def _record(action: Callable[[_Metrics], Any]) -> None:
    if _metrics is not None:
        action(_metrics)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    _record(lambda m: m.request_seconds.labels(method, route, str(status)).observe(seconds))


def observe_predict_batch(images: int) -> None:
    _record(lambda m: m.predict_batch.observe(images))


def count_predict_cache(hit: bool) -> None:
    _record(lambda m: m.predict_cache.labels("hit" if hit else "miss").inc())


def observe_predict_cache(nbytes: int, classifiers: int, evicted: int) -> None:
    """A predict cache's size after a load or an eviction, and how many it just evicted."""
    def record(m: _Metrics) -> None:
        m.cache_bytes.set(nbytes)
        m.cache_classifiers.set(classifiers)
        if evicted:
            m.cache_evictions.inc(evicted)

    _record(record)


def count_job_created(kind: str) -> None:
    _record(lambda m: m.jobs_created.labels(kind).inc())


def observe_queue_wait(kind: str, seconds: float) -> None:
    _record(lambda m: m.queue_wait.labels(kind).observe(max(0.0, seconds)))


def observe_job_run(kind: str, status: str, seconds: float) -> None:
    def record(m: _Metrics) -> None:
        m.run_seconds.labels(kind, status).observe(seconds)
        m.jobs_finished.labels(kind, status).inc()

    _record(record)


def exposition(job_counts: dict[tuple[str, str], int]) -> tuple[bytes, str]:
    """The text a scraper reads: every process's metrics added up, and `mtl_jobs`, the jobs in
    the database by kind and status right now (`job_counts`)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector

    class JobCounts:
        def collect(self) -> Any:
            gauge = GaugeMetricFamily(
                "mtl_jobs", "jobs in the database by kind and status", labels=["kind", "status"]
            )
            for (kind, status), count in sorted(job_counts.items()):
                gauge.add_metric([kind, status], count)
            yield gauge

    class BuildInfo:
        def collect(self) -> Any:
            import platform

            from models.config import code_version

            info = GaugeMetricFamily("mtl_build_info", "the running service's version (always 1)",
                                     labels=["version", "python"])
            info.add_metric([code_version(), platform.python_version()], 1)
            yield info

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(JobCounts())  # type: ignore[arg-type]
    registry.register(BuildInfo())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
