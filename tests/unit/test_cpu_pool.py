"""The worker processes that parse and classify off the event loop: real processes, real faults."""
import asyncio
import os
import signal
import sys
import time
import tomllib
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from emergencyd.escalation.cpu_pool import (
    ClassifyContext,
    CpuPool,
    Priority,
    WorkerFailed,
)
from emergencyd.escalation.decider import decide_verdict
from emergencyd.escalation.policy_config import parse_policy
from emergencyd.escalation.records import Envelope
from emergencyd.parsers.message import parse_message
from tests.harness import ROOT, make_message, process_running, signed

SHIPPED = tomllib.loads((ROOT / "config.toml").read_text())["policy"]
AT = datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc)


def policy_with_rule(name: str, phrase: str):
    rule = {"name": name, "category": name.replace("-", "_"), "severity": "P2", "phrases": [phrase]}
    return parse_policy({**SHIPPED, "rules": [rule]})


def pool(policy=None, *, workers: int = 1, timeout: float = 30.0, **command) -> CpuPool:
    context = ClassifyContext(policy=policy or parse_policy(SHIPPED), own_addresses=("emergency@example.org",),
                              own_hostnames=())
    return CpuPool(context, workers=workers, timeout_seconds=timeout, **command)


@pytest.fixture
async def cpu():
    workers = pool()
    yield workers
    workers.close()


async def test_a_worker_parses_and_classifies_as_the_loop_would(cpu):
    raw = make_message(subject="URGENT: all our apps are down", body="Every app returns 502 since 02:10.")
    parsed = await cpu.parse(raw, Priority.DECIDE)
    assert parsed == parse_message(raw)
    verdict = await cpu.classify(parsed, received_at=AT, mail_from="dev@tenant.example", trust=None)
    assert (verdict.category, verdict.severity, verdict.page) == ("apps_not_served", "P1", True)


MX = "mx.ours.example"
TENANT_TRUST = {"trusted_authserv_ids": [MX], "tenant_domains": ["tenant.example"]}
RELAYED = Envelope("smtp", "alice@tenant.example", ("emergency@example.org",), peer="127.0.0.1:4000",
                   received_at=AT.timestamp())


def _one_round_trip_cases(private: bytes) -> list[tuple[str, bytes, Envelope, bool]]:
    """Mail whose verdict depends on each input the worker takes: trust headers, the envelope, released."""
    p1 = make_message(sender="alice@tenant.example", subject="URGENT: all our apps are down",
                      body="Every app returns 502 since 02:10.")
    dmarc_fail = f"Authentication-Results: {MX}; dmarc=fail (p=reject dis=none) header.from=tenant.example\r\n"
    out_of_office = make_message(sender="bob@tenant.example", subject="Automatic reply: apps down",
                                 body="I am out of the office.", extra_headers={"Auto-Submitted": "auto-replied"})
    return [
        ("a tenant's P1", p1, RELAYED, False),
        ("a P1 that fails DMARC at our MTA", dmarc_fail.encode() + p1, RELAYED, False),
        ("the same from a peer whose fields do not count", dmarc_fail.encode() + p1,
         replace(RELAYED, peer="198.51.100.66:4000"), False),
        ("a stranger's P1", make_message(sender="eve@elsewhere.example", subject="All apps are down",
                                         body="Production is down."), RELAYED, False),
        ("an auto-reply", out_of_office, RELAYED, False),
        ("an auto-reply released by hand", out_of_office, RELAYED, True),
        ("a DKIM-signed P1, not checked by us", signed(private), RELAYED, False),
    ]


@pytest.mark.parametrize("verify_dkim", [False, True])
async def test_deciding_in_one_round_trip_gives_the_deciders_verdict(signing_key, verify_dkim):
    """The worker's parse-and-classify (escalation/steps.py takes it when no spam filter is asked) is
    decide_verdict (escalation/decider.py) in one round trip; a DKIM check of our own it leaves to the loop."""
    private, _ = signing_key
    trust = {**TENANT_TRUST, "verify_dkim": verify_dkim}
    workers = pool(parse_policy(SHIPPED, trust))
    try:
        for case, raw, envelope, released in _one_round_trip_cases(private):
            parsed, at_once = await workers.parse_and_classify(raw, envelope, released=released)
            assert parsed == parse_message(raw), case

            async def read_raw(raw: bytes = raw) -> bytes:
                return raw
            if verify_dkim and b"DKIM-Signature" in raw:
                assert at_once is None, case       # the DNS look-up is the loop's, with its timeout
                continue
            verdict = await decide_verdict(envelope, parsed, workers.policy.trust, read_raw, workers.classify,
                                           released=released)
            assert at_once == verdict, case
    finally:
        workers.close()


