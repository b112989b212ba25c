"""Start-up benchmark: exec to READY=1 on a real NOTIFY_SOCKET, against bare Python in the same run.

    .venv/bin/python bench/startup.py [--runs N]

Rows, each over N runs, one after the other:
1. baseline: `python -c pass` (the interpreter alone);
2. baseline: `python -c "import ..."` of the daemon's modules (what importing costs);
3. emergencyd `run` on a fresh store (dry run, the shipped policy): exec to the READY=1
   datagram systemd would receive, then SIGTERM to exit.
4. the same on a store that already holds 1,000 messages (no migrations; recovery query);
5. dry_run = false (the Zendesk and PagerDuty clients are imported and built; nothing is called).
Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import percentile  # noqa: E402
from tests.harness import base_env, live_env, make_message, run_cli, write_config  # noqa: E402

IMPORTS = "import emergencyd.daemon.app, emergencyd.daemon.cli, emergencyd.escalation.zendesk, emergencyd.escalation.pagerduty"


def time_command(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(args, cwd=ROOT, check=True, env=base_env())
        times.append(time.perf_counter() - began)
    return times


def time_to_ready(config: Path, runs: int, workdir: Path, *, fresh_store: bool,
                  env: dict[str, str] | None = None) -> list[float]:
    times = []
    for index in range(runs):
        if fresh_store:   # its migrations are part of the start-up measured
            shutil.rmtree(config.parent / "var", ignore_errors=True)
        path = workdir / f"notify-{index}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(30)
            began = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "emergencyd.daemon.cli", "run", "--config", str(config)], cwd=ROOT,
                                    env={**(env or base_env()), "NOTIFY_SOCKET": str(path)}, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                while b"READY=1" not in sock.recv(4096):
                    pass
                times.append(time.perf_counter() - began)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    return times


def row(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"{name:52}{len(ms):>5}{percentile(ms, 50):>10.0f}{percentile(ms, 99):>10.0f}{ms[-1]:>10.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="emergencyd-startup-"))
    try:
        fresh = workdir / "fresh"
        fresh.mkdir()
        fresh_config = write_config(fresh, dry_run=True, policy=True)
        full = workdir / "full"
        full.mkdir()
        full_config = write_config(full, dry_run=True, policy=True)
        messages = full / "messages"
        messages.mkdir()
        for index in range(1000):
            (messages / f"{index}.eml").write_bytes(make_message(message_id=f"<startup-{index}@example.net>"))
        run_cli(full_config, "inject", *sorted(str(p) for p in messages.iterdir()))
        rows = [
            row("baseline: python -c pass", time_command([sys.executable, "-c", "pass"], args.runs)),
            row("baseline: python importing the daemon's modules", time_command([sys.executable, "-c", IMPORTS],
                                                                                 args.runs)),
        ]
        rows.append(row("emergencyd: exec to READY=1, fresh store",
                        time_to_ready(fresh_config, args.runs, fresh, fresh_store=True)))
        rows.append(row("emergencyd: exec to READY=1, 1,000 messages stored",
                        time_to_ready(full_config, args.runs, full, fresh_store=False)))
        live = workdir / "live"
        live.mkdir()
        # Credentials present, so the Zendesk and PagerDuty clients are built; nothing is called at start.
        live_config = write_config(live, dry_run=False, zendesk_url="https://127.0.0.1:9",
                                   pagerduty_url="https://127.0.0.1:9", policy=True)
        rows.append(row("emergencyd: exec to READY=1, dry_run = false",
                        time_to_ready(live_config, args.runs, live, fresh_store=True, env=live_env())))
        print(f"start-up, {args.runs} runs each (ms)")
        print(f"{'':52}{'runs':>5}{'p50':>10}{'p99':>10}{'max':>10}")
        print("\n".join(rows))
        print(f"machine: nproc={os.cpu_count()}  python {sys.version.split()[0]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
