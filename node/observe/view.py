"""The view document behind the status page and `/status.json`.

Its shape is a contract with the page renderer (`node.observe.page.render_page`):

- `node` is `NodeService.status()` as `tongyuan status --json` prints it (its `quality`
  holds the rule library's labels, quarantine counts and feedback counts);
- `lag_history` maps each child's code to `[unix_seconds, lag_sequences | null,
  lag_seconds | null]` points of the last six hours, oldest first;
- `catalog` is the published catalogue (`catalog list` without drafts);
- `discrepancies` are the open discrepancies known here, oldest first, at most 50;
- `quality` is this node's quality report (`tongyuan quality report`) as rows in tree
  order (`node.quality.report.flatten`): this node's roll-up line, its own resources, then
  each child's the same way, a child whose report was not pulled yet as one `pending`
  line. Each row has node, node_name, tier, depth, kind (`rollup` | `resource` |
  `pending`), resource, resource_name, records, resources and nodes (roll-up lines only),
  and the scores completeness, validity, uniqueness, consistency, timeliness, overall —
  each a fraction 0–1, or null for no data;
- `quality_weights` maps each score to its weight in `overall` (as the report states);
- `feedback` are the rule items and objections known here that are not closed (open or
  acknowledged), oldest first, at most 50 (filtered and limited by the store), as
  `tongyuan feedback list --json` shows them (id, kind `rule` | `objection`, entity,
  resource, record_key, owner_node, owner_dept, reason, raised_node, raised_by,
  raised_at, state, overdue, responses, …); the discrepancies, which `feedback list`
  shows as items of kind `discrepancy` too, are in `discrepancies` only;
- `generated_at` is an ISO-8601 UTC time.

A view from an older node may lack `discrepancies`, `quality`, `quality_weights` and
`feedback`; the page renders it all the same.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from node.admin import to_json
from node.quality.report import flatten
from node.service import NodeService

HISTORY = timedelta(hours=6)


DISCREPANCIES_SHOWN = 50
FEEDBACK_SHOWN = 50


def build_view(service: NodeService) -> dict[str, Any]:
    """The view as plain JSON values, exactly what `/status.json` serves."""
    now = datetime.now(UTC)
    history = service.store.lag_history(now - HISTORY)
    # The cached report (at most a couple of seconds old): parents pull the same document.
    report_json, _ = service.reporter.document()
    report: dict[str, Any] = json.loads(report_json)
    view = {
        "node": service.status(),
        "lag_history": {code: [list(p) for p in points] for code, points in history.items()},
        "catalog": service.catalog.list_entries(drafts=False),
        # Open discrepancies known here (found here or delivered), oldest first.
        "discrepancies": service.store.sources.discrepancies()[:DISCREPANCIES_SHOWN],
        "quality": flatten(report),
        "quality_weights": report.get("weights") or {},
        # Open and acknowledged items, oldest first (discrepancies are above).
        "feedback": service.feedback.pending(FEEDBACK_SHOWN),
        "generated_at": now.isoformat(timespec="milliseconds"),
    }
    # Through JSON once, so the page sees the same types `/status.json` and the CLI show.
    result: dict[str, Any] = json.loads(to_json(view))
    return result
