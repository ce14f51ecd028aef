"""Quality scores per resource, rolled up county → city → province (数据质量考核).

Why this shape: the documents ask for quality to be judged per resource and compared
across regions. Each node scores only the resources it is the authoritative source of
(`ScoresStore.resource_measures`, where the data is), and its parent pulls the resulting
report over the link (`GetQuality`) and keeps it (`tongyuan.child_quality`). A node's
report embeds its children's reports as last pulled, so the province's report holds its
cities' which hold their counties': the province lists every county side by side without
ever scanning their rows, and each tier sees the same numbers the county sees.

The scores, each a fraction 0–1 (None, shown as "no data", when there is nothing to judge):

- completeness (完整性): filled cells / (records × attributes the resource carries, key
  excluded);
- validity (有效性): 1 − questionable / (records + held), where held rows are those a
  blocking rule keeps in quarantine and questionable ones are the held rows plus the live
  records whose current version carries a warning;
- uniqueness (唯一性): distinct normalised keys / records ('…002x' and '…002X', full-width
  digits or spaces make one key);
- consistency (一致性): 1 − records with an open discrepancy against another source / records;
- timeliness (及时性): 1 while the last change is at most one period of the declared update
  frequency old, then period / age (two periods old: 0.5); 0 if the resource never changed
  and was never published; counted from the publication when it never changed;
- overall: the weighted mean of the scores that exist, with the weights renormalised over
  them. Weights (`WEIGHTS`, stated in every report): completeness 0.25, validity 0.30,
  uniqueness 0.15, consistency 0.15, timeliness 0.15. A resource without data (no records
  and nothing held) has no overall score: its timeliness alone would praise an empty
  resource.

The roll-up of a node covers its own resources and every resource below it: each score is
the mean over those resources weighted by their records (validity by records + held, its
denominator), and its overall score is the weighted mean of the rolled-up scores — so on
every line of the report, resource or roll-up, overall follows from the line by `WEIGHTS`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from datetime import time as day_start
from typing import Any, TypeGuard

from node.catalog.entries import FREQUENCIES, check_resource_code
from node.catalog.freshness import clock as freshness_clock
from node.catalog.freshness import freshness
from node.config import NodeConfig
from node.divisions import is_within, lookup_division, tier_of
from node.errors import UserError
from node.store import Store

WEIGHTS: dict[str, float] = {
    "completeness": 0.25,
    "validity": 0.30,
    "uniqueness": 0.15,
    "consistency": 0.15,
    "timeliness": 0.15,
}
DIMENSIONS: tuple[str, ...] = tuple(WEIGHTS)
SCORES: tuple[str, ...] = (*DIMENSIONS, "overall")
# Scores measured on the records (the others: timeliness, from the catalogue).
DATA_DIMENSIONS = ("completeness", "validity", "uniqueness", "consistency")
TIMELINESS_RULE = (
    "1 while the last change is at most one update period old, then period/age; "
    "0 if never changed nor published"
)
ROLLUP_RULE = (
    "means over the node's own resources and every resource below it, weighted by records "
    "(validity by records + held); overall from the rolled-up scores by the weights"
)
# Version of the document's shape; a parent refuses a report it cannot read.
REPORT_FORMAT = 1
# Scores travel rounded: enough for percentages with two decimals, and a recomputation
# that changes nothing visible changes nothing in the digest.
DIGITS = 4
# A document younger than this is served from the cache (parents pull every few seconds).
CACHE_SECONDS = 2.0


# ----- scores -----------------------------------------------------------------------


def timeliness(
    update_frequency: str,
    last_change_at: datetime | None,
    published_on: date | None,
    now: datetime,
) -> float | None:
    """1.0 while the resource is fresh (last change at most one period old), decaying as
    period / age beyond; 0.0 if it never changed nor was published; None for an update
    frequency the catalogue does not know. Like freshness, a resource that never changed
    counts from its publication date (midnight UTC)."""
    if update_frequency not in FREQUENCIES:
        return None
    reference = last_change_at
    if reference is None and published_on is not None:
        reference = datetime.combine(published_on, day_start.min, tzinfo=UTC)
    if reference is None:
        return 0.0
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    period = FREQUENCIES[update_frequency][0]
    age = now - reference
    if age <= period:
        return 1.0
    return period / age


def overall(scores: Mapping[str, float | None]) -> float | None:
    """The weighted mean of the scores that exist (weights renormalised over them); None
    when none of the scores measured on records exists (no data)."""
    if all(scores.get(d) is None for d in DATA_DIMENSIONS):
        return None
    present = [(WEIGHTS[d], s) for d in DIMENSIONS if (s := scores.get(d)) is not None]
    total = sum(w for w, _ in present)
    return sum(w * s for w, s in present) / total


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def _iso(value: datetime | date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return value.isoformat()


def resource_entry(measures: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One resource of the report from its measures (`ScoresStore.resource_measures`)."""
    frequency = str(measures["update_frequency"])
    # As the catalogue judges freshness: from the last change, else the publication.
    changed = measures["last_change_at"] or measures.get("published_at")
    published = measures["published_on"]
    scores: dict[str, float | None] = {d: measures[d] for d in DATA_DIMENSIONS}
    scores["timeliness"] = timeliness(frequency, changed, published, now)
    scores["overall"] = overall(scores)
    records = int(measures["records"])
    return {
        "code": measures["code"],
        "name": measures["name"],
        "department": measures["department"],
        "entity": measures["entity"],
        "records": records,
        "held": int(measures["held"]),
        "counts": {
            "empty_cells": int(measures["cells"]) - int(measures["filled_cells"]),
            "questionable": int(measures["questionable"]),
            "duplicate_keys": records - int(measures["distinct_keys"]),
            "discrepant": int(measures["discrepant"]),
        },
        "update_frequency": frequency,
        "last_change_at": _iso(measures["last_change_at"]),
        "published_on": _iso(published),
        "freshness": freshness(frequency, changed, published, now),
        "scores": {name: _rounded(value) for name, value in scores.items()},
    }


