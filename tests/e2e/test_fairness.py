"""An emergency never waits behind noise: through the real daemon, decisions take fair turns."""
import os
import smtplib
import time
from pathlib import Path
from typing import Callable

import pytest

from emergencyd.escalation.records import DONE, RelationKind
from tests.harness import (
    RECIPIENT,
    DaemonProcess,
    base_env,
    log_records,
    make_message,
    process_running,
    require_tool,
    run_cli,
    signed,
    write_config,
)


def _decided_after_a_start(tmp_path: Path, config: Path, mails: dict[str, bytes]) -> tuple[dict, list[int], dict]:
    """Stores `mails` with `inject` while no daemon runs, then starts one and lets it settle. Returns the
    status document, the ids in the order they were decided, and each mail's id by its name."""
    files = []
    for name, raw in mails.items():
        files.append(tmp_path / f"{name}.eml")
        files[-1].write_bytes(raw)
    stored = run_cli(config, "inject", *map(str, files)).stdout.strip().splitlines()
    pk = dict(zip(mails, (int(line.rsplit(" ", 1)[1]) for line in stored)))
    daemon = DaemonProcess(config=config, env=base_env(), log_path=tmp_path / "daemon.log").start()
    try:
        doc = daemon.wait_settled(len(mails), timeout=60)
        decided = [r["message_pk"] for r in log_records(daemon.log_text()) if r.get("event") == "decided"]
    finally:
        daemon.stop()
    assert sorted(decided) == sorted(pk.values())
    return doc, decided, pk


def test_a_new_senders_mail_is_decided_before_a_storming_senders_backlog(tmp_path):
    config = write_config(tmp_path, dry_run=True, policy=True)
    mails = {f"loop-{number:02}": make_message(
        subject=f"ALERT #{10400 + number} checkout-api 5xx above threshold", body="HTTP 5xx rate 12.4% " * 200,
        sender="monitoring@loop.example", message_id=f"<loop-{number}@loop.example>") for number in range(40)}
    mails["p1"] = make_message(subject="All our apps are down", sender="ops@other-tenant.example",
                               body="All our production apps return 502 since 02:10.", message_id="<p1@other>")
    doc, decided, pk = _decided_after_a_start(tmp_path, config, mails)
    # Forty of the loop's mails were stored first; the other tenant's P1 is among the first decided.
    assert decided.index(pk["p1"]) <= 2, decided
    loop = [one for one in decided if one != pk["p1"]]
    assert loop == sorted(loop)                       # the loop's own mail keeps its order
    assert next(m for m in doc["messages"] if m["id"] == pk["p1"])["severity"] == "P1"


def _children(daemon: DaemonProcess) -> list[int]:
    pid = daemon.proc.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _worker_commands(daemon: DaemonProcess) -> list[bytes]:
    return [Path(f"/proc/{child}/cmdline").read_bytes() for child in _children(daemon)]


def test_the_event_loop_lag_is_measured_and_the_work_runs_in_worker_processes(start_daemon):
    daemon = start_daemon()
    daemon.send(make_message(subject="All our apps are down", body="Every app returns 502."))
    daemon.wait_settled(1)
    assert daemon.metric("emergencyd_event_loop_lag_seconds_count") > 0
    commands = _worker_commands(daemon)
    assert sum(b"emergencyd.escalation.worker_process" in command for command in commands) == 2, commands


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_no_worker_process_outlives_the_daemon(start_daemon, stop):
    """Stopped, the daemon ends its workers; killed, each worker sees the end of its input and exits."""
    daemon = start_daemon()
    daemon.send(make_message(subject="All our apps are down", body="Every app returns 502."))
    daemon.wait_settled(1)
    workers = _children(daemon)
    assert len(workers) == 2 and all(process_running(pid) for pid in workers)
    if stop == "SIGTERM":
        assert daemon.stop() == 0
    else:
        daemon.proc.kill()
        daemon.proc.wait(10)
    deadline = time.monotonic() + 20
    while any(process_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_running(pid) for pid in workers), [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers]


