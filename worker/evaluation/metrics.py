"""The metrics by name, and building them from `[{"name": ..., "config": {...}}]`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from worker.erasure.errors import ErasureInputError

from .clip_accuracy import ClipAccuracyMetric
from .clip_score import ClipScoreMetric
from .fid import FidMetric
from .image_grid import ImageGridMetric
from .metric_base import MetricContext
from .nudenet import NudeNetMetric
from .ua_ira import UaIraMetric

METRICS = {
    metric.name: metric
    for metric in (
        NudeNetMetric,
        ClipScoreMetric,
        ClipAccuracyMetric,
        FidMetric,
        UaIraMetric,
        ImageGridMetric,
    )
}


def build_metrics(specs: Sequence[Mapping], context: MetricContext) -> list[tuple[dict, object]]:
    """(spec, metric) pairs; raises `ErasureInputError` on an unknown name or a bad config."""
    if not specs:
        raise ErasureInputError(f"give at least one metric ({', '.join(METRICS)})")
    built = []
    for spec in specs:
        name = spec.get("name") if isinstance(spec, Mapping) else None
        if name not in METRICS:
            raise ErasureInputError(
                f"unknown metric {name!r}; use one of {', '.join(sorted(METRICS))}"
            )
        config = dict(spec.get("config") or {})
        built.append(({"name": name, "config": config}, METRICS[name](config, context)))
    return built