def _subtree_resources(doc: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from doc.get("resources") or ()
    for child in doc.get("children") or ():
        yield from _subtree_resources(child)


def _count_nodes(doc: Mapping[str, Any]) -> int:
    return 1 + sum(_count_nodes(c) for c in doc.get("children") or ())


def rollup(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A node's line over its own resources and all below it: record-weighted means (see
    the module docstring)."""
    resources = list(_subtree_resources(doc))
    scores: dict[str, float | None] = {}
    for name in DIMENSIONS:
        weighted = total = 0.0
        for r in resources:
            value = (r.get("scores") or {}).get(name)
            weight = int(r.get("records") or 0)
            if name == "validity":
                weight += int(r.get("held") or 0)
            if value is not None and weight > 0:
                weighted += weight * float(value)
                total += weight
        scores[name] = weighted / total if total else None
    scores["overall"] = overall(scores)
    return {
        "nodes": _count_nodes(doc),
        "resources": len(resources),
        "records": sum(int(r.get("records") or 0) for r in resources),
        "held": sum(int(r.get("held") or 0) for r in resources),
        "scores": {name: _rounded(value) for name, value in scores.items()},
    }


def with_rollups(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with the roll-up of every node in it computed here (children's first), so the
    lines of a report agree with each other whatever version wrote the parts."""
    children = [with_rollups(dict(c)) for c in doc.get("children") or ()]
    result = {**doc, "children": children}
    result["rollup"] = rollup(result)
    return result


def _without_times(value: Any) -> Any:
    """The document without `generated_at` anywhere: what the digest covers."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "generated_at"}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def document_digest(doc: Mapping[str, Any]) -> str:
    """Changes when anything in the report but the time it was generated changes."""
    text = json.dumps(_without_times(doc), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


# ----- the document -------------------------------------------------------------------


class QualityReporter:
    """This node's quality report: its own resources' scores, its children's reports as
    last pulled, and the roll-up of every node. Safe to call from any thread; `document()`
    serves a cached copy younger than `CACHE_SECONDS` (a parent pulls it every few
    seconds, and measuring scans the node's records)."""

    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        *,
        clock: Callable[[], datetime] = freshness_clock,
        max_age: float = CACHE_SECONDS,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        # (monotonic time computed, JSON text, digest, document)
        self._cached: tuple[float, str, str, dict[str, Any]] | None = None

    def document(self) -> tuple[str, str]:
        """The report as compact JSON and its digest (which ignores `generated_at`, so a
        parent skips storing a report that only got older)."""
        with self._lock:
            cached = self._cached
            if cached is None or time.monotonic() - cached[0] > self._max_age:
                cached = self._compute()
            return cached[1], cached[2]

    def report(self) -> dict[str, Any]:
        """A freshly computed report document (`tongyuan quality report`)."""
        with self._lock:
            return self._compute()[3]

    def latest(self) -> dict[str, Any] | None:
        """The last computed document, without computing one (for metrics)."""
        cached = self._cached
        return cached[3] if cached is not None else None

    def _compute(self) -> tuple[float, str, str, dict[str, Any]]:
        doc = self.build()
        cached = (time.monotonic(), to_json(doc), document_digest(doc), doc)
        self._cached = cached
        return cached

    def build(self, now: datetime | None = None) -> dict[str, Any]:
        """The document as of `now` (default: the clock), uncached."""
        now = now or self._clock()
        store = self._store
        identity = store.identity()
        own = [resource_entry(m, now) for m in store.scores.resource_measures()]
        reports = store.scores.child_reports()
        # The children this node records in its tree (kept current by `children add` and
        # `remove`); a report of a node no longer below it is not shown.
        below = sorted(c for c, parent in store.catalog.tree().items() if parent == identity.code)
        children = [reports[c] for c in below if c in reports]
        pending = [{"code": c, "name": _division_name(c)} for c in below if c not in reports]
        doc: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "code": identity.code,
            "name": identity.name,
            "tier": identity.tier,
            "generated_at": now.astimezone(UTC).isoformat(timespec="seconds"),
            "weights": dict(WEIGHTS),
            "timeliness_rule": TIMELINESS_RULE,
            "rollup_rule": ROLLUP_RULE,
            "resources": own,
            "children": children,
            "pending": pending,
        }
        return with_rollups(doc)


def _division_name(code: str) -> str:
    try:
        return lookup_division(code).name
    except UserError:
        return ""


# ----- a child's report, as its parent receives it ----------------------------------------


def check_report_document(report_json: str, child: str) -> str:
    """Check a report pulled from `child`: a report document of `child` whose nested reports
    are each of a node below the one holding it. Returns the JSON text to keep; raises
    UserError saying what is wrong."""
    try:
        doc = json.loads(report_json)
    except ValueError as exc:
        raise UserError(f"quality report of child {child} is not JSON: {exc}") from None
    problem = _report_problem(doc, child, None)
    if problem:
        raise UserError(f"quality report of child {child}: {problem}")
    return to_json(doc)


def _is_score(value: object) -> bool:
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_division(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 6 and value.isascii() and value.isdigit()


def _report_problem(doc: object, code: str, parent: str | None) -> str | None:
    """What is wrong with `doc` as the report of node `code` (None if nothing)."""
    where = "" if parent is None else f"nested report of {code}: "
    if not isinstance(doc, dict):
        return f"{where}expected a JSON object, got {type(doc).__name__}"
    if doc.get("format") != REPORT_FORMAT:
        return f"{where}report format {doc.get('format')!r}, expected {REPORT_FORMAT}"
    if doc.get("code") != code:
        return f"{where}it is the report of node {doc.get('code')!r}, not {code}"
    for key in ("name", "tier", "generated_at"):
        if not isinstance(doc.get(key), str):
            return f"{where}{key!r} must be text"
    if doc["tier"] != tier_of(code).value:
        return f"{where}tier {doc['tier']!r} does not fit code {code}"
    resources = doc.get("resources")
    if not isinstance(resources, list):
        return f"{where}'resources' must be a list"
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("code"), str):
            return f"{where}each resource must be an object with a code"
        label = f"{where}resource {resource['code']}: "
        wrong_code = check_resource_code(resource["code"], code)
        if wrong_code:
            return label + wrong_code
        if not _is_count(resource.get("records")) or not _is_count(resource.get("held", 0)):
            return label + "'records' and 'held' must be counts"
        scores = resource.get("scores")
        if not isinstance(scores, dict) or set(scores) != set(SCORES):
            return label + f"'scores' must name exactly {', '.join(SCORES)}"
        if not all(_is_score(v) for v in scores.values()):
            return label + "every score must be a number from 0 to 1, or null"
    children, pending = doc.get("children"), doc.get("pending", [])
    if not isinstance(children, list) or not isinstance(pending, list):
        return f"{where}'children' and 'pending' must be lists"
    for waiting in pending:
        waiting_code = waiting.get("code") if isinstance(waiting, dict) else None
        if not _is_division(waiting_code) or not isinstance(waiting.get("name", ""), str):
            return f"{where}each pending child must be an object with a division code"
    for nested in children:
        nested_code = nested.get("code") if isinstance(nested, dict) else None
        if not _is_division(nested_code):
            return f"{where}a nested report has no division code"
        if nested_code == code or not is_within(nested_code, code):
            return f"{where}it holds a report of node {nested_code}, which is not below {code}"
        problem = _report_problem(nested, nested_code, code)
        if problem:
            return problem
    return None


# ----- one row per line -------------------------------------------------------------------


def flatten(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report as rows in tree order: each node's roll-up line (kind "rollup"), then its
    own resources (kind "resource"), then each child by code the same way (a child whose
    report was not pulled yet as one line of kind "pending") — province, then each city
    and its counties."""
    rows: list[dict[str, Any]] = []
    _flatten(doc, 0, rows)
    return rows


def _row(
    doc: Mapping[str, Any],
    depth: int,
    kind: str,
    resource: Mapping[str, Any] | None,
    line: Mapping[str, Any] | None,
) -> dict[str, Any]:
    scores = (line or {}).get("scores") or {}
    return {
        "node": doc.get("code", ""),
        "node_name": doc.get("name", ""),
        "tier": doc.get("tier", ""),
        "depth": depth,
        "kind": kind,
        "resource": (resource or {}).get("code", ""),
        "resource_name": (resource or {}).get("name", ""),
        "records": (line or {}).get("records"),
        # A roll-up line: how many resources and nodes it covers.
        "resources": (line or {}).get("resources") if kind == "rollup" else None,
        "nodes": (line or {}).get("nodes") if kind == "rollup" else None,
        **{name: scores.get(name) for name in SCORES},
    }


def _flatten(doc: Mapping[str, Any], depth: int, rows: list[dict[str, Any]]) -> None:
    line = doc.get("rollup") or rollup(doc)
    rows.append(_row(doc, depth, "rollup", None, line))
    for resource in doc.get("resources") or ():
        rows.append(_row(doc, depth, "resource", resource, resource))
    below = [(str(c.get("code", "")), False, c) for c in doc.get("children") or ()]
    below += [(str(p.get("code", "")), True, p) for p in doc.get("pending") or ()]
    for code, pending, child in sorted(below, key=lambda item: item[0]):
        if pending:
            node = {"code": code, "name": child.get("name", ""), "tier": _tier_name(code)}
            rows.append(_row(node, depth + 1, "pending", None, None))
        else:
            _flatten(child, depth + 1, rows)


def _tier_name(code: str) -> str:
    try:
        return tier_of(code).value
    except UserError:
        return ""
