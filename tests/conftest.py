"""Shared fixtures: the test CA, the HTTPS fakes, and the daemon as a subprocess; and the unit / e2e marks."""
from __future__ import annotations

import inspect

import pytest

from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.tls import TestCA
from tests.fakes.zendesk import FakeZendesk
from tests.harness import (
    API_TOKEN,
    ZENDESK_EMAIL,
    ZENDESK_TOKEN,
    DaemonProcess,
    base_env,
    live_env,
    write_config,
)


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def ca_file(ca, tmp_path):
    return ca.write_ca_pem(tmp_path)


@pytest.fixture
def zendesk(ca):
    with FakeZendesk(ca=ca, email=ZENDESK_EMAIL, token=ZENDESK_TOKEN) as fake:
        yield fake
    assert fake.errors == [], f"the fake Zendesk failed (a bug in the fake, answered 500): {fake.errors}"


@pytest.fixture
def pagerduty(ca):
    with FakePagerDuty(ca=ca, api_token=API_TOKEN) as fake:
        yield fake
    assert fake.errors == [], f"the fake PagerDuty failed (a bug in the fake, answered 500): {fake.errors}"


@pytest.fixture
def start_daemon(tmp_path):
    """start_daemon(dry_run=..., ...) -> a running DaemonProcess; every one is stopped afterwards."""
    started: list[DaemonProcess] = []

    def start(*, env: dict[str, str] | None = None, **config_args) -> DaemonProcess:
        dry_run = config_args.pop("dry_run", True)
        config = write_config(tmp_path, dry_run=dry_run, **config_args)
        process = DaemonProcess(config=config, env=env or (base_env() if dry_run else live_env()),
                                log_path=tmp_path / "daemon.log")
        started.append(process)
        return process.start()

    yield start
    for process in started:
        if process.proc and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


@pytest.fixture
def live_daemon(start_daemon, zendesk, pagerduty, ca_file):
    """A daemon with dry_run off, wired to both fakes."""
    def start(**config_args) -> DaemonProcess:
        return start_daemon(dry_run=False, zendesk_url=zendesk.url, pagerduty_url=pagerduty.url,
                            ca_file=ca_file, **config_args)
    return start


@pytest.fixture
def dovecot(ca):
    """A running throwaway Dovecot on 127.0.0.1 (tests/dovecot.py); its log is printed if the test fails."""
    from tests.dovecot import Dovecot, dovecot_binary
    server = Dovecot(ca, dovecot=dovecot_binary())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        print(server.log_tail())   # pytest shows a test's captured output only when it fails
        server.cleanup()


@pytest.fixture(scope="session")
def rspamd():
    """A real throwaway rspamd scanner on 127.0.0.1 (tests/rspamd.py), one per session: it takes 10-30 s to start."""
    from tests.rspamd import Rspamd
    server = Rspamd()
    try:
        yield server.start()
    finally:
        server.stop()


# A test is end to end when it drives real processes: the daemon, its fakes, Dovecot, rspamd, Postfix, or a
# CLI run. `pytest -m unit` runs the rest (seconds); `pytest -m e2e` the end-to-end ones.
E2E_FIXTURES = {"zendesk", "pagerduty", "start_daemon", "live_daemon", "dovecot", "rspamd"}
E2E_SIGNS = ("DaemonProcess", "run_cli(", "subprocess.", "Popen(", "smtplib.SMTP(", "FakeRelay(", "postfix")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: a test of code in this process only")
    config.addinivalue_line("markers", "e2e: a test through real processes (the daemon, fakes, servers)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    sources: dict[object, str] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module not in sources:
            sources[module] = inspect.getsource(module) if module is not None else ""
        fixtures = set(getattr(item, "fixturenames", ()))
        end_to_end = bool(fixtures & E2E_FIXTURES) or any(sign in sources[module] for sign in E2E_SIGNS)
        item.add_marker(pytest.mark.e2e if end_to_end else pytest.mark.unit)

