"""A mail's commit: the store's ingest against a bare SQLite insert and a file with fsyncs, same run.

    .venv/bin/python bench/ingest_commit.py [--mails N] [--body-kb KB] [--tmpdir DIR] [--json FILE]

The 250 of a one-session SMTP client waits for this commit, on the ingest thread. Three ways to make a
6 KB mail durable, one mail at a time, each in a fresh directory of --tmpdir (use the disk you mean to
measure, not a tmpfs), taking turns mail by mail so that the disk's moods fall on all three alike:
1. the store: Store.ingest_batch() of one mail (SHA-256, the header read, two INSERTs, one WAL fsync);
2. bare SQLite: one INSERT of the bytes into a one-column table, WAL, synchronous=FULL, the same fsync;
3. a file: written, fsynced, and its directory fsynced (bench/fsync_floor_server.py's own write).
Also counted: the pages each commit of the store writes to its WAL, over the first mails (without a
checkpoint in between). Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fsync_floor_server import FsyncHandler  # noqa: E402
from bench.ingest_mail import mail_for  # noqa: E402
from bench.smtp_ingest import percentile  # noqa: E402
from emergencyd.daemon.store.sqlite import open_sqlite  # noqa: E402
from tests.harness import smtp_envelope as envelope  # noqa: E402

WARM_UP = 300
PAGES_COUNTED = 60
WAL_FRAME_HEADER = 24


def store_commit(directory: Path) -> tuple[Callable[[bytes], None], list[float]]:
    store = open_sqlite(directory / "store.sqlite3", busy_timeout_ms=5000)
    pages = wal_pages_per_commit(store, directory / "store.sqlite3-wal")
    return (lambda raw: store.ingest_batch([(raw, envelope())])), pages


def wal_pages_per_commit(store, wal: Path) -> list[float]:
    """Pages the next PAGES_COUNTED commits write to the WAL, with checkpoints held off meanwhile."""
    raw = store._conn._raw
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.execute("PRAGMA wal_autocheckpoint = 0")
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = []
    for index in range(PAGES_COUNTED):
        before = wal.stat().st_size if wal.exists() else 0
        store.ingest_batch([(mail_for("pages", index, body_kb=6, senders="many")[1], envelope())])
        pages.append((wal.stat().st_size - max(before, 32)) / (page_size + WAL_FRAME_HEADER))
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.execute("PRAGMA wal_autocheckpoint = 1000")     # SQLite's default, as the daemon runs
    return pages


def bare_sqlite(directory: Path) -> Callable[[bytes], None]:
    conn = sqlite3.connect(directory / "bare.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE mail (id INTEGER PRIMARY KEY, raw BLOB NOT NULL)")

    def commit(raw: bytes) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO mail (raw) VALUES (?)", (raw,))
        conn.execute("COMMIT")
    return commit


def file_with_fsyncs(directory: Path) -> Callable[[bytes], None]:
    spool = directory / "spool"
    spool.mkdir()
    floor, numbers = FsyncHandler(spool), itertools.count(1)
    return lambda raw: floor.write(next(numbers), raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000, help="mails timed for each (2000)")
    parser.add_argument("--body-kb", type=float, default=6, help="pad each mail to about KB KB (6)")
    parser.add_argument("--tmpdir", default=None, help="where the stores go (default: the system's temp dir)")
    parser.add_argument("--json", help="also write the figures as JSON")
    args = parser.parse_args()
    mails = [mail_for("commit", index, body_kb=args.body_kb, senders="many")[1]
             for index in range(WARM_UP + args.mails)]
    with tempfile.TemporaryDirectory(prefix="ingest-commit-", dir=args.tmpdir) as top:
        dirs = {name: Path(top) / name for name in ("store", "bare", "file")}
        for directory in dirs.values():
            directory.mkdir()
        store, pages = store_commit(dirs["store"])
        ways = {"store: Store.ingest_batch, one mail": store, "bare SQLite: one INSERT": bare_sqlite(dirs["bare"]),
                "file: write, fsync, fsync of its directory": file_with_fsyncs(dirs["file"])}
        times: dict[str, list[float]] = {name: [] for name in ways}
        for index, raw in enumerate(mails):
            for name, commit in ways.items():
                started = time.perf_counter()
                commit(raw)
                if index >= WARM_UP:
                    times[name].append(time.perf_counter() - started)
    rows = {name: {"p50_ms": percentile(t, 50) * 1e3, "p90_ms": percentile(t, 90) * 1e3,
                   "p99_ms": percentile(t, 99) * 1e3} for name, t in times.items()}
    print(f"{args.mails} mails of {len(mails[-1])} bytes, one at a time, after {WARM_UP} untimed; turns taken mail by mail")
    print(f"{'':44}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, row in rows.items():
        print(f"{name:44}{row['p50_ms']:9.3f}{row['p90_ms']:9.3f}{row['p99_ms']:9.3f}")
    pages.sort()
    print(f"the store's WAL pages per commit: median {pages[len(pages) // 2]:.0f} (min {pages[0]:.0f}, "
          f"max {pages[-1]:.0f}) over {len(pages)} commits")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wal_pages": pages}, indent=2))


if __name__ == "__main__":
    main()
