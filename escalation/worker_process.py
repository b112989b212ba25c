"""One worker process, spoken to by the event loop itself over two pipes: no threads in between.

A job is a pickled (function, args, kwargs), sent as one length-prefixed frame on the worker's
stdin; the answer comes back the same way on a pipe of its own: (True, result) or (False, the
exception). The loop reads that pipe with a protocol callback, so a job costs the daemon's
process a pickle, one write and a read or two: nothing wakes a thread that would then take the GIL
from SMTP intake.

Why not a library: pebble and multiprocessing's pools hand every job through threads of the
daemon's own process (a feeder, a result handler); aiomultiprocess and aioprocessing sit on
multiprocessing's queues and threads as well. Measured with one SMTP session and every mail a new
tenant's, those threads cost each next mail's DATA about 0.3 ms (bench/README.md).

The worker ignores SIGINT and SIGTERM: the daemon stops it (end of its stdin), after the
drain at shutdown, which may still need it. A worker left running by a daemon killed with
SIGKILL sees the end of its stdin after its job and exits.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
from typing import Any, BinaryIO, Callable

FRAME_HEADER_BYTES = 8
COMMAND = (sys.executable, "-m", "emergencyd.escalation.worker_process")
READY = b"ready"


class WorkerCannotStart(RuntimeError):
    """The process could not be started, or exited before it was ready."""


class WorkerDied(RuntimeError):
    """The process ended in the middle of a job."""


class WorkerTimedOut(RuntimeError):
    """A job took longer than its timeout; the process was killed."""


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload


class _Replies(asyncio.Protocol):
    """The worker's answers, frame by frame, as the loop reads them."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._hand_over()

    def next(self) -> asyncio.Future[bytes]:
        self._waiter = asyncio.get_running_loop().create_future()
        self._hand_over()
        return self._waiter

    def _hand_over(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if len(self._buffer) >= FRAME_HEADER_BYTES:
            end = FRAME_HEADER_BYTES + int.from_bytes(self._buffer[:FRAME_HEADER_BYTES], "big")
            if len(self._buffer) >= end:
                waiter.set_result(bytes(self._buffer[FRAME_HEADER_BYTES:end]))
                del self._buffer[:end]
                return
        if self._ended:
            waiter.set_exception(EOFError())


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, replies: _Replies, reading: asyncio.BaseTransport,
                 writing: asyncio.WriteTransport, generation: int):
        self._process = process
        self._replies = replies
        self._reading = reading
        self._writing = writing
        self.generation = generation      # the pool's policy it was started with

    @classmethod
    async def start(cls, initializer: Callable, initargs: tuple, *, generation: int, timeout: float,
                    command: tuple[str, ...] = COMMAND) -> WorkerProcess:
        """Start a worker, hand it its initializer (the policy), and wait until it is ready."""
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise WorkerCannotStart(str(exc)) from None
        loop = asyncio.get_running_loop()
        replies = _Replies()
        try:
            reading, _ = await loop.connect_read_pipe(lambda: replies, process.stdout)
            writing, _ = await loop.connect_write_pipe(asyncio.Protocol, process.stdin)
        except BaseException:       # cancelled, say: no process is left behind
            process.kill()
            process.wait()
            raise
        worker = cls(process, replies, reading, writing, generation)
        writing.write(frame(pickle.dumps((initializer, initargs), pickle.HIGHEST_PROTOCOL)))
        try:
            ready = await asyncio.wait_for(replies.next(), timeout)
        except (EOFError, TimeoutError, asyncio.CancelledError) as exc:
            worker.kill()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise WorkerCannotStart(f"not ready ({worker.end()})") from None
        if ready != READY:
            worker.kill()
            raise WorkerCannotStart(f"answered {ready[:40]!r} instead of being ready")
        return worker

    async def call(self, fn: Callable, args: tuple, kwargs: dict, timeout: float) -> Any:
        """The job's result, or its exception raised here; WorkerDied or WorkerTimedOut when the process
        is lost. Cancelled mid-job, the process is killed: its answer could not be told from the next."""
        self._writing.write(frame(pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)))
        try:
            reply = await asyncio.wait_for(self._replies.next(), timeout)
        except EOFError:
            self.kill()
            raise WorkerDied(self.end()) from None
        except TimeoutError:
            self.kill()
            raise WorkerTimedOut() from None
        except asyncio.CancelledError:
            self.kill()
            raise
        succeeded, value = pickle.loads(reply)
        if not succeeded:
            raise value
        return value

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        """Still running, its pipe open: an idle worker killed (by the OOM killer, say) is not handed a job."""
        return not self._replies.ended and self._process.poll() is None

    def end(self) -> str:
        """How the process ended, for messages."""
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def kill(self) -> None:
        """SIGKILL, and reap it: a killed process ends at once, with no interpreter to tear down."""
        self._close_pipes()
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()

    def end_input(self) -> None:
        """The end of its stdin: it exits once its job is done. Its teardown (about 0.1 s) is not waited
        for here, on the event loop; reaped() tells when it is over."""
        self._close_pipes()

    def reaped(self) -> bool:
        return self._process.poll() is not None

    def stop(self, timeout: float) -> None:
        """end_input(), then wait for the exit; past the timeout it is killed. Blocks: for the daemon's end."""
        self.end_input()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        if self._writing.is_closing() and self._reading.is_closing():
            return
        for transport in (self._writing, self._reading):
            pipe = transport.get_extra_info("pipe")
            try:
                transport.close()
            except RuntimeError:     # its event loop has already closed
                pass
            pipe.close()     # now, not at the loop's next turn: the worker sees the end of its input at once


# -- in the worker process -----------------------------------------------------------------

def _read_frame(source: BinaryIO) -> bytes | None:
    header = source.read(FRAME_HEADER_BYTES)
    if len(header) < FRAME_HEADER_BYTES:
        return None
    payload = source.read(int.from_bytes(header, "big"))
    return payload if len(payload) == int.from_bytes(header, "big") else None


def _answer(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    try:
        reply: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except Exception as exc:    # the job's own failure travels back to the caller, as with any call
        reply = (False, exc)
    try:
        return pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:    # an answer that cannot be pickled is still an answer, not a hang
        return pickle.dumps((False, RuntimeError(f"the worker's answer could not be sent: {exc!r}")))


def serve(source: BinaryIO, answers: BinaryIO) -> None:
    first = _read_frame(source)
    if first is None:
        return
    initializer, initargs = pickle.loads(first)
    initializer(*initargs)
    answers.write(frame(READY))
    answers.flush()
    while (job := _read_frame(source)) is not None:
        answers.write(frame(_answer(*pickle.loads(job))))
        answers.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)    # whatever a library prints goes to the log, never into the answers
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
