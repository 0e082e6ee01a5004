"""Prometheus metrics: generate latency measured in this process, and job and queue figures
read from the catalog and the broker at scrape time (so every API replica reports the same)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.broker import queue_depths
from app.catalog.jobs import FINAL
from app.catalog.models import ErasureJob

logger = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
STAGE_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)

REGISTRY = CollectorRegistry()
GENERATE_SECONDS = Histogram(
    "mace_generate_seconds",
    "Time from sending a generation request to a worker to having its images (successes)",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)


class CatalogCollector:
    """Jobs by status, queue depths and stage durations, read when scraped."""

    def __init__(self, db: Session):
        self.db = db

    def collect(self):
        yield self._jobs()
        depths = self._queue_depths()
        if depths is not None:
            yield depths
        yield self._stage_durations()

    def _jobs(self) -> GaugeMetricFamily:
        counts = dict.fromkeys(JOB_STATUSES, 0)
        rows = self.db.execute(select(ErasureJob.status, func.count()).group_by(ErasureJob.status))
        counts.update({status: count for status, count in rows})
        gauge = GaugeMetricFamily("mace_jobs", "Erasure jobs by status", labels=["status"])
        for status, count in counts.items():
            gauge.add_metric([status], count)
        return gauge

    def _queue_depths(self) -> GaugeMetricFamily | None:
        try:
            depths = queue_depths()
        except Exception as exc:  # an unreachable broker must not break the whole scrape
            logger.warning("queue depths unavailable: %s", exc)
            return None
        if depths is None:
            return None
        gauge = GaugeMetricFamily(
            "mace_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        for queue, depth in depths.items():
            gauge.add_metric([queue], depth)
        return gauge

    def _stage_durations(self) -> HistogramMetricFamily:
        """Over finished jobs' `stage_timings` (seconds per stage, as the worker records them)."""
        observed: dict[str, list[float]] = {}
        timings = self.db.scalars(
            select(ErasureJob.stage_timings).where(ErasureJob.status.in_(FINAL))
        )
        for stage_timings in timings:
            for stage, seconds in (stage_timings or {}).items():
                if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                    observed.setdefault(stage, []).append(float(seconds))
        family = HistogramMetricFamily(
            "mace_stage_duration_seconds", "Duration of erasure stages", labels=["stage"]
        )
        for stage, values in sorted(observed.items()):
            buckets = [(f"{b:g}", sum(v <= b for v in values)) for b in STAGE_BUCKETS]
            buckets.append(("+Inf", len(values)))
            family.add_metric([stage], buckets, sum_value=sum(values))
        return family


def catalog_registry(db: Session) -> CollectorRegistry:
    """A registry for one scrape, reading the catalog through `db`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatalogCollector(db))
    return registry
