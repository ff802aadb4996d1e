"""Prometheus metrics: requests and latency by endpoint, plus pipeline figures from Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import keys
from shared.records import TaskState


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "lookalike_http_requests", "HTTP requests", ["endpoint", "method", "status"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "lookalike_http_request_seconds", "HTTP request latency", ["endpoint"],
            registry=registry,
        )  # fmt: skip


def install_metrics(app: Flask, services: Any) -> RequestMetrics:
    metrics = RequestMetrics(CollectorRegistry())
    metrics.registry.register(PipelineCollector(services))

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Any) -> Any:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(endpoint).observe(time.perf_counter() - g.started)
        return response

    return metrics


class PipelineCollector(Collector):
    """Read at scrape time: tasks by state, queue depth, index size, embedding throughput."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Iterator[Any]:
        client = self.services.redis
        stats = {k.decode(): float(v) for k, v in client.hgetall(keys.STATS).items()}
        tasks = CounterMetricFamily("lookalike_tasks", "Task state transitions", labels=["state"])
        for state in TaskState:
            tasks.add_metric([state], stats.get(f"tasks_{state}", 0.0))
        yield tasks
        yield GaugeMetricFamily(
            "lookalike_queue_depth", "Messages waiting in the embed queue",
            self.services.queue_depth(),
        )  # fmt: skip
        used, maxmemory = self.services.redis_memory()
        yield GaugeMetricFamily("lookalike_redis_used_memory_bytes", "Redis' used_memory", used)
        yield GaugeMetricFamily(
            "lookalike_redis_maxmemory_bytes", "Redis' maxmemory (0: no limit)", maxmemory
        )
        yield GaugeMetricFamily(
            "lookalike_index_items", "Items in this process's index replica",
            len(self.services.replica.catalog),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lookalike_replica_items_since_snapshot",
            "Items changed since this process's snapshot: its exact tail and small graph",
            self.services.replica.catalog.overlay_items,
        )
        yield GaugeMetricFamily(
            "lookalike_replica_waiting_for_snapshot",
            "1 while this process's full exact tail waits for the writer's next snapshot",
            float(self.services.replica.waiting),
        )
        yield from self._journal(client)
        yield CounterMetricFamily(
            "lookalike_forward_passes", "Model forward passes", stats.get("forward_passes", 0.0)
        )
        yield CounterMetricFamily(
            "lookalike_model_seconds", "Seconds the embed workers' models spent in forward passes",
            stats.get("model_seconds", 0.0),
        )  # fmt: skip
        images, seconds = stats.get("images_embedded", 0.0), stats.get("embed_seconds", 0.0)
        yield CounterMetricFamily("lookalike_images_embedded", "Images embedded", images)
        yield GaugeMetricFamily(
            "lookalike_embed_images_per_second", "Images per second of embedding time",
            images / seconds if seconds else 0.0,
        )  # fmt: skip
        batches = GaugeMetricFamily(
            "lookalike_embed_batches", "Forward passes by batch size", labels=["size"]
        )
        for size, count in sorted(client.hgetall(keys.BATCH_SIZES).items()):
            batches.add_metric([size.decode()], float(count))
        yield batches

    def _journal(self, client: Any) -> Iterator[Any]:
        """Journal length, and how far the writer and this replica are behind it."""
        yield GaugeMetricFamily(
            "lookalike_journal_entries",
            "Entries in the index journal",
            client.xlen(self.services.replica.gen.journal),
        )
        lags = self.services.lags()
        for name in ("writer", "replica"):
            who = "the writer" if name == "writer" else "this replica"
            yield GaugeMetricFamily(
                f"lookalike_{name}_lag_seconds", f"Age of the oldest entry {who} has not applied",
                lags[name]["seconds"],
            )  # fmt: skip
            if lags[name]["entries"] is not None:
                yield GaugeMetricFamily(
                    f"lookalike_{name}_lag_entries", f"Journal entries {who} has not applied",
                    lags[name]["entries"],
                )  # fmt: skip
        yield GaugeMetricFamily(
            "lookalike_indexed_products", "Products Redis says are indexed (compare index_items)",
            client.scard(self.services.replica.gen.indexed),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "lookalike_lost_products", "Products whose vectors were lost, not re-imported yet",
            client.scard(self.services.replica.gen.lost),
        )  # fmt: skip