def test_the_worker_processes_need_no_shared_memory(tmp_path):
    """A host without a writable /dev/shm (which multiprocessing's locks need): the workers still run."""
    if os.geteuid() != 0:
        message = "needs root for a mount namespace with a read-only /dev/shm"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    read_only_shm = ("unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o ro tmpfs /dev/shm && exec "$@"', "sh")
    config = write_config(tmp_path, dry_run=True, policy=True)
    daemon = DaemonProcess(config=config, env=base_env(), log_path=tmp_path / "daemon.log",
                           wrapper=(require_tool("unshare"), *read_only_shm[1:])).start()
    try:
        daemon.send(make_message(subject="All our apps are down", body="Every app returns 502."))
        [message] = daemon.wait_settled(1)["messages"]
        log = daemon.log_text()
        # The wrapper's sh execs the daemon: its children are the workers.
        commands = _worker_commands(daemon)
    finally:
        daemon.stop()
    assert message["severity"] == "P1" and message["state"] == DONE
    assert "worker processes unavailable" not in log
    assert sum(b"emergencyd.escalation.worker_process" in command for command in commands) == 2, commands


def _a_storm_with_a_p1_halfway(daemon, mails: int, send_one: Callable[[smtplib.SMTP, int], None]) -> tuple[dict, dict]:
    """A storm's mails over one session, another tenant's P1 halfway. Once all is settled, every mail was
    decided, the storm's in arrival order, and the storm's mail stored before the P1 was still (mostly)
    undecided when the P1 was decided. Returns the status document and the P1's record."""
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        for number in range(mails):
            if number == mails // 2:
                client.sendmail("ops@other-tenant.example", [RECIPIENT], make_message(
                    subject="All our apps are down", sender="ops@other-tenant.example",
                    body="All our production apps return 502.", message_id="<p1@other>"))
            send_one(client, number)
    doc = daemon.wait_settled(mails + 1, timeout=120)
    decided = [r["message_pk"] for r in log_records(daemon.log_text()) if r.get("event") == "decided"]
    assert sorted(decided) == list(range(1, mails + 2))
    p1 = next(m for m in doc["messages"] if m["subject"] == "All our apps are down")
    storm = [pk for pk in decided if pk != p1["id"]]
    assert storm == sorted(storm)
    assert decided.index(p1["id"]) < p1["id"] - 1, (decided.index(p1["id"]), p1["id"])
    return doc, p1


def test_a_storm_over_smtp_is_all_decided_after_it_and_a_new_sender_is_not_held_back(start_daemon):
    """While mail arrives, the runner holds a storm's later mail back (daemon/runner.py); none of it is
    forgotten once the storm ends, and another sender's first mail is never among what is held."""
    def alert(client: smtplib.SMTP, number: int) -> None:
        client.sendmail("monitoring@loop.example", [RECIPIENT], make_message(
            subject=f"ALERT #{number} disk usage", sender="monitoring@loop.example",
            body="disk usage 91% " * 100, message_id=f"<loop-{number}@loop.example>"))
    _a_storm_with_a_p1_halfway(start_daemon(policy=True), 240, alert)


def _new_tenants_down(daemon, tenants: int) -> dict:
    """A P1 from each of `tenants` new tenants over one session, as fast as it goes; the settled status."""
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        for number in range(tenants):
            sender = f"ops@tenant-{number}.example"
            client.sendmail(sender, [RECIPIENT], make_message(
                subject=f"Checkout {number} is down", sender=sender, message_id=f"<down-{number}@tenant.example>",
                body="All our production apps return 502 since 02:10."))
    return daemon.wait_settled(tenants, timeout=60)


def test_while_mail_arrives_new_senders_mail_starts_at_its_pace_and_all_of_it_once_mail_stops(start_daemon):
    """Deciding a new sender's mail costs CPU that every arriving mail's 250 shares: while mail arrives, first
    mails start at the configured pace after a burst (daemon/runner.py), and none of what waited is forgotten
    once mail stops arriving. Here the pace is one mail a hundred seconds after two at once, so what waited was
    decided when intake went quiet, not by the pace."""
    daemon = start_daemon(policy=True, escalation=(
        "first_mails_per_second_while_mail_arrives = 0.01\nfirst_mails_at_once_while_mail_arrives = 2\n"))
    doc = _new_tenants_down(daemon, 20)
    assert [m["severity"] for m in doc["messages"]] == ["P1"] * 20
    paced = daemon.metric("emergencyd_first_mails_paced_total")
    assert 1 <= paced <= 20 - 2, paced
    events = [r for r in log_records(daemon.log_text()) if "pace" in r.get("event", "")]
    assert events[0]["event"] == "new senders' mail is decided at the pace of first mails while mail arrives", events
    released = [r["waited"] for r in events if r["event"].startswith("mail stopped arriving")]
    assert sum(released) == paced, events       # all that waited started once mail stopped, none of it lost


def test_without_a_pace_every_new_senders_mail_starts_at_once(start_daemon):
    daemon = start_daemon(policy=True, escalation="first_mails_per_second_while_mail_arrives = 0\n")
    _new_tenants_down(daemon, 20)
    assert daemon.metric("emergencyd_first_mails_paced_total") == 0


def _bounce(number: int) -> bytes:
    """A delivery report from a mail system of its own, as a mass mailing's bounces come back."""
    host = f"mx{number}.isp{number % 7}.example"
    return (f"From: MAILER-DAEMON@{host}\r\nTo: newsletter@tenant.example\r\nSubject: Undelivered Mail Returned "
            f"to Sender\r\nMessage-ID: <dsn-{number}@{host}>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report;"
            f' report-type=delivery-status; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n<user{number}'
            f"@customer.example>: host {host} said: 550 5.1.1 User unknown\r\n--b\r\nContent-Type: "
            f"message/delivery-status\r\n\r\nReporting-MTA: dns; {host}\r\n\r\nFinal-Recipient: rfc822; user{number}"
            "@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n").encode()


def test_bounces_from_many_mail_systems_take_one_turn_and_a_tenants_p1_goes_first(start_daemon):
    """Mail with a null reverse path (MAIL FROM:<>) is decided in one turn, whichever mail system sent
    it: a thousand mail systems bouncing a mass mailing are one storm, not a thousand new senders."""
    doc, p1 = _a_storm_with_a_p1_halfway(start_daemon(policy=True), 240,
                                         lambda client, number: client.sendmail("", [RECIPIENT], _bounce(number)))
    assert p1["severity"] == "P1"
    assert {m["verdict"]["category"] for m in doc["messages"] if m["id"] != p1["id"]} == {"noise:bounce"}


def test_only_mail_naming_an_encoded_id_waits_for_another_senders_earlier_mail(tmp_path, fake_dns, signing_key):
    """A mail whose decision takes long (its DKIM key lookup goes unanswered) holds up no other sender's
    mail, except a later mail naming a Zendesk encoded id, which may have to learn that id from it."""
    private, _ = signing_key
    fake_dns.drop("gone._domainkey.tenant.example")
    config = write_config(tmp_path, dry_run=True, policy=True, extra=(
        f'[trust]\nverify_dkim = true\ndkim_dns_server = "{fake_dns.address}"\ndkim_timeout_seconds = 3\n'))
    mails = {
        "slow": signed(private, selector=b"gone", message=make_message(
            subject="Re: Database is down", sender="carol@tenant.example", message_id="<slow@tenant.example>",
            body="Any news? [7ZVQ3M-J7K4]")),
        "unrelated": make_message(subject="All our apps are down", sender="ops@other.example",
                                  message_id="<p1@other.example>", body="All our production apps return 502."),
        "naming the id": make_message(subject="Database", sender="cto@third.example",
                                      message_id="<id@third.example>", body="Please escalate. [7ZVQ3M-J7K4]"),
    }
    doc, decided, pk = _decided_after_a_start(tmp_path, config, mails)
    slow = next(m for m in doc["messages"] if m["id"] == pk["slow"])
    assert slow["verdict"]["sender_trust"]["dkim_checked"] == "temperror"       # it did wait on DNS
    assert decided == [pk["unrelated"], pk["slow"], pk["naming the id"]], (decided, pk)
    named = next(m for m in doc["messages"] if m["id"] == pk["naming the id"])
    assert named["relation"] == RelationKind.THREAD                              # the id learnt from the slow mail
