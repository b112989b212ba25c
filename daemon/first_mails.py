"""The line of new senders' mail that waits for its pace while mail is arriving (daemon/runner.py).

Deciding a first mail costs about 5 ms of CPU (the loop, the store's thread, a worker) that every
arriving mail's 250 shares. While mail arrives, a first mail starts being decided only with a token
of `[escalation] first_mails_per_second_while_mail_arrives` (after a burst); the rest waits here, in
arrival order, and all of it starts once mail stops arriving. The line is kept in memory: the
runner's looks at new mail have passed it by, and it is found again by a full look after a restart.
Each round costs what starts and what joins, never the whole line: a one-session storm of new
senders' mail queues thousands here, and the event loop must not walk them every 20 ms.
"""
from __future__ import annotations

import logging
from collections import deque

from prometheus_client import Counter

from emergencyd.daemon.store.core import DueWork
from emergencyd.escalation.pacing import Pacer

log = logging.getLogger("emergencyd.runner")


class FirstMailLine:
    """pace None: no pace ([escalation] first_mails_per_second_while_mail_arrives = 0), every mail starts at once."""

    def __init__(self, pace: Pacer | None, paced_total: Counter):
        self._pace = pace
        self._paced_total = paced_total
        self._line: deque[DueWork] = deque()
        self._in_line: set[int] = set()

    def __contains__(self, pk: int) -> bool:
        return pk in self._in_line

    def __bool__(self) -> bool:
        return bool(self._line)

    def admit(self, work: DueWork) -> bool:
        """True: `work` may start now. False: it joins the end of the line; once one waits, those after it do."""
        if self._pace is None or (not self._line and self._pace.take_now()):
            return True
        if not self._line:
            log.info("new senders' mail is decided at the pace of first mails while mail arrives")
        self._line.append(work)
        self._in_line.add(work.message_pk)
        self._paced_total.inc()
        return False

    def turns_come(self) -> list[DueWork]:
        """From the front of the line, the mail whose token has come."""
        started = []
        while self._line and self._pace is not None and self._pace.take_now():
            started.append(self._leave())
        return started

    def release(self) -> list[DueWork]:
        """Mail stopped arriving: the whole line, in order."""
        waited = [self._leave() for _ in range(len(self._line))]
        if waited:
            log.info("mail stopped arriving: new senders' mail that waited for the pace starts now",
                     extra={"waited": len(waited)})
        return waited

    def forget(self) -> None:
        """Another replica escalates now: a full look finds this mail again if it comes back to us."""
        self._line.clear()
        self._in_line.clear()

    def seconds_until_turn(self) -> float:
        return self._pace.seconds_until_token() if self._pace is not None else 0.0

    def _leave(self) -> DueWork:
        work = self._line.popleft()
        self._in_line.discard(work.message_pk)
        return work
