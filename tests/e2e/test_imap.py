"""IMAP ingress end to end: the real daemon takes mail from a real Dovecot (tests/dovecot.py).

Mail is put into the mailbox by a separate client (stdlib imaplib), the daemon picks it up
(IDLE or polling), commits it, moves it to Processed, and escalates it to the HTTPS fakes of
Zendesk and PagerDuty. Nothing of the daemon is mocked; failures are real ones (Dovecot
stopped, a wrong password, a mailbox that refuses mail, a rebuilt mailbox).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import time

import pytest

from emergencyd.escalation.records import DONE, STEP_DONE
from tests.harness import DaemonProcess, NotifySocket, imap_table, log_records, make_message

CONNECTED = "emergencyd_imap_connected"
IDLE_ACTIVE = "emergencyd_imap_idle_active"
ERRORS = "emergencyd_imap_errors_total"
FETCHED = "emergencyd_imap_messages_fetched_total"
RECEIVED = "emergencyd_messages_received_total"
DUPLICATES = "emergencyd_messages_duplicate_total"
LAST_SYNC = "emergencyd_imap_last_sync_timestamp_seconds"
PICKUP_COUNT = "emergencyd_imap_pickup_latency_seconds_count"
ERROR_KINDS = ("connect", "tls", "login", "token", "token_endpoint", "mailbox", "timeout", "connection_lost",
               "protocol", "move", "too_large", "store")

# Quick reconnects keep the tests short; commands get room for Dovecot's 2 s delay on a failed login.
# Many distinct incidents at once: without this, pages beyond 10 a minute wait (by design).
NO_PAGE_CAP = "[dedup]\nmax_new_pages_per_minute = 100000\n"


# --- helpers ---------------------------------------------------------------------------------

def mail(tag: str, *, subject: str | None = None) -> bytes:
    """A P1 under the default policy; its own sender, subject and Message-ID, so its own incident."""
    return make_message(subject=subject or f"Apps down ({tag})", body="Our production app returns 502 since 02:10.",
                        sender=f"ops@{tag}.example", message_id=f"<{tag}@{tag}.example>")




def imap_errors(daemon: DaemonProcess) -> dict[str, float]:
    return {kind: daemon.metric(ERRORS, kind=kind) for kind in ERROR_KINDS}


def wait_metric(daemon: DaemonProcess, name: str, check, *, timeout: float = 20.0, **labels: str) -> float:
    """Until check(value) holds; `check` may be a plain value to wait for. Returns the value."""
    test = check if callable(check) else (lambda value: value == check)
    seen: list[float] = []

    def holds() -> bool:
        seen.append(daemon.metric(name, **labels))
        return test(seen[-1])
    try:
        daemon.wait_for(holds, timeout, what=f"{name}{labels or ''} ({check})")
    except AssertionError as exc:
        raise AssertionError(f"last value {seen[-1:]}; {exc}") from None
    return seen[-1]


def wait_connected(daemon: DaemonProcess, *, idle: bool | None = None) -> None:
    wait_metric(daemon, CONNECTED, 1)
    if idle is not None:
        wait_metric(daemon, IDLE_ACTIVE, int(idle))


def readiness(daemon: DaemonProcess) -> tuple[int, dict[str, str]]:
    status, body = daemon.http_get("/readyz")
    return status, json.loads(body)["checks"]


def wait_mailbox(daemon: DaemonProcess, dovecot, mailbox: str, count: int, timeout: float = 20.0) -> None:
    """Until the mailbox holds exactly `count` messages (as another client sees it)."""
    daemon.wait_for(lambda: len(dovecot.uids(mailbox)) == count, timeout, what=f"{count} message(s) in {mailbox}")


def triggers(pagerduty) -> list[dict]:
    return [e for e in pagerduty.events() if e["event_action"] == "trigger"]


def logins(dovecot) -> list[str]:
    """Dovecot's log lines for successful logins, each naming TLS when it was over IMAPS (the
    test's own clients use plain IMAP, so a TLS login is the daemon's)."""
    return [line for line in dovecot.log_text().splitlines() if "Login: user=<" in line]


def refused_logins(dovecot) -> list[str]:
    return [line for line in dovecot.log_text().splitlines() if "auth failed" in line]


def log_lines(daemon: DaemonProcess, *needles: str) -> list[str]:
    return [line for line in daemon.log_text().splitlines()
            if "emergencyd.imap" in line and all(n in line for n in needles)]


def stored_rows(daemon: DaemonProcess) -> list[tuple]:
    """(id, message_id, size, sha256, source, deliveries) of every stored message, read-only."""
    path = daemon.config.parent / "var" / "store.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, message_id, size, sha256, source, deliveries FROM messages"
                            " ORDER BY id").fetchall()
    finally:
        conn.close()


def assert_one_ticket_one_page(message: dict, zendesk, pagerduty) -> None:
    assert message["state"] == DONE, message
    [ticket] = zendesk.tickets()
    [incident] = pagerduty.incidents()
    assert ticket["id"] == message["ticket_id"]
    assert incident["dedup_key"] == message["dedup_key"]
    assert len(triggers(pagerduty)) == 1


# --- picking up mail -------------------------------------------------------------------------

def test_idle_pickup_pages_once_and_moves_the_mail(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))
    wait_connected(daemon, idle=True)
    status, checks = readiness(daemon)
    assert status == 200 and checks["imap"] == "ok", checks
    assert log_lines(daemon, "imap connected")

    raw = mail("idle")
    dovecot.append(raw)                                  # another client; the daemon is idling
    [message] = daemon.wait_settled(1)["messages"]
    assert message["source"] == "imap" and message["message_id"] == "idle@idle.example"
    assert message["subject"] == "Apps down (idle)" and message["sender"] == "ops@idle.example"
    assert message["severity"] == "P1"
    assert_one_ticket_one_page(message, zendesk, pagerduty)

    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert list(dovecot.fetch_all("Processed").values()) == [raw]      # moved, byte for byte
    [(_, _, size, sha, source, deliveries)] = stored_rows(daemon)
    assert (size, sha, source, deliveries) == (len(raw), hashlib.sha256(raw).hexdigest(), "imap", 1)

    assert daemon.metric(FETCHED) == 1
    assert daemon.metric(RECEIVED, source="imap") == 1
    assert daemon.metric(DUPLICATES, source="imap") == 0
    assert daemon.metric(PICKUP_COUNT) == 1
    assert daemon.metric(LAST_SYNC) > 0
    assert imap_errors(daemon) == dict.fromkeys(ERROR_KINDS, 0)
    # the daemon logged in over IMAPS (the test's own clients use plain IMAP)
    assert any(", TLS," in line for line in logins(dovecot)), logins(dovecot)
    assert dovecot.password not in daemon.log_text()


@pytest.mark.parametrize("without_idle", ["server", "config"])
def test_polls_without_idle(tmp_path, dovecot, live_daemon, zendesk, pagerduty, without_idle):
    """IDLE not offered by the server, or turned off in the config: the mailbox is polled."""
    settings = {"poll_interval_seconds": 0.5}
    if without_idle == "server":
        dovecot.set_idle_enabled(False)                  # restarts Dovecot, same ports
        assert "IDLE" not in dovecot.capabilities()
    else:
        settings["idle"] = False
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path, **settings))
    wait_connected(daemon, idle=False)

    raw = mail("polled")
    dovecot.append(raw)
    [message] = daemon.wait_settled(1)["messages"]
    assert message["source"] == "imap"
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert list(dovecot.fetch_all("Processed").values()) == [raw]
    assert daemon.metric(IDLE_ACTIVE) == 0 and daemon.metric(CONNECTED) == 1


def test_plain_imap_on_loopback(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path, tls=False))
    wait_connected(daemon)
    dovecot.append(mail("plain"))
    [message] = daemon.wait_settled(1)["messages"]
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    seen = logins(dovecot)
    assert seen and not any(", TLS," in line for line in seen), seen


def test_imap_only_daemon_pages_from_the_mailbox(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path), smtp_enabled=False)
    assert daemon.smtp_port == 0
    assert [r["smtp"] for r in log_records(daemon.log_text()) if r["event"] == "emergencyd ready"] == ["off"]
    wait_connected(daemon)
    status, checks = readiness(daemon)
    assert status == 200 and checks["imap"] == "ok", checks

    dovecot.append(mail("imap-only"))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["source"] == "imap"
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    wait_mailbox(daemon, dovecot, "INBOX", 0)


def test_a_10_mb_message_is_stored_whole_and_paged_once(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    attachment = base64.encodebytes(os.urandom(7_600_000)).replace(b"\n", b"\r\n")   # ~10.3 MB encoded
    raw = (b"From: Tenant <ops@big.example>\r\nTo: emergency@example.org\r\nSubject: Apps down, logs attached\r\n"
           b"Message-ID: <big@big.example>\r\nDate: Fri, 27 Nov 2026 02:15:00 +0000\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b0undary"\r\n\r\n'
           b"--b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           b"Our production app returns 502 since 02:10. Logs attached.\r\n"
           b"--b0undary\r\nContent-Type: text/plain; name=\"app.log\"\r\n"
           b"Content-Disposition: attachment; filename=\"app.log\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + attachment + b"--b0undary--\r\n")
    assert len(raw) > 10_000_000
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))
    wait_connected(daemon, idle=True)
    dovecot.append(raw)

    [message] = daemon.wait_settled(1, timeout=60)["messages"]
    assert message["message_id"] == "big@big.example" and message["source"] == "imap"
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    [(_, _, size, sha, _, deliveries)] = stored_rows(daemon)
    assert (size, sha, deliveries) == (len(raw), hashlib.sha256(raw).hexdigest(), 1)
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert len(dovecot.uids("Processed")) == 1
    assert daemon.metric(ERRORS, kind="too_large") == 0


def test_mail_over_max_message_bytes_stays_in_the_mailbox(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    filler = (b"x" * 76 + b"\r\n") * 30_000                                    # ~2.3 MB
    big = mail("too-big", subject="Apps down, huge").replace(b"since 02:10.", b"since 02:10.\r\n" + filler)
    small = mail("small")
    dovecot.append_many([big, small])
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path, max_message_bytes=1_000_000))

    [message] = daemon.wait_settled(1)["messages"]
    assert message["message_id"] == "small@small.example"
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    wait_mailbox(daemon, dovecot, "Processed", 1)
    assert list(dovecot.fetch_all("INBOX").values()) == [big]          # left for a human
    assert daemon.metric(ERRORS, kind="too_large") >= 1
    assert log_lines(daemon, "too large")
    assert len(stored_rows(daemon)) == 1


def test_a_backlog_of_1000_mails_is_taken_once_and_in_order(tmp_path, dovecot, start_daemon):
    raws = [make_message(subject=f"Backlog incident {n}", body="Our production app returns 502.",
                         sender=f"ops@tenant{n}.example", message_id=f"<backlog-{n}@tenant{n}.example>")
            for n in range(1000)]
    expected_ids = [f"backlog-{n}@tenant{n}.example" for n in range(1000)]
    assert dovecot.append_many(raws) == list(range(1, 1001))
    # dry run: the escalation of every mail is recorded in the store, nothing is called.
    # The shipped busy timeout: the harness's 300 ms makes a busy machine refuse commits.
    daemon = start_daemon(dry_run=True, imap=imap_table(dovecot, tmp_path), extra=NO_PAGE_CAP,
                          busy_timeout_ms=5000)

    doc = daemon.wait_settled(1000, timeout=90)
    assert doc["counts"] == {"done": 1000}
    messages = sorted(doc["messages"], key=lambda m: m["id"])
    assert [m["message_id"] for m in messages] == expected_ids           # stored in UID order
    assert [r[1] for r in stored_rows(daemon)] == expected_ids           # each once
    odd = [(m["id"], m["source"], m["severity"]) for m in messages if (m["source"], m["severity"]) != ("imap", "P1")]
    assert not odd, odd[:5]
    pages = [m["steps"]["page"] for m in messages]
    assert all(p["state"] == STEP_DONE and p["result"].get("dry_run") is True for p in pages)
    assert len({p["result"]["would_send"]["dedup_key"] for p in pages}) == 1000      # one page each

    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert len(dovecot.uids("Processed")) == 1000
    assert daemon.metric(RECEIVED, source="imap") == 1000
    # A mail is fetched a second time only after a failure between its commit and its move
    # (the reconnect takes what is still there; dedup makes it a no-op): never otherwise.
    refetched = [m["id"] for m in messages if m["deliveries"] != 1]
    failures = {kind: n for kind, n in imap_errors(daemon).items() if n}
    assert len(refetched) == daemon.metric(DUPLICATES, source="imap") == daemon.metric(FETCHED) - 1000
    assert not refetched or failures, refetched
    assert not failures or log_lines(daemon, "imap disconnected"), failures


def test_a_mailbox_of_1500_over_plain_imap_is_taken_without_dropping_the_connection(tmp_path, dovecot,
                                                                                     start_daemon):
    """Over plain IMAP one read can hold a thousand FETCH lines, which aioimaplib handles one
    recursion per line: metadata is fetched in slices, so the connection never breaks on it."""
    raws = [make_message(subject=f"Large mailbox {n}", sender=f"ops@big{n}.example",
                         message_id=f"<big-{n}@big{n}.example>") for n in range(1500)]
    dovecot.append_many(raws)
    daemon = start_daemon(dry_run=True, imap=imap_table(dovecot, tmp_path, tls=False), extra=NO_PAGE_CAP,
                          busy_timeout_ms=5000)
    wait_mailbox(daemon, dovecot, "INBOX", 0, timeout=90)
    assert daemon.metric(RECEIVED, source="imap") == 1500
    assert {kind: n for kind, n in imap_errors(daemon).items() if n} == {}
    assert not log_lines(daemon, "imap disconnected")


# --- the same mail twice ---------------------------------------------------------------------

@pytest.mark.parametrize("sent_first", ["smtp", "imap"])
def test_the_same_mail_by_smtp_and_by_imap_is_one_message(tmp_path, dovecot, live_daemon, zendesk, pagerduty,
                                                          sent_first):
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))
    wait_connected(daemon, idle=True)
    raw = mail("both-ways")
    deliver = {"smtp": lambda: daemon.send(raw), "imap": lambda: dovecot.append(raw)}
    second = "imap" if sent_first == "smtp" else "smtp"

    deliver[sent_first]()
    daemon.wait_settled(1)
    deliver[second]()
    wait_metric(daemon, DUPLICATES, 1, source=second)
    wait_mailbox(daemon, dovecot, "INBOX", 0)

    [message] = daemon.wait_settled(1)["messages"]
    assert message["source"] == sent_first and message["deliveries"] == 2
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    assert daemon.metric(RECEIVED, source=sent_first) == 1 and daemon.metric(RECEIVED, source=second) == 0
    assert daemon.metric(DUPLICATES, source=sent_first) == 0


def test_killed_after_the_commit_and_before_the_move(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    """Committed but not moved, then kill -9: the restarted daemon takes the mail again as a duplicate.

    The move follows the commit within milliseconds, so no signal can land between the two
    reliably. Instead Processed refuses new mail (its maildir is read-only): the MOVE fails
    after the commit and the mail stays in INBOX, exactly what a crash between the two leaves
    behind. Then kill -9, Processed is writable again, and the daemon starts afresh.
    """
    dovecot.uids("Processed")                            # exists before it is made read-only
    dovecot.set_mailbox_writable("Processed", False)
    raw = mail("crash")
    dovecot.append(raw)
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))

    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="move")
    assert log_lines(daemon, "move")
    [message] = daemon.wait_settled(1)["messages"]       # committed and escalated
    assert list(dovecot.fetch_all("INBOX").values()) == [raw] and dovecot.uids("Processed") == []
    daemon.kill9()

    dovecot.set_mailbox_writable("Processed", True)
    daemon.start()
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert list(dovecot.fetch_all("Processed").values()) == [raw]
    wait_metric(daemon, DUPLICATES, 1, source="imap")
    assert daemon.metric(RECEIVED, source="imap") == 0
    [message] = daemon.wait_settled(1)["messages"]
    assert message["deliveries"] == 2
    assert_one_ticket_one_page(message, zendesk, pagerduty)


def test_uidvalidity_change_resyncs_without_paging_twice(tmp_path, dovecot, live_daemon, zendesk, pagerduty):
    first, second = mail("uv-first"), mail("uv-second")
    dovecot.append_many([first, second])                 # UIDs 1 and 2
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))
    daemon.wait_settled(2)
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    wait_connected(daemon, idle=True)
    before = dovecot.uidvalidity()

    # A rebuild of the mailbox: new UIDVALIDITY, and a mail already handled is back in it.
    after = dovecot.reset_uidvalidity(deliver=(first,))
    assert after != before
    wait_metric(daemon, DUPLICATES, 1, source="imap")     # reconnected, took it again: a duplicate
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert log_lines(daemon, "UIDVALIDITY")
    assert len(zendesk.tickets()) == 2 and len(triggers(pagerduty)) == 2

    # New mail now gets UID 2 again (under the new UIDVALIDITY): it must not be taken for old.
    wait_connected(daemon, idle=True)
    assert dovecot.append(mail("uv-third")) == 2
    doc = daemon.wait_settled(3)
    assert {m["message_id"] for m in doc["messages"]} == {
        "uv-first@uv-first.example", "uv-second@uv-second.example", "uv-third@uv-third.example"}
    assert [m["deliveries"] for m in sorted(doc["messages"], key=lambda m: m["id"])] == [2, 1, 1]
    assert len(zendesk.tickets()) == 3 and len(pagerduty.incidents()) == 3 and len(triggers(pagerduty)) == 3
    wait_mailbox(daemon, dovecot, "INBOX", 0)


def test_mail_stays_in_the_mailbox_until_the_store_has_committed_it(tmp_path, dovecot, live_daemon, zendesk,
                                                                   pagerduty):
    """The store refuses writes for a while (another process holds it locked): nothing is moved."""
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))
    wait_connected(daemon, idle=True)
    locker = sqlite3.connect(daemon.config.parent / "var" / "store.sqlite3", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        raw = mail("locked-store")
        dovecot.append(raw)
        wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="store")
        assert list(dovecot.fetch_all("INBOX").values()) == [raw] and dovecot.uids("Processed") == []
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    [message] = daemon.wait_settled(1)["messages"]
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert list(dovecot.fetch_all("Processed").values()) == [raw]
    assert daemon.metric(RECEIVED, source="imap") == 1 and daemon.metric(DUPLICATES, source="imap") == 0


# --- the server goes away --------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stop", "kill"])
def test_reconnects_after_dovecot_goes_away_and_catches_up_after_downtime(tmp_path, dovecot, live_daemon,
                                                                          zendesk, pagerduty, how):
    """Dovecot stopped (SIGTERM) or crashed (SIGKILL) under an idling daemon, then started again."""
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path))
    wait_connected(daemon, idle=True)

    dovecot.stop() if how == "stop" else dovecot.kill()
    wait_metric(daemon, CONNECTED, 0)
    status, checks = readiness(daemon)
    assert status == 503 and checks["imap"] != "ok", checks
    assert daemon.metric(IDLE_ACTIVE) == 0
    dovecot.start()
    wait_connected(daemon, idle=True)
    dovecot.append(mail("after-restart"))
    daemon.wait_settled(1)
    errors = imap_errors(daemon)
    assert errors["connection_lost"] + errors["connect"] >= 1, errors
    assert log_lines(daemon, "imap disconnected")
    assert readiness(daemon)[1]["imap"] == "ok"

    # Mail that arrives while the daemon is down is caught up when it starts.
    assert daemon.stop() == 0
    dovecot.append_many([mail("while-down-1"), mail("while-down-2")])
    daemon.start()
    doc = daemon.wait_settled(3)
    assert doc["counts"] == {"done": 3}
    assert sorted(m["message_id"].split("@")[0] for m in doc["messages"]) == [
        "after-restart", "while-down-1", "while-down-2"]
    assert len(zendesk.tickets()) == 3 and len(pagerduty.incidents()) == 3
    wait_mailbox(daemon, dovecot, "INBOX", 0)
    assert len(dovecot.uids("Processed")) == 3


def test_a_wrong_password_is_reported_and_not_retried_in_a_loop(tmp_path, dovecot, live_daemon, zendesk,
                                                                pagerduty):
    wrong = "not-the-password-7d1"
    dovecot.set_login_throttling(False)      # refused at once: only the daemon's own pacing counts
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path, password=wrong))
    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="login")
    watched_from = time.monotonic()
    assert log_lines(daemon, "login")
    status, checks = readiness(daemon)
    assert status == 503 and checks["imap"] != "ok", checks
    assert daemon.metric(CONNECTED) == 0

    # SMTP works meanwhile
    daemon.send(mail("by-smtp"))
    [message] = daemon.wait_settled(1)["messages"]
    assert message["source"] == "smtp"
    assert_one_ticket_one_page(message, zendesk, pagerduty)

    # No hammering: reconnects are 0.2 to 1 s apart here, yet a refused login waits much longer.
    # A slow machine only retries less within the few seconds observed.
    time.sleep(max(0.0, watched_from + 5 - time.monotonic()))
    attempts = daemon.metric(ERRORS, kind="login")
    assert 1 <= attempts <= 2, log_lines(daemon, "login")
    daemon.wait_for(lambda: len(refused_logins(dovecot)) >= 1, what="Dovecot to log the refused login")
    assert 1 <= len(refused_logins(dovecot)) <= 2, refused_logins(dovecot)
    assert logins(dovecot) == []
    assert wrong not in daemon.log_text()
    assert daemon.proc.poll() is None


def test_a_mailbox_that_does_not_exist_is_reported_and_taken_once_it_exists(tmp_path, dovecot, live_daemon,
                                                                             zendesk, pagerduty):
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path, mailbox="Nope", reconnect_initial_seconds=0.5,
                                         reconnect_max_seconds=2.0))
    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="mailbox")
    watched_from = time.monotonic()
    assert log_lines(daemon, '"kind": "mailbox"'), daemon.log_text()[-3000:]
    status, checks = readiness(daemon)
    assert status == 503 and checks["imap"] != "ok", checks

    # Retries back off (at least 0.5 s apart here) instead of spinning; the daemon lives on.
    time.sleep(max(0.0, watched_from + 3 - time.monotonic()))
    assert daemon.metric(ERRORS, kind="mailbox") <= 8
    assert daemon.proc.poll() is None

    # Once someone creates the mailbox, its mail is taken without a restart.
    with dovecot.client() as conn:
        assert conn.create("Nope")[0] == "OK"
    raw = mail("late-mailbox")
    dovecot.append(raw, mailbox="Nope")
    [message] = daemon.wait_settled(1)["messages"]
    assert_one_ticket_one_page(message, zendesk, pagerduty)
    wait_mailbox(daemon, dovecot, "Nope", 0)
    assert list(dovecot.fetch_all("Processed").values()) == [raw]
    assert readiness(daemon)[1]["imap"] == "ok"


def test_an_untrusted_certificate_is_refused_before_login(tmp_path, dovecot, live_daemon):
    """Without the test CA, Dovecot's certificate does not verify: no password is sent."""
    daemon = live_daemon(imap=imap_table(dovecot, tmp_path, ca_file=None))
    wait_metric(daemon, ERRORS, lambda v: v >= 1, kind="tls")
    assert log_lines(daemon, '"kind": "tls"')
    assert daemon.metric(CONNECTED) == 0 and readiness(daemon)[0] == 503
    assert logins(dovecot) == [] and refused_logins(dovecot) == []


