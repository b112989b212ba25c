"""Event-loop lag: how late the loop runs a callback it was asked to run on time.

The loop must do I/O only; anything that holds it (CPU work that slipped onto it, a
blocking call) delays every SMTP session at once. A sleep that should last `interval`
and lasts longer shows that delay, sampled `1 / interval` times a second.
"""
from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

SAMPLE_INTERVAL_SECONDS = 0.05


async def watch_loop_lag(histogram: Histogram, *, interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
    while True:
        started = time.monotonic()
        await asyncio.sleep(interval)
        histogram.observe(max(time.monotonic() - started - interval, 0.0))
