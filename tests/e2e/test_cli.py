"""inject and status: the operator's commands, run as subprocesses."""
import json

from tests.harness import base_env, make_message, run_cli, write_config


def test_inject_takes_the_durable_path_and_status_shows_it(tmp_path, start_daemon):
    first = tmp_path / "first.eml"
    first.write_bytes(make_message(subject="API unavailable", message_id="<a@example.net>"))
    second = tmp_path / "second.eml"
    second.write_bytes(make_message(subject="Still down", message_id="<b@example.net>"))
    daemon = start_daemon()
    out = daemon.cli("inject", str(first), str(second), str(first)).stdout.splitlines()
    assert out[0].endswith("stored as message 1") and out[1].endswith("stored as message 2")
    assert out[2].endswith("duplicate of message 1")
    doc = daemon.wait_settled(2)
    assert doc["counts"] == {"done": 2}
    by_subject = {m["subject"]: m for m in doc["messages"]}
    assert by_subject["API unavailable"]["source"] == "inject"
    assert by_subject["API unavailable"]["deliveries"] == 2
    text = daemon.cli("status").stdout
    assert "done 2" in text and by_subject["Still down"]["dedup_key"] in text


def test_inject_reports_unreadable_files(tmp_path):
    config = write_config(tmp_path, dry_run=True)
    result = run_cli(config, "inject", str(tmp_path / "missing.eml"), env=base_env(), check=False)
    assert result.returncode == 1 and "missing.eml: cannot read" in result.stderr


def test_status_lists_ticket_and_dedup_key_for_every_message(live_daemon, zendesk, pagerduty):
    daemon = live_daemon()
    # Three incidents of their own: subjects that differed only in a number would be one loop.
    for n, subject in enumerate(("Database outage", "Login page broken", "Builds hang")):
        daemon.send(make_message(subject=subject, message_id=f"<o{n}@example.net>"))
    doc = daemon.wait_settled(3)
    tickets = {t["external_id"]: t["id"] for t in zendesk.tickets()}
    for message in doc["messages"]:
        assert message["ticket_id"] == tickets[message["dedup_key"]]
    text = daemon.cli("status").stdout
    for message in doc["messages"]:
        assert f"{message['ticket_id']:>8}  {message['dedup_key']}" in text
        assert message["decision"].startswith("P1 (unclassified)")
    json.dumps(doc)   # machine-readable as promised


def test_status_before_any_mail(tmp_path):
    config = write_config(tmp_path, dry_run=True)
    result = run_cli(config, "status", env=base_env(), check=False)
    assert result.returncode == 3 and "no store" in result.stderr


def test_live_mode_without_credentials_will_not_run(tmp_path):
    config = write_config(tmp_path, dry_run=False)
    result = run_cli(config, "run", env=base_env(), check=False)
    assert result.returncode == 2
    assert "EMERGENCYD_PAGERDUTY_ROUTING_KEY" in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_startup_error(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, dry_run=True)
        config.write_text(config.read_text().replace('listen = "127.0.0.1:0"\nrecipients',
                                                     f'listen = "127.0.0.1:{port}"\nrecipients'))
        result = run_cli(config, "run", env=base_env(), check=False)
    assert result.returncode == 4
    assert f"cannot listen for SMTP on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_a_corrupt_store_is_a_clear_error(tmp_path):
    config = write_config(tmp_path, dry_run=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "store.sqlite3").write_bytes(b"this is not a database" * 100)
    result = run_cli(config, "run", env=base_env(), check=False)
    assert result.returncode == 3
    assert "cannot open store" in result.stderr and "Traceback" not in result.stderr
