"""The suite's own PostgreSQL (tests/postgres.py): a real cluster that the PostgreSQL store's tests can lean on."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.postgres import DATABASE, HOST, PASSWORD, ROLE, PostgresError


def test_a_fresh_cluster_answers_the_role_with_its_password_over_tcp(postgres):
    assert postgres.query("SELECT current_user, current_database()") == f"{ROLE}|{DATABASE}"
    assert postgres.query("SHOW listen_addresses") == HOST
    assert postgres.query("SHOW password_encryption") == "scram-sha-256"


def test_a_wrong_password_is_refused(postgres):
    psql = postgres.bin_dir / "psql"
    wrong = subprocess.run([str(psql), "-X", "-h", HOST, "-p", str(postgres.port), "-U", ROLE, "-d", DATABASE,
                            "-c", "SELECT 1"], env={**os.environ, "PGPASSWORD": PASSWORD + "x"},
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


def test_a_restart_keeps_what_was_committed_and_a_stopped_server_refuses(postgres):
    postgres.query("CREATE TABLE kept (n integer); INSERT INTO kept VALUES (1), (2)")
    postgres.stop()
    with pytest.raises(PostgresError):
        postgres.query("SELECT 1")
    postgres.start()
    assert postgres.query("SELECT sum(n) FROM kept") == "3"


def test_two_clusters_do_not_share_a_port_or_data(postgres):
    from tests.postgres import Postgres
    other = Postgres(postgres.bin_dir)
    try:
        other.start()
        postgres.query("CREATE TABLE only_here (n integer)")
        assert other.port != postgres.port and other.directory != postgres.directory
        assert other.query("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'") == "0"
    finally:
        other.stop()
        other.cleanup()
