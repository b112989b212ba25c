"""The throwaway Dovecot (tests/dovecot.py) works with the real aioimaplib client.

These tests pin down what emergencyd's IMAP intake can rely on: IMAPS verified with the test
CA, plain IMAP, APPEND by another client seen by FETCH, IDLE pushes, UID MOVE, restarts and
UIDVALIDITY changes, and a server without IDLE.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time

import aioimaplib
import pytest

from tests.dovecot import Dovecot, dovecot_binary
from tests.harness import free_port

MESSAGE = (b"From: Tenant <tenant@example.net>\r\nTo: alerts@example.com\r\nSubject: Apps down\r\n"
           b"Message-ID: <imap-1@example.net>\r\n\r\nOur production app returns 502.\r\n")
SECOND = MESSAGE.replace(b"imap-1@", b"imap-2@").replace(b"Apps down", b"DB down")


async def connect(dovecot: Dovecot, *, tls: bool = True, timeout: float = 5.0) -> aioimaplib.IMAP4:
    """A logged-in aioimaplib client; IMAPS trusts only the test CA."""
    if tls:
        client = aioimaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, timeout=timeout,
                                      ssl_context=dovecot.client_ssl_context())
    else:
        client = aioimaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=timeout)
    await client.wait_hello_from_server()
    response = await client.login(dovecot.username, dovecot.password)
    assert response.result == "OK", response
    return client


async def close(client: aioimaplib.IMAP4) -> None:
    with contextlib.suppress(aioimaplib.AioImapException, TimeoutError, OSError):
        await client.logout()
    if client.protocol.transport is not None:
        client.protocol.transport.close()


def uidvalidity(select_response: aioimaplib.Response) -> int:
    """SELECT's lines hold b'OK [UIDVALIDITY 1795768574] UIDs valid' (the '* ' is stripped)."""
    for line in select_response.lines:
        match = re.match(rb"OK \[UIDVALIDITY (\d+)\]", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"no UIDVALIDITY in {select_response}")


def fetched(response: aioimaplib.Response) -> dict[int, bytes]:
    """UID FETCH (UID BODY.PEEK[]) lines: b'1 FETCH (UID 1 BODY[] {42}', bytearray(message), b')', ..."""
    messages, lines = {}, response.lines
    for i, line in enumerate(lines):
        if isinstance(line, bytes) and re.match(rb"\d+ FETCH \(", line):
            uid = int(re.search(rb"UID (\d+)", line).group(1))
            messages[uid] = bytes(lines[i + 1])
    return messages


async def test_imaps_login_verifies_the_test_ca(dovecot, capsys):
    with capsys.disabled():
        print(f"\n[dovecot] start() took {dovecot.start_seconds * 1000:.0f} ms "
              f"(imap {dovecot.imap_port}, imaps {dovecot.imaps_port})")
    client = await connect(dovecot, tls=True)
    assert client.get_state() == "AUTH"
    await close(client)

    # the same port with the system CAs only: the certificate really is checked
    untrusted = aioimaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, timeout=5,
                                     ssl_context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        await untrusted.wait_hello_from_server()


async def test_plain_imap_login(dovecot):
    client = await connect(dovecot, tls=False)
    assert client.get_state() == "AUTH"
    await close(client)


async def test_append_by_another_client_is_fetched(dovecot):
    uid = dovecot.append(MESSAGE)
    assert uid == 1 and dovecot.uids() == [1] and dovecot.fetch_all() == {1: MESSAGE}

    client = await connect(dovecot)
    selected = await client.select("INBOX")
    assert selected.result == "OK"
    assert b"1 EXISTS" in selected.lines
    assert uidvalidity(selected) == dovecot.uidvalidity("INBOX")

    response = await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
    assert response.result == "OK"
    assert response.lines[0] == b"1 FETCH (UID 1 BODY[] {%d}" % len(MESSAGE)
    assert fetched(response) == {1: MESSAGE}
    assert "\\Seen" not in dovecot.flags()[1]   # BODY.PEEK[] left it unseen
    await close(client)


async def test_idle_push_on_append(dovecot):
    client = await connect(dovecot)
    await client.select("INBOX")
    idle = await client.idle_start(timeout=10)
    began = time.monotonic()
    await asyncio.to_thread(dovecot.append, MESSAGE)

    pushes: list[bytes] = []
    while b"1 EXISTS" not in pushes:               # e.g. [b'1 EXISTS', b'1 RECENT']
        pushes += await client.wait_server_push(timeout=5)
    with_delay = time.monotonic() - began
    client.idle_done()                              # sends DONE; the IDLE command ends with OK
    done = await asyncio.wait_for(idle, 5)
    assert done.result == "OK" and not client.has_pending_idle()
    assert with_delay < 5
    print(f"IDLE push {with_delay:.2f}s after APPEND: {pushes}")

    response = await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
    assert fetched(response) == {1: MESSAGE}
    await close(client)


