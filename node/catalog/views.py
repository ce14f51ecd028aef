"""Terminal views of the catalogue: lists, one entry, search hits, coverage.

Values from users (names, summaries) are printed as Text, never as markup.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from node.output import console

_FRESHNESS_STYLE = {"fresh": "green", "late": "yellow", "stale": "red"}
_COVERAGE_STYLE = {"provided": "green", "stale": "yellow", "missing": "red"}


def _freshness(state: str | None) -> Text:
    return Text(state or "—", style=_FRESHNESS_STYLE.get(state or "", "dim"))


def _path(entry: dict[str, Any]) -> str:
    return " › ".join(f"{p['name']} {p['code']}" for p in entry.get("path", []))


def print_entries(entries: list[dict[str, Any]], *, show_path: bool = True) -> None:
    if not entries:
        console.print("no catalogue entries", highlight=False)
        return
    table = Table(show_lines=False)
    for column in ("code", "name", "department", "entity", "status", "ver", "freq", "sharing"):
        table.add_column(column)
    table.add_column("freshness")
    if show_path:
        table.add_column("node")
    for e in entries:
        cells = [
            Text(str(e["code"])),
            Text(str(e["name"])),
            Text(str(e["department"])),
            Text(str(e["entity"])),
            Text(str(e["status"])),
            Text(str(e["version"])),
            Text(str(e["update_frequency"])),
            Text(str(e["sharing"])),
            _freshness(e.get("freshness")),
        ]
        if show_path:
            cells.append(Text(_path(e)))
        table.add_row(*cells)
    console.print(table)


def print_entry(shown: dict[str, Any]) -> None:
    e = shown["entry"]
    lines = [
        ("code", e["code"]),
        ("name", e["name"]),
        ("summary", e["summary"]),
        ("status", f"{e['status']} (version {e['version']})"),
        ("node", _path(e)),
        ("provider", e["department"]),
        ("authoritative source", f"{e['source_node']} {e['source_department']}"),
        ("entity", e["entity"]),
        ("format", e["format"]),
        ("update frequency", e["update_frequency"]),
        (
            "freshness",
            f"{e.get('freshness') or '—'} (last change {e.get('last_change_at') or '—'})",
        ),
        ("sharing", f"{e['sharing']} ({e['sharing_kind']}) {e['sharing_conditions']}".rstrip()),
        ("open", e["open_attribute"]),
        ("sensitivity", e["sensitivity"]),
        ("keywords", ", ".join(e.get("keywords") or []) or "—"),
        ("provides", e.get("provides") or "—"),
        ("published on", e.get("published_on") or "—"),
    ]
    for label, value in lines:
        console.print(Text(f"{label:>20}: ", style="bold") + Text(str(value)), highlight=False)
    fields = Table(title="information items (信息项)")
    for column in ("field", "type", "description", "code list", "sensitivity"):
        fields.add_column(column)
    for f in e.get("fields", []):
        fields.add_row(
            *(
                Text(str(f.get(k) or ""))
                for k in ("name", "type", "description", "code_list", "sensitivity")
            )
        )
    console.print(fields)
    if shown.get("draft"):
        console.print(
            Text(f"a draft of version {shown['draft']['version']} is pending publication"),
            highlight=False,
        )
    if shown.get("history"):
        history = Table(title="history")
        for column in ("at", "version", "action", "by", "note"):
            history.add_column(column)
        for h in shown["history"]:
            history.add_row(
                *(Text(str(h[k] or "")) for k in ("at", "version", "action", "by", "note"))
            )
        console.print(history)


def print_coverage(coverage: dict[str, Any]) -> None:
    items = coverage["items"]
    if not items:
        console.print("no standard items are known at this node", highlight=False)
        return
    table = Table()
    table.add_column("node")
    for item in items:
        table.add_column(f"{item['name']}\n{item['code']}")
    for row in coverage["nodes"]:
        label = Text("  " * row["depth"] + f"{row['code']} {row['name']}")
        if "cells" in row:
            cells = [
                Text(row["cells"][i["code"]], style=_COVERAGE_STYLE[row["cells"][i["code"]]])
                for i in items
            ]
        else:
            cells = []
            for item in items:
                counts = row["rollup"][item["code"]]
                total = sum(counts.values())
                cells.append(Text(f"{counts.get('provided', 0)}/{total} provided", style="bold"))
        table.add_row(label, *cells)
    console.print(table)


def print_standards(items: list[dict[str, Any]]) -> None:
    if not items:
        console.print("no standard items are known at this node", highlight=False)
        return
    table = Table()
    for column in ("code", "name", "entity", "fields", "freq", "from", "provided by"):
        table.add_column(column)
    for i in items:
        table.add_row(
            Text(i["code"]),
            Text(i["name"]),
            Text(i["entity"]),
            Text(", ".join(i["fields"])),
            Text(i["update_frequency"]),
            Text(i["received_from"] or "this node"),
            Text(", ".join(i["provided_by"]) or "missing", style="" if i["provided_by"] else "red"),
        )
    console.print(table)
