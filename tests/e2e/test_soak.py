"""A short soak: seeded mail over SMTP while the live daemon is killed -9 and restarted.

The long version is bench/soak.py; both run tests/soak.py. Nothing acknowledged may
be lost, and nothing may be ticketed, paged or commented twice.
"""
from tests.postgres import PASSWORD
from tests.soak import SoakSettings, run_soak

SETTINGS = SoakSettings(seed=20261127, messages=100, clients=4, rate=20.0, kill_every=(1.2, 2.2),
                        kills_while_sending=2, kills_while_draining=1, settle_timeout=60.0)


def test_kill_9_during_a_run_of_100_mails_loses_nothing_and_repeats_nothing(tmp_path, zendesk, pagerduty, ca_file):
    result = run_soak(SETTINGS, tmp_path, zendesk, pagerduty, ca_file)
    print(result)             # shown when the test fails
    assert result.kills - result.kills_draining >= 1 and result.kills_draining == 1, result
    assert result.problems == [], "\n".join(result.problems[:50])
    figures = result.figures
    assert figures["tickets"] == figures["expected_tickets"] and figures["incidents"] == figures["expected_incidents"]
    assert figures["duplicates"] == 0 and figures["lost"] == 0
    assert zendesk.errors == [] and pagerduty.errors == []


REPLICAS = SoakSettings(seed=20261204, messages=500, clients=4, rate=20.0, kill_every=(2.0, 4.0),
                        kills_while_sending=3, kills_while_draining=1, settle_timeout=120.0)


def test_two_replicas_killed_at_random_lose_nothing_and_repeat_nothing(tmp_path, zendesk, pagerduty, ca_file,
                                                                        postgres_cluster):
    result = run_soak(REPLICAS, tmp_path, zendesk, pagerduty, ca_file,
                      postgres=(postgres_cluster.new_database(), PASSWORD), replicas=2)
    print(result)             # shown when the test fails
    assert result.kills - result.kills_draining >= 1 and result.kills_draining == 1, result
    assert result.problems == [], "\n".join(result.problems[:50])
    figures = result.figures
    assert figures["tickets"] == figures["expected_tickets"] and figures["incidents"] == figures["expected_incidents"]
    assert figures["duplicates"] == 0 and figures["lost"] == 0 and result.acknowledged >= REPLICAS.messages
    assert zendesk.errors == [] and pagerduty.errors == []
