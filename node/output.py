"""Terminal output: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Piped output is read by people too: render tables at their natural width, not 80 columns.
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 250
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True)


def _json_value(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, default=_json_value) + "\n")


def print_batches(
    batches: Iterable[pa.RecordBatch], *, as_json: bool, max_rows: int = 1000
) -> None:
    """Print a query's answer as it streams: a JSON array, or a table of the first rows."""
    if as_json:
        out = sys.stdout
        out.write("[")
        first = True
        for batch in batches:
            for row in batch.to_pylist():
                out.write(
                    ("" if first else ",")
                    + json.dumps(row, ensure_ascii=False, default=_json_value)
                )
                first = False
        out.write("]\n")
        return
    view: Table | None = None
    total = 0
    for batch in batches:
        if view is None:
            view = Table(show_lines=False)
            for name in batch.schema.names:
                view.add_column(Text(name), no_wrap=True)
        room = max(0, max_rows - total)
        for row in batch.slice(0, room).to_pylist():
            view.add_row(*(_cell(v) for v in row.values()))
        total += batch.num_rows
    if view is not None:
        console.print(view)
        console.file.flush()
    shown = min(total, max_rows)
    note = f"{total} row(s)" + (f", first {shown} shown" if shown < total else "")
    err_console.print(note, style="dim")


def _cell(value: object) -> Text:
    """Data as plain text: a value like "[b]" must print as written, not as markup."""
    if value is None:
        return Text("")
    return Text(value if isinstance(value, str) else str(_json_value(value)))


def _fmt(value: object) -> Text:
    return Text("—") if value is None else Text(str(value))


def print_status(status: dict[str, Any]) -> None:
    serving = "serving" if status["serving"] else "not serving"
    console.print(
        f"[bold]{escape(status['name'])}[/bold]  node {status['code']}  tier {status['tier']}  "
        f"({serving} on {status['listen']})"
    )
    _print_security(status.get("security"))
    if status.get("http"):
        console.print(f"metrics and status page: http://{status['http']}/")
    console.print(f"change log head: {status['head_seq']}")
    parents = status["parents"]
    if parents:
        for parent in parents:
            console.print(
                f"parent {parent['code']}: acknowledged up to {parent['acked_seq']}, "
                f"last seen {parent['last_seen']}"
            )
    else:
        console.print("parent: none has pulled yet")
    rows = Table(title="records")
    rows.add_column("entity")
    rows.add_column("rows", justify="right")
    rows.add_column("by link")
    for name, info in status["entities"].items():
        by_link = ", ".join(f"{k}: {v}" for k, v in info["by_link"].items())
        rows.add_row(Text(name), Text(str(info["rows"])), Text(by_link))
    console.print(rows)
    _print_catalog_summary(status.get("catalog"))
    _print_model_summary(status.get("model"), status.get("discrepancies"))
    _print_quality_summary(status.get("quality"))
    _print_grants_summary(status.get("grants"))
    _print_sharing_summary(status.get("sharing"))
    _print_audit_summary(status.get("audit"))
    if status["children"]:
        print_children(status["children"])


def _print_audit_summary(audit: dict[str, Any] | None) -> None:
    """Audit lines of `status`: this node's chain, the children's anchors, and loudly any
    child caught rewriting its chain."""
    if not audit:
        return
    text = f"audit chain: {audit['entries']} entries, head {audit['head_seq']}"
    text += f" {audit['head_hash'][:16]}… (`tongyuan audit verify`)"
    anchored = [
        f"{c['child']} at {c['anchored_seq']}" for c in audit["children"] if c["anchored_seq"]
    ]
    if anchored:
        text += f"; children anchored: {', '.join(anchored)}"
    console.print(text, highlight=False)
    for problem in audit["problems"]:
        console.print(Text(f"  AUDIT: {problem['problem']}", style="bold red"), highlight=False)


def _print_grants_summary(grants: dict[str, Any] | None) -> None:
    """Grants line of `status`: return flows held here and given here, the next expiry."""
    if not grants or not any(
        grants[k] for k in ("held", "requested", "given", "to_decide", "rows_returned")
    ):
        return
    text = (
        f"grants: {grants['held']} held ({grants['rows_returned']} rows returned, "
        f"{grants['requested']} requested), {grants['given']} given"
    )
    if grants["to_decide"]:
        text += f", {grants['to_decide']} to decide (`tongyuan grant list`)"
    if grants["next_expiry"]:
        text += f"; next expiry {grants['next_expiry']}"
    console.print(text, highlight=False)


def _print_security(security: dict[str, Any] | None) -> None:
    """Security line of `status`: plaintext is printed loudly, never as a footnote."""
    if not security:
        return
    mode = security["mode"]
    if mode == "plaintext-dev":
        console.print(
            Text(
                "PLAINTEXT — development only, federation is not authenticated "
                "([security] plaintext_dev = true)",
                style="bold white on red",
            ),
            highlight=False,
        )
    elif mode == "no-certificate":
        problem = security.get("problem")
        console.print(
            Text(
                "security: NO CERTIFICATE — every federation call is refused; run "
                "`tongyuan pki request` (or `pki init-root` at the top node)"
                + (f" ({problem})" if problem else ""),
                style="bold red",
            ),
            highlight=False,
        )
    else:
        parent = security.get("parent") or "none (holds the federation root)"
        expired = security.get("expired")
        console.print(
            Text(
                f"security: mutual TLS, certificate {security['serial']} "
                f"(sha256 {security['fingerprint'][:16]}…), parent {parent}, "
                f"{'EXPIRED' if expired else 'valid until'} {security['not_after']}",
                style="bold red" if expired else "",
            ),
            highlight=False,
        )


