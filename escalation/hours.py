"""Support hours from the support manual, as pure functions of a time the caller passes in.

- In hours: Monday to Friday 09:00-17:00 on working days.
- Out of hours, waking: 09:00-17:00 on non-working days (weekends, bank holidays, extra closures).
- Out of hours, overnight: 17:00-09:00 every day.

Nothing here reads the clock or does I/O, so the daemon can inject its own clock and
tests can pin any instant. Bank holidays come from the `holidays` package, which works offline.
"""
from __future__ import annotations

import enum
import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

_ONE_DAY = timedelta(days=1)


class Window(enum.StrEnum):
    IN_HOURS = "in_hours"
    OUT_OF_HOURS_WAKING = "out_of_hours_waking"
    OUT_OF_HOURS_OVERNIGHT = "out_of_hours_overnight"


@functools.lru_cache(maxsize=128)
def _holidays_for(country: str, subdivision: str, year: int) -> Mapping[date, str]:
    """One year's holidays, computed once per (country, subdivision, year).

    Read-only because the cached object is shared by every caller. For a holiday on a
    weekend the package lists both the date itself and the "(observed)" weekday; both
    are simply non-working, which is right: the weekend is closed anyway and the
    observed weekday is the actual day off.
    """
    table = holidays.country_holidays(country, subdiv=subdivision, years=year)
    return types.MappingProxyType(dict(table))


@dataclass(frozen=True)
class SupportCalendar:
    timezone: str = "Europe/London"
    day_start: time = time(9)
    day_end: time = time(17)
    extra_closures: frozenset[date] = frozenset()
    holiday_country: str = "GB"
    holiday_subdivision: str = "ENG"

    def __post_init__(self) -> None:
        # Config may hand us a list or set; a frozenset keeps the calendar hashable.
        object.__setattr__(self, "extra_closures", frozenset(self.extra_closures))
        if self.day_start.tzinfo or self.day_end.tzinfo:
            raise ValueError("day_start and day_end are local wall-clock times; give them no tzinfo")
        if not self.day_start < self.day_end:
            raise ValueError(f"day_start {self.day_start} must be before day_end {self.day_end}")
        ZoneInfo(self.timezone)  # an unknown zone name fails here, not at the first page

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances per key

    def holiday_name(self, d: date) -> str | None:
        """The package's name for a holiday on `d` (e.g. "Christmas Day"), else None.

        Extra closures are not holidays and give None; weekend dates of a holiday keep
        their own name (2026-12-26 is "Boxing Day", 2026-12-28 "Boxing Day (observed)").
        """
        return _holidays_for(self.holiday_country, self.holiday_subdivision, d.year).get(d)

    def is_working_day(self, d: date) -> bool:
        return d.weekday() < 5 and d not in self.extra_closures and self.holiday_name(d) is None

    def window_at(self, when: datetime) -> Window:
        local = self._local(when)
        if not self.day_start <= local.time() < self.day_end:
            return Window.OUT_OF_HOURS_OVERNIGHT
        return Window.IN_HOURS if self.is_working_day(local.date()) else Window.OUT_OF_HOURS_WAKING

    def add_working_time(self, start: datetime, duration: timedelta) -> datetime:
        """`start` plus `duration` counted only inside in-hours time, in the calendar's zone.

        A start outside hours begins counting at the next working day's day_start, so a
        zero duration rounds up to in-hours time. Finishing exactly at day_end stays on
        that day (Friday 16:00 + 1h is Friday 17:00, not Monday 09:00).
        """
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        cursor, remaining = self._local(start), duration
        while True:
            opens, closes = self._in_hours_span(cursor)
            # Arithmetic in UTC: Python subtracts same-zone aware datetimes as wall times.
            begin = max(cursor, opens).astimezone(UTC)
            available = closes.astimezone(UTC) - begin
            if remaining <= available:
                return (begin + remaining).astimezone(self.zone)
            remaining -= available
            cursor = closes

    def next_window_change(self, when: datetime) -> datetime:
        """The first instant strictly after `when` at which window_at gives a different answer.

        The window changes at every day_start and every day_end (day and night always
        differ), and never at midnight (overnight runs on into the next morning).
        """
        local = self._local(when)
        for day in (local.date(), local.date() + _ONE_DAY):
            for boundary in (self.day_start, self.day_end):
                instant = self._at(day, boundary)
                if instant > local:
                    return instant
        raise AssertionError("unreachable: tomorrow's day_start is always after `when`")

    def _in_hours_span(self, local: datetime) -> tuple[datetime, datetime]:
        """The in-hours span containing `local`, or else the next one to open."""
        day = local.date()
        if local.time() >= self.day_end:
            day += _ONE_DAY
        while not self.is_working_day(day):
            day += _ONE_DAY
        return self._at(day, self.day_start), self._at(day, self.day_end)

    def _at(self, day: date, wall: time) -> datetime:
        return datetime.combine(day, wall, tzinfo=self.zone)

    def _local(self, when: datetime) -> datetime:
        # A naive time is ambiguous (server UTC? local?), and guessing wrong misroutes a page.
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"expected a timezone-aware datetime, got naive {when.isoformat()}")
        return when.astimezone(self.zone)