async def test_uid_move_to_processed_and_capabilities(dovecot):
    dovecot.append(MESSAGE)
    dovecot.append(SECOND)
    client = await connect(dovecot)
    assert client.has_capability("IDLE") and client.has_capability("MOVE")
    await client.select("INBOX")
    moved = await client.uid("move", "1", "Processed")
    assert moved.result == "OK"
    assert re.match(rb"OK \[COPYUID \d+ 1 1\]", moved.lines[0]), moved.lines
    assert b"1 EXPUNGE" in moved.lines
    await close(client)
    assert dovecot.fetch_all("INBOX") == {2: SECOND}
    assert dovecot.fetch_all("Processed") == {1: MESSAGE}


async def test_server_without_idle(dovecot):
    dovecot.set_idle_enabled(False)
    assert "IDLE" not in dovecot.capabilities() and "MOVE" in dovecot.capabilities()
    client = await connect(dovecot)
    assert not client.has_capability("IDLE")        # neither before nor after login
    assert client.has_capability("MOVE")
    await client.select("INBOX")
    with pytest.raises(aioimaplib.Abort):
        await client.idle_start(timeout=10)
    await close(client)

    dovecot.set_idle_enabled(True)
    client = await connect(dovecot)
    assert client.has_capability("IDLE")
    await close(client)


async def test_restart_drops_the_session_and_keeps_the_mail(dovecot, capsys):
    dovecot.append(MESSAGE)
    lost = asyncio.Event()
    client = aioimaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, timeout=0.5,
                                  ssl_context=dovecot.client_ssl_context())
    client.protocol.conn_lost_cb = lambda exc: lost.set()   # IMAP4_SSL() takes no conn_lost_cb
    await client.wait_hello_from_server()
    await client.login(dovecot.username, dovecot.password)
    await client.select("INBOX")
    ports = dovecot.imap_port, dovecot.imaps_port

    began = time.monotonic()
    await asyncio.to_thread(dovecot.restart)
    with capsys.disabled():
        print(f"\n[dovecot] restart() took {(time.monotonic() - began) * 1000:.0f} ms")
    assert (dovecot.imap_port, dovecot.imaps_port) == ports
    await asyncio.wait_for(lost.wait(), 5)

    # aioimaplib 2.0.3 does not fail commands on a lost connection: the next one times out
    with pytest.raises((TimeoutError, aioimaplib.CommandTimeout)):
        await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")
    client.protocol.transport.close()

    again = await connect(dovecot)
    await again.select("INBOX")
    assert fetched(await again.uid("fetch", "1:*", "(UID BODY.PEEK[])")) == {1: MESSAGE}
    await close(again)


async def test_idle_session_sees_connection_loss_on_restart(dovecot):
    lost = asyncio.Event()
    client = aioimaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=5, conn_lost_cb=lambda exc: lost.set())
    await client.wait_hello_from_server()
    await client.login(dovecot.username, dovecot.password)
    await client.select("INBOX")
    await client.idle_start(timeout=10)
    await asyncio.to_thread(dovecot.restart)
    await asyncio.wait_for(lost.wait(), 5)            # conn_lost_cb is the reliable signal
    # the imap process says BYE on plain IMAP; over IMAPS only sometimes (imap-login, which
    # holds the TLS session, is killed at the same time), so never rely on it
    pushes = []
    while not client.protocol.idle_queue.empty():
        pushes += client.protocol.idle_queue.get_nowait()
    assert pushes in ([], [b"BYE Server shutting down."]), pushes
    assert client.has_pending_idle()                  # aioimaplib 2.0.3 still thinks it is idling,
    with pytest.raises(TimeoutError):                 # and wait_server_push() waits on, until
        await client.wait_server_push(timeout=0.2)    # idle_start's timeout
    client.protocol.transport.close()


async def test_uidvalidity_change_is_observable(dovecot):
    dovecot.append(MESSAGE)
    dovecot.append(SECOND)
    client = await connect(dovecot)
    before = uidvalidity(await client.select("INBOX"))
    await close(client)

    after = dovecot.reset_uidvalidity("INBOX")
    assert after != before

    client = await connect(dovecot)
    selected = await client.select("INBOX")
    assert uidvalidity(selected) == after
    assert sorted(fetched(await client.uid("fetch", "1:*", "(UID BODY.PEEK[])")).values()) == sorted([MESSAGE, SECOND])
    await close(client)


async def test_kill_and_start_again(dovecot):
    dovecot.append(MESSAGE)
    dovecot.kill()
    assert not dovecot.running
    dovecot.start()
    assert dovecot.fetch_all() == {1: MESSAGE}


def test_instances_do_not_share_ports_or_mail(ca):
    with Dovecot(ca, dovecot=dovecot_binary()) as one, Dovecot(ca, dovecot=dovecot_binary()) as two:
        assert {one.imap_port, one.imaps_port}.isdisjoint({two.imap_port, two.imaps_port})
        one.append(MESSAGE)
        assert two.uids() == []


def test_start_retries_when_a_picked_port_is_taken(ca, monkeypatch):
    """The free-port race: another process binds a port between picking and Dovecot's bind."""
    import socket

    import tests.dovecot as module
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([(taken, free_port())])
    real = module._two_free_ports
    monkeypatch.setattr(module, "_two_free_ports", lambda: next(picks, None) or real())
    try:
        with Dovecot(ca, dovecot=dovecot_binary()) as server:
            assert taken not in (server.imap_port, server.imaps_port)
            assert "Address already in use" in server.log_text()
            assert server.uids() == []
    finally:
        squatter.close()
