"""Quantiles of a Prometheus histogram read from the daemon's /metrics, as histogram_quantile does.

A histogram's buckets are cumulative since the daemon started; the difference of two
readings is the distribution between them (a burst, say). Within a bucket the quantile is
interpolated linearly, as Prometheus does; above the last finite bound it is that bound.
"""
from __future__ import annotations

import math
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Buckets = dict[float, float]   # upper bound (math.inf for +Inf) -> cumulative count


def read_histogram(metrics_port: int, name: str) -> Buckets | None:
    """The buckets of histogram `name` (no labels) from /metrics, or None when it is not there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    buckets: Buckets = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return buckets or None


def between(before: Buckets | None, after: Buckets | None) -> Buckets | None:
    """The observations made between two readings of the same histogram."""
    if after is None:
        return None
    before = before or {}
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def quantile(buckets: Buckets | None, q: float) -> float | None:
    """histogram_quantile(q, buckets): None without observations."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower   # past the last finite bound: Prometheus answers that bound
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def highest_bucket(buckets: Buckets | None) -> str | None:
    """The largest observation as a histogram tells it: "<= bound" of the highest non-empty bucket."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    previous = 0.0
    highest = None
    for bound in bounds:
        if buckets[bound] > previous:
            highest = bound
        previous = buckets[bound]
    if highest is None:
        return None
    finite = [b for b in bounds if not math.isinf(b)]
    return f"> {finite[-1]:g} s" if math.isinf(highest) else f"<= {highest * 1000:g} ms"


def summary(buckets: Buckets | None) -> dict:
    """Observations, p50, p99 (seconds) and the max's bucket of one window."""
    count = buckets[max(buckets)] if buckets else 0
    return {"observations": int(count), "p50_s": quantile(buckets, 0.50), "p99_s": quantile(buckets, 0.99),
            "max": highest_bucket(buckets)}


def describe(figures: dict | None) -> str:
    """One line of a report: "n/a" when the daemon has no such metric."""
    if not figures or figures.get("observations", 0) == 0:
        return "n/a (no such histogram in /metrics, or no observation)"
    ms = lambda s: "-" if s is None else f"{s * 1000:.1f} ms"  # noqa: E731
    return (f"p50 {ms(figures['p50_s'])}, p99 {ms(figures['p99_s'])}, max {figures['max']} "
            f"({figures['observations']} samples)")