def test_a_poll_takes_the_mail_that_arrived_before_it(tmp_path, dovecot, start_daemon):
    """A server adds new mail to a session's view only at the end of its next command: a poll
    that only FETCHed would see mail one poll late. The first poll after the APPEND takes it."""
    daemon = start_daemon(dry_run=True, imap=imap_table(dovecot, tmp_path, idle=False, poll_interval_seconds=1))
    wait_connected(daemon, idle=False)
    for index in range(3):
        synced = daemon.metric(LAST_SYNC)
        daemon.wait_for(lambda: daemon.metric(LAST_SYNC) > synced,
                        what="a poll to finish")
        polled = daemon.metric(LAST_SYNC)
        dovecot.append(mail(f"between polls {index}"))      # right after a poll, long before the next
        daemon.wait_for(lambda: daemon.metric(LAST_SYNC) > polled,
                        what="the next poll")
        assert len(daemon.status()["messages"]) == index + 1, "the next poll did not take the mail"


def test_ready_is_sent_once_the_mailbox_is_logged_in(tmp_path, dovecot):
    from tests.harness import base_env, write_config
    notify = NotifySocket(tmp_path / "notify.sock")
    config = write_config(tmp_path, dry_run=True, imap=imap_table(dovecot, tmp_path))
    daemon = DaemonProcess(config=config, env=base_env(NOTIFY_SOCKET=notify.path), log_path=tmp_path / "daemon.log")
    try:
        daemon.start()
        notify.wait_for("READY")
        # READY follows the first login: by the time it is read, the login is logged
        assert "imap connected" in [r["event"] for r in log_records(daemon.log_text())]
        assert daemon.metric(CONNECTED) == 1
    finally:
        daemon.stop()
        notify.close()
