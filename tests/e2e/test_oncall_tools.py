"""The on-call engineer's commands at the bad moment: with the daemon stopped and its credentials gone, a page
that failed for good and must go out once its cause is fixed, a dry run that must not look green, and errors
that must be one line. Every case here was seen failing before."""
import json
import subprocess
import sys

import pytest

from emergencyd.daemon.cli import RETRY_COMMAND
from emergencyd.escalation.records import DONE, FAILED, PAGE, STEP_DONE, STEP_FAILED, StepOutcome
from tests.harness import (
    ROOT,
    NotifySocket,
    base_env,
    make_message,
    run_cli,
    wait_until,
    write_config,
)

SYSTEMD_CREDENTIALS = (  # where the unit's credentials are, and are not while the service is stopped
    'token_file = "/run/credentials/emergencyd.service/zendesk-token"\n')


def emergencyd(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emergencyd.daemon.cli", *args], cwd=ROOT, env=env or base_env(),
                          input=stdin, capture_output=True, timeout=60)


def test_status_show_and_classify_work_with_the_daemon_stopped_and_its_credentials_gone(tmp_path, live_daemon,
                                                                                        zendesk, pagerduty):
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject="All our apps are down", message_id="<down@tenant.example>"))
    [message] = daemon.wait_settled(1)["messages"]
    assert daemon.stop() == 0
    # As in production: the token in a systemd credential, which is not there while the service is stopped,
    # and no secret in the environment.
    config = daemon.config
    config.write_text(config.read_text().replace("[zendesk]\n", "[zendesk]\n" + SYSTEMD_CREDENTIALS, 1))
    env = base_env()
    assert run_cli(config, "check-config", env=env, check=False).returncode == 2    # the daemon needs them
    status = run_cli(config, "status", env=env)
    assert "All our apps are down" in status.stdout and "from tenant@example.net; paged at " in status.stdout
    shown = run_cli(config, "show", str(message["id"]), env=env).stdout
    assert "MAIL FROM: <tenant@example.net>" in shown and "Message-ID: <down@tenant.example>" in shown
    assert f"{PAGE}: {STEP_DONE} after 1 attempt(s)" in shown
    assert json.loads(run_cli(config, "show", str(message["id"]), "--json", env=env).stdout)["id"] == message["id"]
    assert run_cli(config, "show", "999", env=env, check=False).returncode == 1
    mail = tmp_path / "p1.eml"
    mail.write_bytes(make_message(subject="All our apps are down"))
    assert "decided by" in run_cli(config, "classify", "--text", str(mail), env=env).stdout
    piped = emergencyd("classify", "--config", str(config), "-", env=env, stdin=mail.read_bytes())
    assert piped.returncode == 0 and json.loads(piped.stdout)["severity"] == "P1", piped.stderr


def test_a_page_that_failed_for_good_is_retried_once_its_cause_is_fixed(live_daemon, zendesk, pagerduty):
    pagerduty.inject_status(400, path="/v2/enqueue", times=None)      # a revoked routing key: refused for good
    daemon = live_daemon(policy=True)
    daemon.send(make_message(subject="All our apps are down", message_id="<one@tenant.example>"))
    daemon.send(make_message(subject="Database is down", body="Our database is down, connection refused.",
                             sender="dba@other.example", message_id="<two@other.example>"))
    messages = daemon.wait_settled(2)["messages"]
    assert {m["state"] for m in messages} == {FAILED} and not pagerduty.incidents()
    assert all(m["steps"][PAGE]["state"] == STEP_FAILED for m in messages)
    text = daemon.cli("status").stdout
    assert f"{PAGE} {STEP_FAILED} after" in text             # the page's own error, not only the ticket's
    assert f"; page {STEP_FAILED}" in text                   # and, at a glance, that no one was paged
    pagerduty.clear_faults()                                  # the key is fixed
    first = next(m for m in messages if m["message_id"] == "one@tenant.example")
    assert "retried" not in daemon.cli(RETRY_COMMAND, "999", check=False).stdout
    assert "due again" in daemon.cli(RETRY_COMMAND, str(first["id"])).stdout
    wait_until(lambda: len(pagerduty.incidents()) == 1, "the retried page")
    assert "1 failed message(s) handed back" in daemon.cli(RETRY_COMMAND, "--failed").stdout
    messages = daemon.wait_settled(2)["messages"]
    assert {m["state"] for m in messages} == {DONE}
    assert len(pagerduty.incidents()) == 2 and len(zendesk.tickets()) == 2        # nothing made twice
    assert daemon.cli(RETRY_COMMAND, str(first["id"]), check=False).returncode == 1     # nothing failed any more
    assert "retried by hand" in daemon.cli("show", str(first["id"])).stdout