async def test_a_waiting_decision_goes_before_waiting_step_work(cpu):
    finished: list[str] = []
    raw = make_message(subject="Apps down", body="All our apps are down.")

    async def job(name: str, priority: Priority) -> None:
        await cpu.parse(raw, priority)
        finished.append(name)

    blocker = asyncio.create_task(cpu._run(Priority.STEP, time.sleep, (0.2,)))   # holds the one worker
    await asyncio.sleep(0)
    steps = [asyncio.create_task(job(f"step{i}", Priority.STEP)) for i in range(3)]
    decision = asyncio.create_task(job("decision", Priority.DECIDE))
    await asyncio.gather(blocker, *steps, decision)
    assert finished == ["decision", "step0", "step1", "step2"]


async def test_a_worker_that_dies_is_replaced_and_the_mail_still_gets_an_answer(cpu):
    with pytest.raises(WorkerFailed, match="died"):
        await cpu._run(Priority.DECIDE, os._exit, (3,))
    parsed = await cpu.parse(make_message(subject="Still here"), Priority.DECIDE)
    assert parsed.subject == "Still here" and parsed.parse_error is None


async def test_a_worker_busy_past_the_timeout_is_stopped_and_replaced():
    workers = pool(timeout=1.0)
    try:
        with pytest.raises(WorkerFailed, match="longer than 1 s"):
            await workers._run(Priority.DECIDE, time.sleep, (60,))
        parsed = await workers.parse(make_message(subject="After the timeout"), Priority.DECIDE)
        assert parsed.subject == "After the timeout"
    finally:
        workers.close()


@pytest.mark.parametrize("command, why", [
    (("/nonexistent/python3",), "No such file"),
    ((sys.executable, "-c", "import sys; sys.exit(7)"), "exit code 7"),
])
async def test_when_no_worker_process_can_start_the_work_runs_on_threads(command, why, caplog):
    workers = pool(command=command)
    try:
        raw = make_message(subject="URGENT: all our apps are down", body="Every app returns 502 since 02:10.")
        parsed, verdict = await workers.parse_and_classify(raw, RELAYED)
        assert parsed == parse_message(raw) and verdict is not None and verdict.severity == "P1"
        [failure] = [r for r in caplog.records if r.getMessage().startswith("worker processes unavailable")]
        assert why in failure.error     # type: ignore[attr-defined]
        assert await workers.parse(raw, Priority.STEP) == parsed     # later jobs too, without a new attempt
        assert len([r for r in caplog.records if r.getMessage().startswith("worker processes unavailable")]) == 1
    finally:
        workers.close()


async def test_a_jobs_own_exception_reaches_the_caller_and_the_worker_serves_on(cpu):
    await cpu.warm()
    [worker] = cpu.worker_pids()
    with pytest.raises(ValueError, match="invalid literal"):
        await cpu._run(Priority.DECIDE, int, ("not a number",))
    assert cpu.worker_pids() == [worker]
    raw = make_message(subject="Still here")
    assert await cpu.parse(raw, Priority.DECIDE) == parse_message(raw)
    assert cpu.worker_pids() == [worker]


async def test_a_worker_killed_while_idle_is_replaced_before_it_is_handed_a_mail(cpu):
    await cpu.warm()
    [idle] = cpu.worker_pids()
    os.kill(idle, signal.SIGKILL)
    await asyncio.sleep(0.2)
    raw = make_message(subject="URGENT: all our apps are down", body="Every app returns 502.")
    assert await cpu.parse(raw, Priority.DECIDE) == parse_message(raw)     # not the could-not-parse stand-in
    assert cpu.worker_pids() != [idle]


async def test_stopping_the_pool_ends_its_worker_processes():
    workers = pool(workers=2)
    await workers.warm()
    pids = workers.worker_pids()
    assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    workers.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)     # ended and reaped, no zombie left


async def test_a_reload_swaps_the_policy_whole():
    workers = pool(policy_with_rule("zebra-rule", "zebra"), workers=2)
    try:
        parsed = parse_message(make_message(subject="Zebra and giraffe", body="A zebra met a giraffe."))
        before = await workers.classify(parsed, received_at=AT, mail_from=None, trust=None)
        old_workers = workers.worker_pids()
        workers.swap_policy(ClassifyContext(policy_with_rule("giraffe-rule", "giraffe"),
                                            own_addresses=("emergency@example.org",), own_hostnames=()))
        after = await workers.classify(parsed, received_at=AT, mail_from=None, trust=None)
        assert not set(old_workers) & set(workers.worker_pids())
        # Both new workers start after the reload on their own, not only the one this mail needed
        # (the second may still be starting when the classify returns).
        deadline = time.monotonic() + 20
        while len(workers.worker_pids()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(workers.worker_pids()) == 2 and not set(old_workers) & set(workers.worker_pids())
        # Told to exit, not waited for on the loop: the old workers end on their own.
        while any(process_running(pid) for pid in old_workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(process_running(pid) for pid in old_workers)
        assert [hit.rule for hit in before.rules] == ["zebra-rule"]
        assert [hit.rule for hit in after.rules] == ["giraffe-rule"]
        assert [rule.name for rule in workers.policy.rules] == ["giraffe-rule"]
    finally:
        workers.close()
