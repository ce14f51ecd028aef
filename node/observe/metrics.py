"""Prometheus metrics of a serving node, read from the node's own state at each scrape.

A custom collector on a registry of its own (not the process-global one), so every
value comes from the store and the links when Prometheus asks, and a second node in
the same process (tests) never shares series. Process figures (`process_*`) come from
prometheus_client's standard ProcessCollector.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from node import __version__
from node.catalog.freshness import STATES
from node.federation.links import LinkStatus
from node.quality.report import SCORES, flatten
from node.service import NodeService
from node.store import LinkRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Link states in which the parent is receiving the child's changes ("idle": between
# scheduled pulls when streams are off, the last one having succeeded).
UP_STATES = frozenset({"streaming", "polling", "idle"})


def _timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class NodeCollector(Collector):
    """Node, children (links), entities and catalogue freshness, one consistent read."""

    def __init__(self, service: NodeService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        status = service.status()
        links = {record.child_code: record for record in service.store.links()}
        live = service.links.statuses() if service.links is not None else {}

        info = InfoMetricFamily("tongyuan_node", "This node's identity (value is always 1).")
        info.add_metric(
            [],
            {
                "code": status["code"],
                "name": status["name"],
                "tier": status["tier"],
                "version": __version__,
            },
        )
        yield info
        yield GaugeMetricFamily(
            "tongyuan_change_log_head_sequence",
            "Sequence number of the last change in this node's change log.",
            value=status["head_seq"],
        )

        acked = GaugeMetricFamily(
            "tongyuan_parent_acked_sequence",
            "Change-log sequence each parent has acknowledged applying.",
            labels=["parent"],
        )
        seen = GaugeMetricFamily(
            "tongyuan_parent_last_seen_timestamp_seconds",
            "When each parent last pulled or acknowledged (Unix time).",
            labels=["parent"],
        )
        for parent in status["parents"]:
            acked.add_metric([parent["code"]], parent["acked_seq"])
            last_seen = _timestamp(parent["last_seen"])
            if last_seen is not None:
                seen.add_metric([parent["code"]], last_seen)
        yield acked
        yield seen

        yield from self._children(status["children"], links, live)

        rows = GaugeMetricFamily(
            "tongyuan_entity_rows", "Live records per entity (own and pulled).", labels=["entity"]
        )
        for entity, count in sorted(status["rows"].items()):
            rows.add_metric([entity], count)
        yield rows

        yield from self._catalog()
        yield from self._model_and_sources(status)
        yield from self._quality(status["quality"])
        yield from self._audit(status["audit"])

    def _children(
        self,
        children: list[dict[str, Any]],
        links: dict[str, LinkRecord],
        live: dict[str, LinkStatus],
    ) -> Iterator[Metric]:
        labels = ["child"]
        up = GaugeMetricFamily(
            "tongyuan_child_up",
            "1 while the link receives the child's changes (streaming, polling, or idle "
            "between successful scheduled pulls), else 0.",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "tongyuan_child_lag_sequences",
            "Changes the child has that this node has not applied (absent while unknown).",
            labels=labels,
        )
        lag_seconds = GaugeMetricFamily(
            "tongyuan_child_lag_seconds",
            "Seconds since this node last held everything the child had (0 when caught up; "
            "absent while unknown).",
            labels=labels,
        )
        checkpoint = GaugeMetricFamily(
            "tongyuan_child_checkpoint_sequence",
            "The child's change-log sequence this node has applied through.",
            labels=labels,
        )
        contact = GaugeMetricFamily(
            "tongyuan_child_last_contact_timestamp_seconds",
            "Last applied batch or heartbeat from the child (Unix time).",
            labels=labels,
        )
        applied = CounterMetricFamily(
            "tongyuan_child_rows_applied",
            "Rows from the child that became new versions here (kept across restarts).",
            labels=labels,
        )
        batches = CounterMetricFamily(
            "tongyuan_child_batches_applied",
            "Change windows from the child applied here (kept across restarts).",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "tongyuan_child_pull_errors",
            "Failed pull sessions (unreachable, refused, bad data) since this node started.",
            labels=labels,
        )
        for child in children:
            code = child["code"]
            up.add_metric([code], 1 if child["state"] in UP_STATES else 0)
            if child["lag"] is not None:
                lag.add_metric([code], child["lag"])
            if child["lag_seconds"] is not None:
                lag_seconds.add_metric([code], child["lag_seconds"])
            checkpoint.add_metric([code], child["checkpoint"])
            last = _timestamp(child["last_pull"])
            if last is not None:
                contact.add_metric([code], last)
            record = links.get(code)
            applied.add_metric([code], record.rows_applied if record else 0)
            batches.add_metric([code], record.batches_applied if record else 0)
            link = live.get(code)
            errors.add_metric([code], link.pull_errors if link else 0)
        yield from (up, lag, lag_seconds, checkpoint, contact, applied, batches, errors)

    @staticmethod
    def _model_and_sources(status: dict[str, Any]) -> Iterator[Metric]:
        model = status["model"]
        info = InfoMetricFamily("tongyuan_model", "The model this node works with (value 1).")
        active = model["active"]
        info.add_metric(
            [],
            {"name": active["name"], "version": active["version"], "digest": active["digest"]},
        )
        yield info
        if model["offered"] is not None:
            yield GaugeMetricFamily(
                "tongyuan_model_adopted",
                "1 if this node works with the model its parent offers, else 0.",
                value=1 if model["offered"]["adopted"] else 0,
            )
        counts = status["discrepancies"]
        discrepancies = GaugeMetricFamily(
            "tongyuan_discrepancies",
            "Discrepancies between sources known here (found here or delivered), by state.",
            labels=["state"],
        )
        discrepancies.add_metric(["open"], counts["open"])
        discrepancies.add_metric(["resolved"], counts["resolved"])
        yield discrepancies
        yield GaugeMetricFamily(
            "tongyuan_observations",
            "Values held from non-authoritative sources (observations) in this node's log.",
            value=counts["observations"],
        )

    def _quality(self, quality: dict[str, Any]) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "tongyuan_quarantine_rows",
            "Rows held in quarantine by a blocking rule, by entity and resource.",
            labels=["entity", "resource"],
        )
        for group in quality["quarantine"]["held_by_resource"]:
            held.add_metric([group["entity"], group["resource"] or ""], group["rows"])
        yield held
        yield GaugeMetricFamily(
            "tongyuan_quality_flags",
            "Record versions applied with a warning flag (a warning rule failed).",
            value=quality["quarantine"]["flags"],
        )
        feedback = GaugeMetricFamily(
            "tongyuan_feedback_items",
            "Feedback items known here by state (overdue: open or acknowledged too long).",
            labels=["state"],
        )
        for state in ("open", "acknowledged", "closed", "overdue"):
            feedback.add_metric([state], quality["feedback"][state])
        yield feedback
        yield from self._scores()

    @staticmethod
    def _audit(audit: dict[str, Any]) -> Iterator[Metric]:
        """This node's audit chain, and what it anchored of each child's."""
        yield GaugeMetricFamily(
            "tongyuan_audit_chain_entries",
            "Entries in this node's audit chain.",
            value=audit["entries"],
        )
        anchored = GaugeMetricFamily(
            "tongyuan_audit_child_anchored_sequence",
            "The child's audit chain sequence this node last verified and anchored.",
            labels=["child"],
        )
        problem = GaugeMetricFamily(
            "tongyuan_audit_child_problem",
            "1 while the child's audit chain fails verification against this node's anchors "
            "(rewritten, edited, wrongly signed), else 0.",
            labels=["child"],
        )
        for child in audit["children"]:
            anchored.add_metric([child["child"]], child["anchored_seq"] or 0)
            problem.add_metric([child["child"]], 1 if child["problem"] else 0)
        yield from (anchored, problem)

    def _scores(self) -> Iterator[Metric]:
        """The quality report as parents get it (cached for a moment, and its measures
        are recomputed only for resources whose data changed)."""
        score = GaugeMetricFamily(
            "tongyuan_quality_score",
            "Quality scores (0–1) per resource of this node and below, and rolled up per "
            'node (resource=""), by measure (completeness, validity, uniqueness, '
            "consistency, timeliness, overall).",
            labels=["node", "resource", "measure"],
        )
        report = json.loads(self.service.reporter.document()[0])
        for row in flatten(report):
            if row["kind"] not in ("resource", "rollup"):
                continue
            for measure in SCORES:
                if row[measure] is not None:
                    score.add_metric([row["node"], row["resource"], measure], row[measure])
        yield score

    def _catalog(self) -> Iterator[Metric]:
        freshness = GaugeMetricFamily(
            "tongyuan_resource_freshness",
            "Freshness of each published resource known here: 1 for its current state "
            "(fresh, late, stale), 0 for the others.",
            labels=["resource", "origin_node", "state"],
        )
        totals = dict.fromkeys(STATES, 0)
        for entry in self.service.catalog.list_entries(drafts=False, status="published"):
            state = entry.get("freshness")
            if state not in totals:
                continue  # never changed and no publication date: no freshness yet
            totals[state] += 1
            for candidate in STATES:
                freshness.add_metric(
                    [entry["code"], entry["origin_node"], candidate], 1 if candidate == state else 0
                )
        yield freshness
        resources = GaugeMetricFamily(
            "tongyuan_resources",
            "Published resources known here (own and subtree) by freshness state.",
            labels=["state"],
        )
        for state, count in totals.items():
            resources.add_metric([state], count)
        yield resources


class NodeMetrics:
    """The registry `/metrics` renders: the node collector plus process figures."""

    def __init__(self, service: NodeService) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(service))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
