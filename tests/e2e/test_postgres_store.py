"""The daemon on PostgreSQL (`[store] backend = "postgresql"`), on the suite's own throwaway cluster.

Mail in over SMTP, ticket and page out to the HTTPS fakes, with the store in the database; `check-config`
asking the database; the database lost and back: 451 and a not-ready /readyz meanwhile, then the mail
accepted during the gap's end escalated once; and the password nowhere in what the daemon prints.
"""
import smtplib
import threading
import time

from emergencyd.daemon.store.postgres_schema import POSTGRES_MIGRATIONS
from emergencyd.escalation.records import DONE
from tests.harness import assert_one_of_everything, live_env, make_message, run_cli, wait_until, write_config
from tests.postgres import PASSWORD


def postgres_store(dsn: str) -> str:
    return f'backend = "postgresql"\ndsn = "{dsn}"\n'


def env_with_password(**more: str) -> dict[str, str]:
    return {**live_env(), "EMERGENCYD_STORE_PASSWORD": PASSWORD, **more}


def test_a_p1_on_postgresql_gives_one_ticket_and_one_page(live_daemon, zendesk, pagerduty, postgres_cluster):
    dsn = postgres_cluster.new_database()
    daemon = live_daemon(store=postgres_store(dsn), env=env_with_password())
    daemon.send(make_message(subject="Apps down", body="All our apps return 502 since 02:10."))
    daemon.send(make_message(subject="Apps down", body="All our apps return 502 since 02:10."))   # a retry
    message = assert_one_of_everything(daemon, zendesk, pagerduty)
    assert message["deliveries"] == 2
    stored = postgres_cluster.query_database(dsn, "SELECT e.state, m.deliveries FROM escalations e"
                                                  " JOIN messages m ON m.id = e.message_pk")
    assert stored == f"{DONE}|2"
    checked = daemon.cli("check-config").stdout
    assert f"answers, schema version {len(POSTGRES_MIGRATIONS)}" in checked
    printed = daemon.log_text() + checked + daemon.cli("status").stdout
    assert PASSWORD not in printed


def test_a_password_in_the_dsn_is_refused_and_an_unreachable_database_named(tmp_path, postgres_cluster):
    dsn = postgres_cluster.new_database()
    config = write_config(tmp_path, dry_run=True, store=postgres_store(f"{dsn} password={PASSWORD}"))
    refused = run_cli(config, "check-config", check=False)
    assert refused.returncode == 2 and "store.dsn: holds a password" in refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr
    config = write_config(tmp_path, dry_run=True, store=postgres_store(dsn))
    wrong = run_cli(config, "check-config", env=env_with_password(EMERGENCYD_STORE_PASSWORD="not-it"), check=False)
    assert wrong.returncode == 3 and "does not answer" in wrong.stderr and "password authentication failed" in wrong.stderr
    fresh = run_cli(config, "check-config", env=env_with_password())
    assert "answers, empty; the first start creates the schema" in fresh.stdout


def test_postgresql_restarted_mid_storm_gives_451s_then_everything_is_escalated_once(
        live_daemon, zendesk, pagerduty, postgres):
    daemon = live_daemon(store=postgres_store(postgres.dsn), env=env_with_password(), policy=True,
                         extra_zendesk="requests_per_minute = 60000\n")
    storm = [make_message(subject=f"Alert #{n}: checkout-api 5xx above threshold", sender="alerts@loop.example",
                          message_id=f"<storm-{n}@loop.example>", body="checkout-api 5xx at 12%")
             for n in range(150)]
    refused: list[int] = []
    outage = threading.Event()

    def send_like_an_mta() -> None:
        """Each mail until it is accepted; a 451 is retried after a pause, as a sending server does."""
        for n, raw in enumerate(storm):
            if n == 50:
                outage.set()              # the database goes away a third of the way in
            while True:
                try:
                    daemon.send(raw)
                    break
                except smtplib.SMTPDataError as exc:
                    assert exc.smtp_code == 451 and b"4.3.0" in exc.smtp_error, exc
                    refused.append(n)
                    time.sleep(0.2)
    sender = threading.Thread(target=send_like_an_mta)
    sender.start()
    outage.wait(30)
    postgres.stop()
    wait_until(lambda: daemon.http_get("/readyz")[0] == 503, "/readyz to say not ready", patience=20)
    wait_until(lambda: len(refused) >= 3, "451s while the database is away", patience=20)
    postgres.start()
    sender.join(120)
    assert not sender.is_alive()
    doc = daemon.wait_settled(150, timeout=60)
    # One message per mail. A commit that reached the database as it stopped, whose answer was lost, was told 451
    # and re-sent: a second delivery of the same message, never a second one.
    assert doc["counts"] == {DONE: 150} and len({m["message_id"] for m in doc["messages"]}) == 150
    assert sum(m["deliveries"] for m in doc["messages"]) <= 150 + len(refused)
    assert len(zendesk.tickets()) == 1 and len(pagerduty.incidents()) == 1     # the loop: one incident
    assert PASSWORD not in daemon.log_text()


def test_a_sqlite_store_is_copied_into_postgresql_and_goes_on_from_there(start_daemon, tmp_path, postgres_cluster):
    single = start_daemon(dry_run=True)
    for n in range(3):
        single.send(make_message(subject=f"Apps down {n}", message_id=f"<copy-{n}@example.net>"))
    before = single.wait_settled(3)["messages"]
    assert single.stop() == 0
    sqlite_path = single.config.parent / "var" / "store.sqlite3"
    dsn = postgres_cluster.new_database()
    (tmp_path / "shared").mkdir()
    config = write_config(tmp_path / "shared", dry_run=True, store=postgres_store(dsn))
    copied = run_cli(config, "store", "copy", "--from", f"sqlite:{sqlite_path}", "--to", "postgresql",
                     env=env_with_password())
    assert "3 messages" in copied.stdout and "3 escalations" in copied.stdout
    twice = run_cli(config, "store", "copy", "--from", f"sqlite:{sqlite_path}", "--to", "postgresql",
                    env=env_with_password(), check=False)
    assert twice.returncode == 3 and "already holds mail" in twice.stderr
    shared = start_daemon(dry_run=True, replica="shared", store=postgres_store(dsn), env=env_with_password())
    after = shared.status()["messages"]
    keys = ("id", "message_id", "state", "dedup_key", "relation", "decision")
    assert [{k: m[k] for k in keys} for m in after] == [{k: m[k] for k in keys} for m in before]
    shared.send(make_message(subject="Apps down again", message_id="<copy-next@example.net>"))
    newest = shared.wait_settled(4)["messages"][0]
    assert newest["message_id"] == "copy-next@example.net" and newest["id"] == 4     # the ids go on