def test_a_dry_run_is_never_green(tmp_path, start_daemon):
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = start_daemon(dry_run=True, policy=True, env=base_env(NOTIFY_SOCKET=notify.path))
        assert notify.wait_for("READY")["STATUS"].startswith("DRY RUN: nothing is sent")
        daemon.send(make_message(subject="All our apps are down"))
        daemon.wait_settled(1)
        assert daemon.metric("emergencyd_dry_run") == 1
        assert daemon.metric("process_resident_memory_bytes") > 0 and daemon.metric("process_open_fds") > 0
        assert daemon.metric("emergencyd_escalation_steps_total", integration="pagerduty", step=PAGE,
                             outcome=StepOutcome.DRY_RUN) == 1
        assert daemon.metric("emergencyd_escalation_steps_total", integration="pagerduty", step=PAGE,
                             outcome=StepOutcome.SUCCESS) == 0
        assert daemon.metric("emergencyd_integration_last_success_timestamp_seconds", integration="pagerduty") == 0
        status, body = daemon.http_get("/readyz")
        assert status == 200 and "dry run" in json.loads(body)["details"]["mode"]
    finally:
        notify.close()


def test_the_version_and_the_config_wherever_it_is_given(tmp_path):
    assert emergencyd("--version").stdout.decode().startswith("emergencyd ")
    config = write_config(tmp_path, dry_run=True)
    assert emergencyd("--config", str(config), "check-config").returncode == 0           # before the command
    assert emergencyd("check-config", env=base_env(EMERGENCYD_CONFIG=str(config))).returncode == 0
    wrong = emergencyd("status", "--limit", "-1", "--config", str(config))
    assert wrong.returncode == 2 and b"must be 0 or more" in wrong.stderr


@pytest.mark.parametrize(("text", "error"), [
    (b"dry_run = true\n# caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    (b"", "empty: copy the shipped config.toml"),
    (b'[smtp]\nrecipients = []\n', "smtp.recipients: empty"),
    (b'[smtp]\nrecipients = ["e@example.org"]\nlisten = "127.0.0.1:9464"\n', "clashes with smtp.listen"),
])
def test_a_bad_config_is_one_line_naming_what_is_wrong(tmp_path, text, error):
    path = tmp_path / "config.toml"
    path.write_bytes(text)
    checked = emergencyd("check-config", "--config", str(path))
    assert checked.returncode == 2 and error in checked.stderr.decode()
    assert len(checked.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in checked.stderr


@pytest.mark.parametrize("command", ["run", "inject"])
def test_a_store_whose_folder_cannot_be_made_is_exit_3_naming_it(tmp_path, command):
    config = write_config(tmp_path, dry_run=True, store="")
    config.write_text(config.read_text().replace('path = "var/store.sqlite3"', 'path = "/proc/none/store.sqlite3"'))
    mail = tmp_path / "m.eml"
    mail.write_bytes(make_message())
    ran = emergencyd(command, "--config", str(config), *([str(mail)] if command == "inject" else []))
    stderr = ran.stderr.decode()
    assert ran.returncode == 3 and "/proc/none/store.sqlite3" in stderr and "Traceback" not in stderr, stderr


def test_classify_says_the_deciding_rule_once_and_no_ticket_for_noise(tmp_path):
    config = write_config(tmp_path, dry_run=True, policy=True)
    p1, noise = tmp_path / "p1.eml", tmp_path / "ooo.eml"
    p1.write_bytes(make_message(subject="All our apps are down"))
    noise.write_bytes(make_message(subject="Automatic reply: away", extra_headers="Auto-Submitted: auto-replied\r\n"))
    text = run_cli(config, "classify", "--text", str(p1)).stdout
    assert text.count("matched 'apps are down'") == 1, text
    explained = json.loads(run_cli(config, "classify", str(noise)).stdout)
    assert explained["suppressed"] and explained["ticket_subject"] is None and explained["zendesk_priority"] is None
    assert "no ticket" in run_cli(config, "classify", "--text", str(noise)).stdout


def test_bash_completes_the_commands():
    script = emergencyd("--print-completion", "bash").stdout.decode()
    completed = subprocess.run(["bash", "-c", 'source /dev/stdin; COMP_WORDS=(emergencyd re); COMP_CWORD=1; '
                                'COMP_LINE="emergencyd re"; COMP_POINT=${#COMP_LINE}; _shtab_emergencyd; '
                                'echo "${COMPREPLY[@]}"'], input=script, capture_output=True, text=True, timeout=30)
    assert completed.stdout.split() == ["release", "rearm", RETRY_COMMAND], completed.stderr