def _print_catalog_summary(summary: dict[str, Any] | None) -> None:
    """Catalogue line of `status`: own entries, freshness here and per node below."""
    if not summary:
        return
    own, fresh = summary["own"], summary["freshness"]
    console.print(
        f"catalogue: {own['published']} published, {own['draft']} draft, "
        f"{own['retired']} retired here; {summary['standard_items']} standard items known",
        highlight=False,
    )
    console.print(
        f"freshness (this node and below): {fresh['fresh']} fresh, {fresh['late']} late, "
        f"{fresh['stale']} stale",
        highlight=False,
    )
    for item in summary["not_fresh"]:
        console.print(
            Text(f"  {item['freshness']}: {item['code']} {item['name']}", style="yellow"),
            highlight=False,
        )
    if len(summary["by_node"]) > 1:
        view = Table(title="freshness by node")
        for column in ("node", "name", "fresh", "late", "stale"):
            view.add_column(column)
        for node in summary["by_node"]:
            view.add_row(*(Text(str(node[k])) for k in ("code", "name", "fresh", "late", "stale")))
        console.print(view)


def _print_model_summary(
    model: dict[str, Any] | None, discrepancies: dict[str, int] | None
) -> None:
    """Model and one-source lines of `status`: what this node works with, what its parent
    offers (loudly when not adopted), and open discrepancies."""
    if model:
        console.print(f"model: {model['active']['label']}", highlight=False)
        offered = model.get("offered")
        if offered and not offered["adopted"]:
            console.print(
                Text(
                    f"  parent {offered['parent']} offers {offered['label']}: not adopted "
                    "(`tongyuan model adopt --dry-run` shows the plan)",
                    style="yellow",
                ),
                highlight=False,
            )
        differing = [c["code"] for c in model.get("children", []) if not c["same_as_ours"]]
        if differing:
            console.print(
                f"  children on another model: {', '.join(differing)} (`tongyuan model calibrate`)",
                highlight=False,
            )
    if discrepancies:
        console.print(
            f"one source: {discrepancies['observations']} observations, "
            f"{discrepancies['open']} open discrepancies (`tongyuan discrepancies list`)",
            highlight=False,
        )


def _print_quality_summary(quality: dict[str, Any] | None) -> None:
    """Quality lines of `status`: the rule library in force, rows held, feedback items."""
    if not quality:
        return
    library = ", ".join(quality["library"]) or "none (`tongyuan quality rules show`)"
    console.print(f"rule library: {library}", highlight=False)
    held = quality["quarantine"]["held"]
    feedback = quality["feedback"]
    line = (
        f"quality: {held} rows held in quarantine, {quality['quarantine']['flags']} flagged; "
        f"feedback: {feedback['open']} open, {feedback['acknowledged']} acknowledged"
    )
    if feedback["overdue"]:
        line += f", {feedback['overdue']} overdue"
    console.print(
        Text(line, style="yellow" if held or feedback["overdue"] else ""), highlight=False
    )


def _print_sharing_summary(sharing: dict[str, Any] | None) -> None:
    """Sharing line of `status`: own resources per sharing kind, what is protected on the
    way out, and whether pseudonyms agree across the federation."""
    if not sharing:
        return
    kinds = sharing["resources"]
    protected = sharing["protected_attributes"]
    shown = ", ".join(f"{a} {t}" for a, t in list(protected.items())[:6])
    more = f" (+{len(protected) - 6})" if len(protected) > 6 else ""
    key = sharing["federation_key"]
    console.print(
        Text(
            f"sharing enforced: {kinds.get('unconditional', 0)} unconditional, "
            f"{kinds.get('conditional', 0)} conditional, {kinds.get('none', 0)} not shared; "
            f"leaving protected: {shown or 'nothing'}{more}; federation key: {key}",
            style="yellow" if key == "local only" else "",
        ),
        highlight=False,
    )


def print_children(children: list[dict[str, Any]]) -> None:
    if not children:
        console.print("no children")
        return
    view = Table(title="children")
    for column in (
        "code",
        "name",
        "address",
        "state",
        "checkpoint",
        "lag",
        "lag s",
        "last pull",
        "rows",
        "error",
    ):
        view.add_column(column)
    for child in children:
        view.add_row(
            Text(child["code"]),
            Text(child["name"]),
            Text(child["address"]),
            Text(child["state"]),
            _fmt(child["checkpoint"]),
            _fmt(child["lag"]),
            _fmt(child["lag_seconds"]),
            _fmt(child["last_pull"]),
            _fmt(child["rows"]),
            _fmt(child["error"]),
        )
    console.print(view)
