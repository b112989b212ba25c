"""Config: the shipped file is valid, and every mistake is reported with its key."""
from pathlib import Path

import pytest

from emergencyd.daemon.config.model import ConfigError, Secret, load_config
from tests.harness import ROOT, base_env, run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_is_the_safe_default():
    config = load_config(ROOT / "config.toml", environ={})
    assert config.dry_run is True
    assert str(config.smtp.listen) == "127.0.0.1:2525"
    assert str(config.metrics.listen) == "127.0.0.1:9464"
    assert config.store.path == ROOT / "var" / "emergencyd.sqlite3"
    assert config.pagerduty.events_url == "https://events.pagerduty.com"
    assert config.zendesk.token is None


@pytest.mark.parametrize("text, message", [
    ("dry_run = 'yes'", "dry_run: expected true or false"),
    ("[smtp]\nlisten = 'localhost'", "smtp.listen: expected HOST:PORT"),
    ("[smtp]\nrecipients = ['not-an-address']", "smtp.recipients: 'not-an-address' is not an email"),
    ("[smtp]\nmax_message_bytes = 10", "smtp.max_message_bytes: must be at least 1024"),
    ("[smtp]\nmax_mesage_bytes = 10000", "smtp.max_mesage_bytes: unknown key"),
    ("[zendesk]\nurl = 'http://acme.zendesk.com'", "zendesk.url: expected an https:// URL"),
    ("[pagerduty]\nca_file = 'missing.pem'", "pagerduty.ca_file:"),
    ("[escalation]\nretry_initial_seconds = 'fast'", "escalation.retry_initial_seconds: expected a number"),
    ("[surprise]\nx = 1", "surprise: unknown key"),
    ("[imap]\nenabled = true", "imap.host: required"),
    ("[imap]\nenabled = true\nhost = 'imap.example.org'\nusername = 'a@example.org'",
     "imap: a password (EMERGENCYD_IMAP_PASSWORD or imap.password_file) is required"),
    ("[imap]\nenabled = true\nhost = 'imap.example.org'", "imap.username: required"),
    ("[imap]\nenabled = true\nhost = 'imap.example.org'\ntls = false", "imap.tls: false is only allowed for a loopback"),
    ("[imap]\nenabled = true\nhost = '127.0.0.1'\nprocessed_mailbox = 'INBOX'", "imap.processed_mailbox:"),
    ("[imap]\nidle_renew = 60", "imap.idle_renew: unknown key"),
    ("[smtp]\nenabled = false", "no way for mail to come in"),
    ("dry_run = [", "not valid TOML"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert message in str(info.value)


def test_live_mode_without_credentials_refuses_to_start(tmp_path):
    path = write(tmp_path, "dry_run = false\n[smtp]\nrecipients = ['e@example.org']\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    text = str(info.value)
    assert "EMERGENCYD_ZENDESK_TOKEN" in text and "EMERGENCYD_PAGERDUTY_ROUTING_KEY" in text


def test_secrets_from_environment_and_files_never_show(tmp_path):
    (tmp_path / "key").write_text("routing-key-from-file\n")
    path = write(tmp_path, "dry_run = false\n[smtp]\nrecipients = ['e@example.org']\n"
                           "[zendesk]\nemail = 'a@example.org'\n[pagerduty]\nrouting_key_file = 'key'\n")
    config = load_config(path, environ={"EMERGENCYD_ZENDESK_TOKEN": "zd-secret"})
    assert config.zendesk.token == Secret("zd-secret")
    assert config.pagerduty.routing_key.value == "routing-key-from-file"
    shown = repr(config) + str(config.pagerduty.routing_key)
    assert "zd-secret" not in shown and "routing-key-from-file" not in shown


def test_environment_overrides_the_credential_file(tmp_path):
    (tmp_path / "key").write_text("from-file")
    path = write(tmp_path, "[smtp]\nrecipients = ['e@example.org']\n[pagerduty]\nrouting_key_file = 'key'\n")
    config = load_config(path, environ={"EMERGENCYD_PAGERDUTY_ROUTING_KEY": "from-env"})
    assert config.pagerduty.routing_key.value == "from-env"


def test_check_config_command(tmp_path):
    ok = run_cli(ROOT / "config.toml", "check-config", env=base_env())
    assert ok.returncode == 0 and "valid (dry run" in ok.stdout
    bad = run_cli(write(tmp_path, "[smtp]\nlisten = 'nowhere'\n"), "check-config", env=base_env(), check=False)
    assert bad.returncode == 2
    assert "smtp.listen" in bad.stderr and "Traceback" not in bad.stderr


def test_imap_settings_and_password_from_the_environment(tmp_path):
    config = load_config(write(tmp_path, "[smtp]\nenabled = false\n[imap]\nenabled = true\n"
                                          "host = 'imap.gmail.com'\nusername = 'emergency@example.org'\n"),
                         environ={"EMERGENCYD_IMAP_PASSWORD": "app-password-xyz"})
    imap = config.imap
    assert (imap.port, imap.tls, imap.mailbox, imap.processed_mailbox) == (993, True, "INBOX", "Processed")
    assert imap.password == Secret("app-password-xyz")
    assert "app-password-xyz" not in repr(config)
    assert config.smtp.enabled is False
    plain = load_config(write(tmp_path, "[smtp]\nenabled = false\n[imap]\nenabled = true\nhost = '127.0.0.1'\ntls = false\n"
                                         "username = 'u'\n"), environ={"EMERGENCYD_IMAP_PASSWORD": "p"})
    assert plain.imap.port == 143


def test_imap_password_from_the_environment_wins_over_the_file(tmp_path):
    (tmp_path / "imap-password").write_text("from-file\n")
    path = write(tmp_path, "[smtp]\nenabled = false\n[imap]\nenabled = true\nhost = 'imap.example.org'\nusername = 'u@example.org'\n"
                           "password_file = 'imap-password'\n")
    assert load_config(path, environ={}).imap.password.value == "from-file"
    assert load_config(path, environ={"EMERGENCYD_IMAP_PASSWORD": "from-env"}).imap.password.value == "from-env"


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True),
    ("127.0.0.1.nip.io", False), ("127.mail.example.org", False), ("mail.example.org", False),
    ("10.0.0.5", False),
])
def test_plain_imap_only_on_loopback(tmp_path, host, allowed):
    path = write(tmp_path, f"[smtp]\nenabled = false\n[imap]\nenabled = true\nhost = '{host}'\ntls = false\nusername = 'u'\n")
    if allowed:
        assert load_config(path, environ={"EMERGENCYD_IMAP_PASSWORD": "p"}).imap.tls is False
    else:
        with pytest.raises(ConfigError, match="imap.tls"):
            load_config(path, environ={"EMERGENCYD_IMAP_PASSWORD": "p"})
