"""Fair turns for deciding: who goes next when a storm fills the line (order only, never timings)."""
import asyncio

from emergencyd.escalation.fair_turns import FairTurns

HOLDER = "first"     # the name of the task that holds the one turn


async def _decide_all(turns: FairTurns, senders: list[str], *, order: list[str], gate: asyncio.Event) -> None:
    """Queue one decision per entry of `senders`, in that order; each records itself when its turn comes."""
    async def decide(number: int, sender: str) -> None:
        async with turns.turn(sender):
            order.append(f"{sender}{number}")
            await gate.wait()          # the first holders keep their turns until the line is full
            await asyncio.sleep(0)

    tasks = []
    for number, sender in enumerate(senders):
        tasks.append(asyncio.create_task(decide(number, sender)))
        await asyncio.sleep(0)         # arrival order is creation order
    gate.set()
    await asyncio.gather(*tasks)


async def test_a_new_sender_goes_before_a_storming_senders_queued_mail():
    order: list[str] = []
    storm = ["s"] * 30
    await _decide_all(FairTurns(limit=2), storm + ["t"], order=order, gate=asyncio.Event())
    # s0 holds a turn; t takes the free one at once although thirty of s's mails arrived first.
    assert order.index("t30") <= 1
    assert [o for o in order if o.startswith("s")] == [f"s{i}" for i in range(30)]   # s keeps its order


async def test_a_sender_arriving_behind_a_full_line_is_next():
    order: list[str] = []
    gate = asyncio.Event()
    # The two turns are held by a's and b's first mails; c arrives behind twenty more of a's and b's.
    senders = ["a", "b"] + ["a", "b"] * 10 + ["c"]
    await _decide_all(FairTurns(limit=2), senders, order=order, gate=gate)
    assert order[:3] == ["a0", "b1", "c22"]


async def test_storming_senders_alternate_and_each_keeps_its_order():
    order: list[str] = []
    await _decide_all(FairTurns(limit=1), ["a"] * 5 + ["b"] * 5, order=order, gate=asyncio.Event())
    assert order == ["a0", "b5", "a1", "b6", "a2", "b7", "a3", "b8", "a4", "b9"]


async def test_one_sender_is_decided_one_mail_at_a_time():
    turns = FairTurns(limit=4)
    inside: list[int] = []
    most = 0

    async def decide() -> None:
        nonlocal most
        async with turns.turn("loop@tenant.example"):
            inside.append(1)
            most = max(most, len(inside))
            await asyncio.sleep(0)
            inside.pop()

    await asyncio.gather(*(decide() for _ in range(10)))
    assert most == 1


async def test_a_cancelled_waiter_gives_up_its_place_and_the_line_moves_on():
    turns = FairTurns(limit=1)
    release = asyncio.Event()
    order: list[str] = []

    async def decide(name: str, sender: str) -> None:
        async with turns.turn(sender):
            order.append(name)
            await release.wait()

    holder = asyncio.create_task(decide(HOLDER, "a"))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(decide("cancelled", "b"))
    survivor = asyncio.create_task(decide("after", "c"))
    await asyncio.sleep(0)
    assert turns.waiting == 2
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert turns.waiting == 1
    release.set()
    await asyncio.gather(holder, survivor)
    assert order == [HOLDER, "after"] and turns.waiting == 0


async def test_a_mail_stepping_aside_lets_another_sender_in_but_not_its_own_next_mail():
    turns = FairTurns(limit=1)
    order: list[str] = []
    waiting_on_other_mail = asyncio.Event()
    other_mail_decided = asyncio.Event()

    async def decide(name: str, sender: str) -> None:
        async with turns.turn(sender):
            order.append(name)
            if name == "a1":                 # its mail must wait for b's to be decided
                async with turns.aside(sender):
                    waiting_on_other_mail.set()
                    await other_mail_decided.wait()
                order.append("a1 back")
            await asyncio.sleep(0)
            if name == "b1":               # decided; a1 looks again and waits to come back before b1's turn ends
                other_mail_decided.set()
                await asyncio.sleep(0)
                await asyncio.sleep(0)

    first = asyncio.create_task(decide("a1", "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(decide(name, sender)) for name, sender in (("a2", "a"), ("b1", "b"), ("c1", "c"))]
    await asyncio.gather(first, *rest)
    # b takes the one place while a1 waits; a2 does not (a's mail keeps its order); a1 comes back
    # ahead of c, which had queued before a1 stepped aside.
    assert order == ["a1", "b1", "a1 back", "c1", "a2"], order
    assert turns.waiting == 0


async def test_a_mail_stepping_out_gives_its_place_away_for_good_but_keeps_its_senders_order():
    turns = FairTurns(limit=1)
    order: list[str] = []
    plan_written = asyncio.Event()

    async def decide(name: str, sender: str) -> None:
        async with turns.turn(sender):
            order.append(name)
            if name == "a1":                 # classified: what is left of its turn can wait
                turns.step_out(sender)
                await plan_written.wait()
                order.append("a1 planned")
            if name == "c1":
                plan_written.set()
            await asyncio.sleep(0)

    first = asyncio.create_task(decide("a1", "a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(decide(name, sender)) for name, sender in (("a2", "a"), ("b1", "b"), ("c1", "c"))]
    await asyncio.gather(first, *rest)
    # b and c take the one place in turn while a1's plan waits; a2 waits for a1's whole turn.
    assert order == ["a1", "b1", "c1", "a1 planned", "a2"], order
    assert turns.waiting == 0


async def test_a_mail_coming_back_that_is_cancelled_leaves_its_place_to_the_next():
    turns = FairTurns(limit=1)
    order: list[str] = []
    back_now, release = asyncio.Event(), asyncio.Event()

    async def aside_then_back() -> None:
        async with turns.turn("a"):
            async with turns.aside("a"):
                await back_now.wait()
            order.append("a back")

    async def hold(name: str, sender: str) -> None:
        async with turns.turn(sender):
            order.append(name)
            await release.wait()

    stepping = asyncio.create_task(aside_then_back())
    await asyncio.sleep(0)                      # a steps aside: b takes the place and keeps it
    holder = asyncio.create_task(hold("b", "b"))
    await asyncio.sleep(0)
    back_now.set()
    await asyncio.sleep(0)                      # a now waits to come back, behind b's turn
    later = [asyncio.create_task(hold("a2", "a")), asyncio.create_task(hold("c", "c"))]
    await asyncio.sleep(0)
    stepping.cancel()
    await asyncio.gather(stepping, return_exceptions=True)
    release.set()
    await asyncio.gather(holder, *later)
    assert order == ["b", "c", "a2"], order       # a2 came while a was being decided: c is news, a2 not
    assert turns.waiting == 0
