"""Freshness (鲜活度): a resource's last effective change against its update frequency.

A resource is *fresh* while its last change is at most one period old, *late* up to
two periods, *stale* beyond. A published resource that never changed counts from its
publication (the moment; the publication date alone counts from its midnight, UTC).
The clock is a parameter so a test or a drill can evaluate any moment.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta

from node.catalog.entries import FREQUENCIES
from node.errors import UserError

FRESH, LATE, STALE = "fresh", "late", "stale"
STATES = (FRESH, LATE, STALE)
# Seconds added to the clock freshness is judged by (drills and tests: "what if a day passed").
CLOCK_SKEW_ENV = "TONGYUAN_CLOCK_SKEW_SECONDS"


def clock() -> datetime:
    """Now, as freshness sees it: the real clock plus any configured skew."""
    raw = os.environ.get(CLOCK_SKEW_ENV) or "0"
    try:
        skew = float(raw)
    except ValueError:
        raise UserError(f"{CLOCK_SKEW_ENV}={raw!r} is not a number of seconds") from None
    return datetime.now(UTC) + timedelta(seconds=skew)


def freshness(
    update_frequency: str,
    last_change_at: datetime | None,
    published_on: date | None,
    now: datetime,
) -> str | None:
    """fresh / late / stale, or None when the resource has neither changes nor a publication."""
    if update_frequency not in FREQUENCIES:
        return None
    reference = last_change_at
    if reference is None and published_on is not None:
        reference = datetime.combine(published_on, time.min, tzinfo=UTC)
    if reference is None:
        return None
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    period = FREQUENCIES[update_frequency][0]
    age = now - reference
    if age <= period:
        return FRESH
    if age <= 2 * period:
        return LATE
    return STALE
