"""Policy reload benchmark: how long a reload holds the event loop while it swaps the worker processes.

    .venv/bin/python bench/policy_reload.py [--reloads 10] [--workers 2]

A CpuPool (escalation/cpu_pool.py) with the shipped policy and its workers started; each round
decides one mail, then swaps the policy (what SIGHUP does) while a ticker measures how late the
event loop runs a 1 ms timer. The baseline in the same run is the loop's lateness over a quiet
second with the workers idle. Last, close() (the daemon's end), which waits for its workers.
Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import percentile  # noqa: E402
from emergencyd.escalation.cpu_pool import ClassifyContext, CpuPool, Priority  # noqa: E402
from emergencyd.escalation.policy_config import parse_policy  # noqa: E402
from tests.harness import make_message  # noqa: E402

TICK_SECONDS = 0.001


class LateTimer:
    """How late the loop runs a TICK_SECONDS timer, each time, while it runs."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            self.late.append(time.perf_counter() - asked - TICK_SECONDS)

    async def stop(self) -> list[float]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.late


async def measure(reloads: int, workers: int) -> dict[str, float | None]:
    shipped = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
    context = ClassifyContext(parse_policy(shipped), own_addresses=("emergency@example.org",), own_hostnames=())
    pool = CpuPool(context, workers=workers, timeout_seconds=60)
    await pool.warm()
    mail = make_message(subject="URGENT: all our apps are down", body="Every app returns 502 since 02:10.")
    quiet = LateTimer()
    await asyncio.sleep(1.0)
    quiet_late = await quiet.stop()
    swap_seconds, swap_late = [], []
    for _ in range(reloads):
        await pool.parse(mail, Priority.DECIDE)
        timer = LateTimer()
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        pool.swap_policy(context)
        swap_seconds.append(time.perf_counter() - began)
        await asyncio.sleep(0.3)            # the old workers' teardown, if it happens off the loop
        swap_late.extend(await timer.stop())
        await pool.warm()
    began = time.perf_counter()
    pool.close()
    return {
        "quiet_late_max_ms": max(quiet_late) * 1000,
        "swap_call_p50_ms": (percentile(swap_seconds, 50) or 0) * 1000,
        "swap_call_max_ms": max(swap_seconds) * 1000,
        "reload_late_max_ms": max(swap_late) * 1000,
        "close_ms": (time.perf_counter() - began) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.reloads, args.workers))
    print(f"policy reload, {args.workers} workers, {args.reloads} reloads")
    print(f"  baseline: a quiet second, the loop's 1 ms timer late by at most {figures['quiet_late_max_ms']:.2f} ms")
    print(f"  swap_policy() on the loop: p50 {figures['swap_call_p50_ms']:.2f} ms, max {figures['swap_call_max_ms']:.2f} ms")
    print(f"  the loop's 1 ms timer around the reloads: late by at most {figures['reload_late_max_ms']:.2f} ms")
    print(f"  close() with {args.workers} workers: {figures['close_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
