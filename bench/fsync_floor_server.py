"""The floor for SMTP ingest: the least a durable SMTP server can do per message.

    python bench/fsync_floor_server.py DIRECTORY

A bare aiosmtpd SMTP protocol on the event loop (loop.create_server, as emergencyd
does, not the threaded Controller). Its handle_DATA writes each message to a file
of its own in DIRECTORY, flushes and fsync()s the file and fsync()s the directory
(so the new name is durable too), in a worker thread (asyncio.to_thread), and only
then answers 250. No parsing, no database, no escalation: anything that accepts
mail durably must do at least this much, so emergencyd cannot beat it.

Prints "ready PORT" on stdout once listening on 127.0.0.1 (port chosen by the OS).
Stops on SIGTERM/SIGINT, or when its stdin reaches end of file (so a parent that
dies, even by SIGKILL, does not leave it behind when it holds our stdin's pipe).
On the way out prints "stored N".
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP


class FsyncHandler:
    def __init__(self, directory: Path):
        self.directory = directory
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._numbers = itertools.count(1)
        self.stored = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        number = next(self._numbers)
        try:
            await asyncio.to_thread(self.write, number, raw)
        except OSError as exc:
            return f"451 4.3.0 Could not store the message: {exc.strerror}"
        self.stored += 1
        return f"250 2.0.0 OK: queued as {number}"

    def write(self, number: int, raw: bytes) -> None:
        """The message in a file of its own, fsynced, and its name too."""
        path = self.directory / f"{number:08d}.eml"
        with open(path, "xb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.fsync(self._dir_fd)   # the directory entry: without it the file may vanish on power loss

    def close(self) -> None:
        os.close(self._dir_fd)


async def serve(directory: Path) -> int:
    loop = asyncio.get_running_loop()
    handler = FsyncHandler(directory)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def factory() -> SMTP:
        return SMTP(handler, decode_data=False, hostname="floor.localhost", ident="fsync floor ESMTP",
                    data_size_limit=200000)

    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]

    # End of stdin (the parent went away) stops us too.
    watcher = loop.run_in_executor(None, sys.stdin.buffer.read)
    watcher.add_done_callback(lambda _: stop.set())

    print(f"ready {port}", flush=True)
    await stop.wait()
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 2)
    except asyncio.TimeoutError:
        pass
    handler.close()
    try:
        print(f"stored {handler.stored}", flush=True)
    except OSError:   # the parent (and its end of the pipe) is gone
        pass
    os._exit(0)   # do not wait for the stdin reader thread


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: fsync_floor_server.py DIRECTORY")
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(directory))


if __name__ == "__main__":
    main()
