"""Budget windows: which counter a period's spend goes to, and when that window ends (UTC).

``day`` resets at 00:00 UTC, ``week`` on Monday 00:00 UTC (ISO weeks), ``month`` on
the 1st at 00:00 UTC, ``total`` never. A window's counter key names the window
(``m202612``), so a new period starts from zero without anything being reset;
the old counter expires an hour after its window ends.
"""

from __future__ import annotations

import calendar
import time

TTL_SLACK_S = 3600.0  # a finished window's counter lingers this long (late settlements still land)


_current: dict[str, tuple[str, float, float]] = {}  # period → (window id, start, end): the request path's memo


def window(period: str, now: float | None = None) -> tuple[str, float]:
    """(the window's id, seconds until it ends; 0 for ``total``)."""
    if now is None:
        now = time.time()
        found = _current.get(period)
        if found is not None and found[1] <= now < found[2]:
            return found[0], found[2] - now
        wid, left = compute(period, now)
        if left:
            _current[period] = (wid, now, now + left)
        return wid, left
    return compute(period, now)


def compute(period: str, now: float) -> tuple[str, float]:
    t = time.gmtime(now)
    day_start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    if period == "day":
        return f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", day_start + 86400 - now
    if period == "week":
        year, week, weekday = time.strftime("%G %V %u", t).split()
        return f"w{year}{week}", day_start + (8 - int(weekday)) * 86400 - now
    if period == "month":
        days = calendar.monthrange(t.tm_year, t.tm_mon)[1]
        start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
        return f"m{t.tm_year:04d}{t.tm_mon:02d}", start + days * 86400 - now
    return "all", 0.0
