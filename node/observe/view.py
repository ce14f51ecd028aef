"""The view document behind the status page and `/status.json`.

Its shape is a contract with the page renderer (`node.observe.page.render_page`):
`node` is `NodeService.status()` as `tongyuan status --json` prints it; `lag_history`
maps each child's code to `[unix_seconds, lag_sequences | null, lag_seconds | null]`
points of the last six hours, oldest first; `catalog` is the published catalogue
(`catalog list` without drafts); `generated_at` is an ISO-8601 UTC time.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from node.admin import to_json
from node.service import NodeService

HISTORY = timedelta(hours=6)


DISCREPANCIES_SHOWN = 50


def build_view(service: NodeService) -> dict[str, Any]:
    """The view as plain JSON values, exactly what `/status.json` serves."""
    now = datetime.now(UTC)
    history = service.store.lag_history(now - HISTORY)
    view = {
        "node": service.status(),
        "lag_history": {code: [list(p) for p in points] for code, points in history.items()},
        "catalog": service.catalog.list_entries(drafts=False),
        # Open discrepancies known here (found here or delivered), oldest first.
        "discrepancies": service.store.sources.discrepancies()[:DISCREPANCIES_SHOWN],
        "generated_at": now.isoformat(timespec="milliseconds"),
    }
    # Through JSON once, so the page sees the same types `/status.json` and the CLI show.
    result: dict[str, Any] = json.loads(to_json(view))
    return result
