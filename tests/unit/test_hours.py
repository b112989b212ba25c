"""Support hours: windows, bank holidays, DST, and business-time arithmetic, at pinned instants."""
import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from emergencyd.escalation.hours import SupportCalendar, Window

LONDON = ZoneInfo("Europe/London")
CAL = SupportCalendar()
IN, WAKING, NIGHT = Window.IN_HOURS, Window.OUT_OF_HOURS_WAKING, Window.OUT_OF_HOURS_OVERNIGHT
HOURS_8, HOURS_16 = timedelta(hours=8), timedelta(hours=16)


def local(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# Published England and Wales bank holidays (gov.uk/bank-holidays), typed in by hand.
BANK_HOLIDAYS = {
    2026: [date(2026, 1, 1), date(2026, 4, 3), date(2026, 4, 6), date(2026, 5, 4), date(2026, 5, 25),
           date(2026, 8, 31), date(2026, 12, 25), date(2026, 12, 28)],
    2027: [date(2027, 1, 1), date(2027, 3, 26), date(2027, 3, 29), date(2027, 5, 3), date(2027, 5, 31),
           date(2027, 8, 30), date(2027, 12, 27), date(2027, 12, 28)],
}
ALL_BANK_HOLIDAYS = [d for days in BANK_HOLIDAYS.values() for d in days]


def test_window_values_are_the_strings_the_rest_of_the_daemon_uses():
    assert [w.value for w in Window] == ["in_hours", "out_of_hours_waking", "out_of_hours_overnight"]
    assert Window.IN_HOURS == "in_hours"


@pytest.mark.parametrize("when, expected", [
    (local(2026, 6, 3, 8, 59, 59), NIGHT),            # a Wednesday
    (local(2026, 6, 3, 9, 0, 0), IN),
    (local(2026, 6, 3, 12, 0), IN),
    (local(2026, 6, 3, 16, 59, 59), IN),
    (local(2026, 6, 3, 16, 59, 59, 999000), IN),
    (local(2026, 6, 3, 17, 0, 0), NIGHT),
    (local(2026, 6, 3, 0, 0), NIGHT),
    (local(2026, 6, 6, 8, 59, 59), NIGHT),            # a Saturday
    (local(2026, 6, 6, 9, 0, 0), WAKING),
    (local(2026, 6, 6, 16, 59, 59), WAKING),
    (local(2026, 6, 6, 17, 0, 0), NIGHT),
    (local(2026, 6, 7, 12, 0), WAKING),               # a Sunday
])
def test_window_boundaries(when, expected):
    assert CAL.window_at(when) == expected


@pytest.mark.parametrize("when, expected", [
    (local(2026, 6, 5, 16, 59, 59), IN),              # Friday
    (local(2026, 6, 5, 17, 0), NIGHT),
    (local(2026, 6, 6, 10, 0), WAKING),               # Saturday
    (local(2026, 6, 8, 8, 59), NIGHT),                # Monday
    (local(2026, 6, 8, 9, 0), IN),
])
def test_across_a_weekend(when, expected):
    assert CAL.window_at(when) == expected


@pytest.mark.parametrize("when, expected", [
    # 2026-03-29 (Sunday): clocks go forward at 01:00 UTC, 01:00 GMT -> 02:00 BST.
    (utc(2026, 3, 29, 0, 30), NIGHT),                 # 00:30 GMT
    (utc(2026, 3, 29, 1, 30), NIGHT),                 # 02:30 BST
    (utc(2026, 3, 29, 7, 59, 59), NIGHT),             # 08:59:59 BST
    (utc(2026, 3, 29, 8, 0), WAKING),                 # 09:00 BST
    (utc(2026, 3, 29, 8, 30), WAKING),                # 09:30 BST
    (utc(2026, 3, 29, 15, 59, 59), WAKING),           # 16:59:59 BST
    (utc(2026, 3, 29, 16, 0), NIGHT),                 # 17:00 BST
    (utc(2026, 3, 27, 8, 30), NIGHT),                 # Friday before: 08:30 GMT
    (utc(2026, 3, 30, 8, 0), IN),                     # Monday after: 09:00 BST
    (utc(2026, 3, 30, 16, 30), NIGHT),                # Monday after: 17:30 BST
    # 2026-10-25 (Sunday): clocks go back at 01:00 UTC, 02:00 BST -> 01:00 GMT; 01:xx happens twice.
    (utc(2026, 10, 25, 0, 30), NIGHT),                # 01:30 BST
    (utc(2026, 10, 25, 1, 30), NIGHT),                # 01:30 GMT
    (utc(2026, 10, 25, 8, 59, 59), NIGHT),            # 08:59:59 GMT
    (utc(2026, 10, 25, 9, 0), WAKING),                # 09:00 GMT
    (utc(2026, 10, 25, 17, 0), NIGHT),                # 17:00 GMT
    (utc(2026, 10, 23, 8, 30), IN),                   # Friday before: 09:30 BST
    (utc(2026, 10, 26, 8, 30), NIGHT),                # Monday after: 08:30 GMT
    (utc(2026, 10, 26, 9, 0), IN),
    # 2027-03-28 (Easter Sunday): forward.
    (utc(2027, 3, 28, 0, 59), NIGHT),                 # 00:59 GMT
    (utc(2027, 3, 28, 1, 0), NIGHT),                  # 02:00 BST
    (utc(2027, 3, 28, 7, 59), NIGHT),                 # 08:59 BST
    (utc(2027, 3, 28, 8, 0), WAKING),                 # 09:00 BST
    (utc(2027, 3, 28, 16, 0), NIGHT),                 # 17:00 BST
    (utc(2027, 3, 30, 8, 0), IN),                     # Tuesday after Easter Monday: 09:00 BST
    # 2027-10-31 (Sunday): back.
    (utc(2027, 10, 31, 0, 30), NIGHT),                # 01:30 BST
    (utc(2027, 10, 31, 1, 30), NIGHT),                # 01:30 GMT
    (utc(2027, 10, 31, 8, 30), NIGHT),                # 08:30 GMT
    (utc(2027, 10, 31, 9, 0), WAKING),                # 09:00 GMT
    (utc(2027, 10, 31, 16, 59, 59), WAKING),
    (utc(2027, 10, 31, 17, 0), NIGHT),
    (utc(2027, 11, 1, 9, 0), IN),                     # Monday after: 09:00 GMT
])
def test_dst_change_days_given_as_utc_instants(when, expected):
    assert CAL.window_at(when) == expected


def test_holidays_package_agrees_with_the_published_list():
    # Weekday holidays are the days off; weekend dates (e.g. Sat 2026-12-26) are closed anyway.
    for year, published in BANK_HOLIDAYS.items():
        weekdays = [d for d in (date(year, 1, 1) + timedelta(n) for n in range(365)) if d.weekday() < 5]
        assert [d for d in weekdays if not CAL.is_working_day(d)] == published


@pytest.mark.parametrize("day", ALL_BANK_HOLIDAYS, ids=str)
def test_every_bank_holiday_at_noon_is_waking_out_of_hours(day):
    assert CAL.window_at(local(day.year, day.month, day.day, 12)) == WAKING
    assert CAL.window_at(local(day.year, day.month, day.day, 17)) == NIGHT


@pytest.mark.parametrize("day", [d + timedelta(1) for d in ALL_BANK_HOLIDAYS
                                 if (d + timedelta(1)).weekday() < 5 and d + timedelta(1) not in ALL_BANK_HOLIDAYS],
                         ids=str)
def test_the_weekday_after_a_bank_holiday_is_in_hours(day):
    assert CAL.window_at(local(day.year, day.month, day.day, 12)) == IN


def test_holiday_names_explain_the_closure():
    assert CAL.holiday_name(date(2026, 12, 25)) == "Christmas Day"
    assert CAL.holiday_name(date(2026, 12, 26)) == "Boxing Day"
    assert CAL.holiday_name(date(2026, 12, 28)) == "Boxing Day (observed)"
    assert CAL.holiday_name(date(2027, 12, 27)) == "Christmas Day (observed)"
    assert CAL.holiday_name(date(2026, 4, 3)) == "Good Friday"
    assert CAL.holiday_name(date(2026, 6, 3)) is None


def test_extra_closures_make_a_weekday_waking_out_of_hours():
    closed = date(2026, 7, 15)  # a Wednesday
    cal = SupportCalendar(extra_closures=frozenset({closed}))
    assert not cal.is_working_day(closed) and CAL.is_working_day(closed)
    assert cal.window_at(local(2026, 7, 15, 12)) == WAKING
    assert cal.window_at(local(2026, 7, 15, 8)) == NIGHT
    assert cal.window_at(local(2026, 7, 16, 12)) == IN
    assert cal.holiday_name(closed) is None
    assert cal.add_working_time(local(2026, 7, 14, 16), HOURS_8) == local(2026, 7, 16, 16)


def test_calendar_is_frozen_hashable_and_accepts_any_collection_of_closures():
    cal = SupportCalendar(extra_closures=[date(2026, 7, 15)])
    assert cal == SupportCalendar(extra_closures=frozenset({date(2026, 7, 15)}))
    assert {cal: 1}[SupportCalendar(extra_closures={date(2026, 7, 15)})] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.timezone = "UTC"


@pytest.mark.parametrize("kwargs, error", [
    ({"timezone": "Europe/Nowhere"}, ZoneInfoNotFoundError),
    ({"day_start": time(17)}, ValueError),
    ({"day_end": time(17, tzinfo=UTC)}, ValueError),
])
def test_bad_calendars_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        SupportCalendar(**kwargs)


# Friday 16:00 + 8 working hours is 1h on Friday (16-17) plus 7h on Monday (09-16): Monday 16:00.
@pytest.mark.parametrize("start, duration, expected", [
    (local(2026, 6, 5, 16), HOURS_8, local(2026, 6, 8, 16)),        # Friday 16:00 -> Monday 16:00
    (local(2026, 12, 24, 16), HOURS_8, local(2026, 12, 29, 16)),    # skips 25th, weekend, 28th (observed)
    (local(2027, 12, 24, 16), HOURS_8, local(2027, 12, 29, 16)),    # skips weekend, 27th and 28th (observed)
    (local(2026, 6, 6, 11), HOURS_8, local(2026, 6, 8, 17)),        # Saturday start -> Monday 17:00
    (local(2026, 6, 5, 18), HOURS_8, local(2026, 6, 8, 17)),        # Friday evening start
    (local(2026, 6, 8, 7), HOURS_8, local(2026, 6, 8, 17)),         # Monday early start
    (local(2026, 6, 1, 10), HOURS_16, local(2026, 6, 3, 10)),       # P4 update: 2 business days
    (local(2026, 4, 2, 12), HOURS_16, local(2026, 4, 8, 12)),       # over Easter: Fri, weekend, Mon off
    (local(2026, 6, 5, 16), timedelta(hours=1), local(2026, 6, 5, 17)),  # ending at close stays Friday
    (local(2026, 6, 6, 11), timedelta(0), local(2026, 6, 8, 9)),    # zero rounds up to next opening
    (local(2026, 6, 3, 10, 30), timedelta(0), local(2026, 6, 3, 10, 30)),
    (local(2026, 6, 3, 10), timedelta(minutes=30), local(2026, 6, 3, 10, 30)),
])
def test_add_working_time(start, duration, expected):
    assert CAL.add_working_time(start, duration) == expected


def test_add_working_time_across_the_dst_changes():
    # Friday 16:00 GMT (= 16:00 UTC), 8 working hours -> Monday 16:00 BST (= 15:00 UTC):
    # the hour lost over the weekend is not working time, so it is not charged.
    result = CAL.add_working_time(utc(2026, 3, 27, 16), HOURS_8)
    assert result == utc(2026, 3, 30, 15)
    assert (result.hour, result.utcoffset()) == (16, timedelta(hours=1))
    # Friday 16:00 BST (= 15:00 UTC) -> Monday 16:00 GMT (= 16:00 UTC).
    result = CAL.add_working_time(utc(2026, 10, 23, 15), HOURS_8)
    assert result == utc(2026, 10, 26, 16)
    assert (result.hour, result.utcoffset()) == (16, timedelta(0))
    # Starting on the change day itself (Sunday 2027-03-28, Easter) -> Tuesday 17:00 BST.
    assert CAL.add_working_time(utc(2027, 3, 28, 0, 30), HOURS_8) == utc(2027, 3, 30, 16)


def test_add_working_time_answers_in_the_calendars_zone():
    result = CAL.add_working_time(utc(2026, 6, 3, 9), timedelta(hours=1))  # 10:00 BST start
    assert result.tzinfo == LONDON and (result.hour, result.minute) == (11, 0)


@pytest.mark.parametrize("when, expected", [
    (local(2026, 6, 5, 16, 59), local(2026, 6, 5, 17)),             # Friday: in hours -> overnight
    (local(2026, 6, 5, 17), local(2026, 6, 6, 9)),                  # overnight -> Saturday waking
    (local(2026, 6, 6, 9), local(2026, 6, 6, 17)),
    (local(2026, 6, 8, 0, 0), local(2026, 6, 8, 9)),                # midnight is no change
    (utc(2026, 3, 28, 17), utc(2026, 3, 29, 8)),                    # Sat 17:00 GMT -> Sun 09:00 BST
    (utc(2026, 10, 24, 16), utc(2026, 10, 25, 9)),                  # Sat 17:00 BST -> Sun 09:00 GMT
])
def test_next_window_change(when, expected):
    change = CAL.next_window_change(when)
    assert change == expected
    assert CAL.window_at(change - timedelta(microseconds=1)) == CAL.window_at(when)
    assert CAL.window_at(change) != CAL.window_at(when)


@pytest.mark.parametrize("call", [
    lambda t: CAL.window_at(t),
    lambda t: CAL.add_working_time(t, HOURS_8),
    lambda t: CAL.next_window_change(t),
])
def test_naive_datetimes_are_refused(call):
    with pytest.raises(ValueError, match="timezone-aware"):
        call(datetime(2026, 6, 3, 12))


def test_negative_durations_are_refused():
    with pytest.raises(ValueError):
        CAL.add_working_time(local(2026, 6, 3, 12), -HOURS_8)
