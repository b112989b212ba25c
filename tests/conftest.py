"""Shared fixtures: the test CA, the HTTPS fakes, and the daemon as a subprocess; and the unit / e2e marks."""
from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.dns import FakeDns
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
from tests.postgres import Postgres


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

    def start(*, env: dict[str, str] | None = None, replica: str | None = None, **config_args) -> DaemonProcess:
        """`replica` names a second (third ...) daemon: its own directory, and its name in [replica]."""
        dry_run = config_args.pop("dry_run", True)
        directory = tmp_path
        if replica is not None:
            directory = tmp_path / replica
            directory.mkdir(exist_ok=True)
            config_args["extra"] = f'{config_args.get("extra", "")}\n[replica]\nname = "{replica}"\n' \
                f'lease_seconds = {config_args.pop("lease_seconds", 2)}\n'
        config = write_config(directory, dry_run=dry_run, **config_args)
        process = DaemonProcess(config=config, env=env or (base_env() if dry_run else live_env()),
                                log_path=directory / "daemon.log")
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


@pytest.fixture
def identity(ca):
    """HTTPS fakes of Google's and Microsoft's token endpoints, with the introspection Dovecot asks
    (tests/fakes/oauth2.py)."""
    from tests.fakes.oauth2 import FakeIdentityProvider, Introspection
    provider = FakeIdentityProvider(ca, username="alerts@example.com").start()
    provider.introspection = Introspection(provider).start()
    yield provider
    provider.introspection.stop()
    provider.stop()
    assert provider.errors == []


@pytest.fixture
def oauth_dovecot(ca, identity):
    """A throwaway Dovecot that takes XOAUTH2 and OAUTHBEARER with the identity fixture's tokens."""
    from tests.dovecot import Dovecot, dovecot_binary
    server = Dovecot(ca, dovecot=dovecot_binary(), oauth2_introspection_url=identity.introspection.url)
    server.login_throttling = False      # a refused token is answered at once: only the daemon's pacing counts
    try:
        yield server.start()
    finally:
        server.stop()
        print(server.log_tail())
        server.cleanup()


def _throwaway_postgres() -> Iterator[Postgres]:
    from tests.postgres import postgres_bin_dir
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL is not installed (make test installs the postgresql package when run as root)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    server = Postgres(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()
        print(server.log_tail())   # pytest shows a test's captured output only when it fails
        server.cleanup()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A running throwaway PostgreSQL cluster on 127.0.0.1 (tests/postgres.py), the test's own: to stop, restart
    or fail over. Its log is printed if the test fails."""
    yield from _throwaway_postgres()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the session (per xdist worker), for tests that need only a database
    of their own (Postgres.new_database) and leave the server alone."""
    yield from _throwaway_postgres()


@pytest.fixture(scope="session")
def rspamd():
    """A real throwaway rspamd scanner on 127.0.0.1 (tests/rspamd.py), one per session: it takes 10-30 s to start."""
    from tests.rspamd import Rspamd
    server = Rspamd()
    try:
        yield server.start()
    finally:
        server.stop()


# The room says what a test is: tests/unit/ tests code in this process only (seconds to run), tests/e2e/ drives
# real processes (the daemon, its fakes, Dovecot, rspamd, Postfix, a browser, a CLI run). Each gets the mark of
# its room, so `pytest -m unit` and `pytest -m e2e` pick one; a unit test asking for a real process fails.
E2E_FIXTURES = {"zendesk", "pagerduty", "start_daemon", "live_daemon", "dovecot", "rspamd", "postgres",
                "postgres_cluster"}
ROOMS = {"unit": pytest.mark.unit, "e2e": pytest.mark.e2e}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: a test of code in this process only (tests/unit/)")
    config.addinivalue_line("markers", "e2e: a test through real processes: the daemon, fakes, servers (tests/e2e/)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        room = Path(str(item.fspath)).parent.name
        if room not in ROOMS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit/ or tests/e2e/")
        needs = set(getattr(item, "fixturenames", ())) & E2E_FIXTURES
        if room == "unit" and needs:
            raise pytest.UsageError(f"{item.nodeid}: a unit test may not start {sorted(needs)}; move it to tests/e2e/")
        item.add_marker(ROOMS[room])


@pytest.fixture(scope="module")
def signing_key() -> tuple[bytes, bytes]:
    """An RSA key for DKIM signatures: (the private key in PEM, its DNS TXT record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture
def fake_dns() -> Iterator[FakeDns]:
    """A DNS server on 127.0.0.1 whose answers the test sets (tests/fakes/dns.py)."""
    with FakeDns() as server:
        yield server
