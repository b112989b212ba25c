"""The DATA body is read as aiosmtpd reads it: held to a real aiosmtpd server by a Hypothesis property."""
from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from emergencyd.daemon.ingest.smtp_data import BodyFault, read_body

LINE_LIMIT = 64
SIZE_LIMIT = 400
END = b"\r\n.\r\n"
DataBodyLike = tuple[bytes, BodyFault | None]
BITS = st.sampled_from([b"a", b"b.", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\n.\r", b"x" * 30, b"y" * 61])


class Recorder:
    def __init__(self):
        self.content: bytes | None = None

    async def handle_DATA(self, server, session, envelope):
        self.content = envelope.original_content
        return "250 OK"


class LineLimited(SMTP):
    line_length_limit = LINE_LIMIT


async def _aiosmtpd_answer(body: bytes, pieces: list[bytes]) -> DataBodyLike:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LineLimited(recorder, data_size_limit=SIZE_LIMIT, decode_data=False),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        for command in (b"HELO client.example\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n",
                        b"DATA\r\n"):
            writer.write(command)
            await reader.readline()
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        reply = await reader.readline()
    finally:
        writer.close()
        server.close()
    if reply.startswith(b"500 Line too long"):
        return (b"", BodyFault.LINE_TOO_LONG)
    if reply.startswith(b"552"):
        return (b"", BodyFault.TOO_LARGE)
    assert reply.startswith(b"250"), reply
    return (recorder.content, None)



async def _our_answer(pieces: list[bytes]) -> tuple[DataBodyLike, bytes]:
    """read_body on a reader fed piece by piece, as the socket would: where the reader's limit cuts
    the body then depends on the pieces, so lines and CRLFs split between reads are met too."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed():
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_data(b"QUIT\r\n")           # a pipelined command: left for the next read
        reader.feed_eof()

    feeding = asyncio.create_task(feed())
    body = await read_body(reader, max_line_bytes=LINE_LIMIT, max_bytes=SIZE_LIMIT)
    await feeding
    return (body.content, body.fault), await reader.read()


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:]) if b > a]


@settings(max_examples=500, deadline=None)
@given(st.lists(BITS, max_size=40).map(b"".join), st.lists(st.integers(min_value=0), max_size=6))
def test_the_body_is_read_as_aiosmtpd_reads_it(body, cuts):
    stream = body + END
    assume((b"\r\n" + stream).find(END) == len(body) + 2)     # the data ends at the end, not before
    pieces = _cut(stream, cuts)

    async def both():
        return await _aiosmtpd_answer(body, pieces), await _our_answer(pieces)

    expected, (ours, left) = asyncio.run(both())
    assert ours == expected
    assert left == b"QUIT\r\n"


@pytest.mark.parametrize("stream, content", [
    (b".\r\n", b""),                                          # an empty message
    (b"..\r\n.\r\n", b".\r\n"),                              # a line of one dot, stuffed
    (b"a\r\n..b\r\n.c\r\n.\r\n", b"a\r\n.b\r\nc\r\n"),
    (b"a\n.\r\nb\r\n.\n\r\n.\r\n", b"a\n.\r\nb\r\n\n\r\n"),   # bare LFs around a dot end nothing
])
def test_end_of_data_and_dot_stuffing(stream, content):
    (ours, fault), left = asyncio.run(_our_answer([stream]))
    assert (ours, fault, left) == (content, None, b"QUIT\r\n")


def test_a_long_line_split_across_reads_is_refused_and_nothing_is_kept():
    line = b"z" * (LINE_LIMIT - 1) + b"\r\n"                  # one byte over, its CRLF counted
    (ours, fault), left = asyncio.run(_our_answer([b"a\r\n" + line[:10], line[10:-1], line[-1:], b"ok\r\n.\r\n"]))
    assert (ours, fault, left) == (b"", BodyFault.LINE_TOO_LONG, b"QUIT\r\n")
    fits = b"z" * (LINE_LIMIT - 2) + b"\r\n"                  # exactly the limit
    for cut in range(1, len(fits)):
        (ours, fault), _ = asyncio.run(_our_answer([b"a\r\n" + fits[:cut], fits[cut:] + fits, b".\r\n"]))
        assert (ours, fault) == (b"a\r\n" + fits + fits, None), cut
    (ours, fault), _ = asyncio.run(_our_answer([b"end of a sentence.\r\n" + fits + b".\r\n"]))
    assert (ours, fault) == (b"end of a sentence.\r\n" + fits, None)
