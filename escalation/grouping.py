"""Deduplication beyond the same message: conversations, incidents and storms.

relate() is pure: it takes the verdict and what the store knows about related mail
(GroupingFacts) and says how this mail relates to earlier ones. The levels, in order:

  thread    a reply or forward of stored mail, or one naming a Zendesk ticket: a comment
            on that ticket; it pages again only when it raises the severity
  storm     one sender over the per-sender limit: a comment on their open ticket, no page
  repeat    the same tenant again about an open incident, or again from a loop (subjects
            that differ only in numbers, ids, dates or times): a comment on their ticket
  incident  another tenant about an open incident: their own ticket, linked to the
            problem ticket, sharing the incident's page
  first     a new incident: a problem ticket and a page
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from emergencyd.escalation.policy import SEVERITIES, Verdict
from emergencyd.escalation.records import Relation, RelationKind
from emergencyd.parsers.message import ParsedMessage
from emergencyd.parsers.subject import bare_subject, loop_subject

FIRST, THREAD, STORM, REPEAT, INCIDENT, ALONE = RelationKind   # the names relate() has always used

# Zendesk writes "[#1234]" or "Ticket #1234" in its notification subjects; people write "(#1234)".
_TICKET_REF = re.compile(r"(?:\[#(\d{1,12})\]|\bticket\s*#\s*(\d{1,12})\b|\(#(\d{1,12})\))", re.IGNORECASE)


@dataclass(frozen=True)
class GroupingSettings:
    incident_window_seconds: float
    platform_wide_categories: frozenset[str]
    sender_limit: int
    sender_window_seconds: float


@dataclass(frozen=True)
class Related:
    """A stored escalation that this mail may attach to."""
    message_pk: int
    severity: str | None
    ticket_id: int | None


@dataclass(frozen=True)
class OpenGroup:
    group_id: int
    dedup_key: str
    problem_pk: int
    severity: str | None
    sender_member: Related | None      # this sender's earlier mail in the group, if any


@dataclass(frozen=True)
class GroupingFacts:
    thread_parent: Related | None       # a stored message named by In-Reply-To/References or an encoded id
    referenced_ticket: int | None       # a ticket named in the subject
    sender_recent: int                  # mails from this sender within the sender window, this one excluded
    sender_latest: Related | None       # this sender's most recent mail with a ticket planned
    open_group: OpenGroup | None        # an incident with the same fingerprint within the window
    sender_loop: OpenGroup | None = None  # this sender's open incident with the same loop key



def ticket_reference(subject: str) -> int | None:
    match = _TICKET_REF.search(subject)
    return int(next(g for g in match.groups() if g)) if match else None


def fingerprint(verdict: Verdict, parsed: ParsedMessage, settings: GroupingSettings) -> str | None:
    """Platform-wide categories group on the category alone; others on category and bare subject."""
    if verdict.suppressed or verdict.severity is None:
        return None
    if verdict.category in settings.platform_wide_categories:
        return verdict.category
    return f"{verdict.category}|{bare_subject(parsed.subject)}"


def loop_key(print_: str | None) -> str | None:
    """The fingerprint with its subject as loop_subject: the same for each mail of one sender's loop.

    Derived from the fingerprint alone, so it exists exactly where a fingerprint does: never for
    noise, for mail that is no incident, or for an untrusted sender. It only joins a sender's own
    incidents: across tenants, "Server 12 down" and "Server 13 down" stay two incidents.
    """
    if print_ is None:
        return None
    category, _, subject = print_.partition("|")
    return f"{category}|{loop_subject(subject)}" if subject else category


def relate(verdict: Verdict, facts: GroupingFacts, settings: GroupingSettings) -> Relation:
    if facts.thread_parent is not None or facts.referenced_ticket is not None:
        return _thread(verdict, facts)
    if facts.sender_recent >= settings.sender_limit and facts.sender_latest is not None:
        return Relation(STORM, f"{facts.sender_recent + 1} mails from this sender within "
                               f"{settings.sender_window_seconds / 60:g} minutes (limit {settings.sender_limit}): "
                               "folded into their open ticket", parent_pk=facts.sender_latest.message_pk)
    group = facts.open_group
    if group is not None and group.sender_member is not None:
        return Relation(REPEAT, "the same tenant wrote again about an open incident",
                        parent_pk=group.sender_member.message_pk, group_id=group.group_id)
    # Before joining another tenant's incident: a loop stays on its own sender's ticket.
    loop = facts.sender_loop
    if loop is not None and loop.sender_member is not None:
        return Relation(REPEAT, "the same sender again, the subject differing only in numbers, ids, dates or "
                                "times: one loop, one incident",
                        parent_pk=loop.sender_member.message_pk, group_id=loop.group_id)
    if group is not None:
        return Relation(INCIDENT, f"another report of the open incident {group.dedup_key}",
                        parent_pk=group.problem_pk, group_id=group.group_id)
    if verdict.suppressed or verdict.severity is None:
        return Relation(ALONE, "not an incident: a ticket of its own" if not verdict.suppressed else "noise")
    return Relation(FIRST, "a new incident")


def _thread(verdict: Verdict, facts: GroupingFacts) -> Relation:
    parent = facts.thread_parent
    if parent is None:
        return Relation(THREAD, f"the subject names Zendesk ticket #{facts.referenced_ticket}",
                        target_ticket_id=facts.referenced_ticket)
    # Only a rule's evidence raises a conversation's severity: "still down?" matches no rule,
    # and an unclassified follow-up must not page again as a possible P1.
    repage = verdict.page and bool(verdict.rules) and rank(verdict.severity) < rank(parent.severity)
    reason = "a reply in a stored conversation"
    if repage:
        reason += f": raises the severity from {parent.severity or 'not an incident'} to {verdict.severity}"
    return Relation(THREAD, reason, parent_pk=parent.message_pk, repage=repage)


def rank(severity: str | None) -> int:
    """P1 ranks first; not an incident last."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)
