"""`tongyuan quality report`: the quality scores of this node's resources and, at a parent,
of every node below it, side by side and rolled up (county → city → province).

The node computes the report (`quality.report`); this module only presents it: a table
for people, the document as `--json`, or one CSV line per resource and roll-up (`--csv`)
for spreadsheets and assessments (考核).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from node.cli_support import call_and_print, user_errors
from node.output import console
from node.quality.report import SCORES, WEIGHTS, flatten

CSV_COLUMNS = (
    "node",
    "node_name",
    "tier",
    "kind",
    "resource",
    "resource_name",
    "records",
    *SCORES,
)
NO_DATA = "no data"


def report_csv(doc: Mapping[str, Any]) -> str:
    """The report as CSV: one line per node roll-up and per resource, in tree order;
    scores as fractions 0–1 with four decimals, empty where there is no data."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in flatten(doc):
        cells = []
        for column in CSV_COLUMNS:
            value = row.get(column)
            if column in SCORES:
                cells.append("" if value is None else f"{float(value):.4f}")
            else:
                cells.append("" if value is None else str(value))
        writer.writerow(cells)
    return out.getvalue()


def _percent(value: float | None) -> Text:
    if value is None:
        return Text(NO_DATA, style="dim")
    style = "green" if value >= 0.9 else "yellow" if value >= 0.7 else "red"  # as the page
    return Text(f"{value * 100:.1f}%", style=style)


def print_report(doc: Mapping[str, Any]) -> None:
    """The report as a table: each node's roll-up line in bold, its resources under it,
    children indented below their parent."""
    table = Table(show_lines=False)
    table.add_column("node")
    table.add_column("resource")
    table.add_column("records", justify="right")
    for name in SCORES:
        table.add_column(name, justify="right")
    for row in flatten(doc):
        indent = "  " * int(row["depth"])
        if row["kind"] == "rollup":
            node = Text(f"{indent}{row['node']} {row['node_name']}", style="bold")
            count = row.get("resources") or 0
            below = " here and below" if row.get("nodes", 1) > 1 else ""
            resource = Text(f"all {count} resource(s){below}", style="bold")
        elif row["kind"] == "pending":
            node = Text(f"{indent}{row['node']} {row['node_name']}")
            resource = Text("no report pulled yet", style="dim")
        else:
            node = Text(f"{indent}  ")
            resource = Text(f"{row['resource']} {row['resource_name']}")
        records = row["records"]
        cells = [node, resource, Text("" if records is None else f"{records:,}")]
        if row["kind"] == "pending":
            cells += [Text("") for _ in SCORES]
        else:
            cells += [_percent(row[name]) for name in SCORES]
        table.add_row(*cells)
    console.print(table)
    weights = ", ".join(f"{name} {weight:.0%}" for name, weight in WEIGHTS.items())
    console.print(
        Text(
            f"overall = weighted mean of the scores present ({weights}); node lines roll up "
            "everything below them, weighted by records",
            style="dim",
        )
    )


@click.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print the report document as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one line per resource and node.")
@click.pass_context
@user_errors
def report_command(ctx: click.Context, as_json: bool, as_csv: bool) -> None:
    """Quality scores per resource — completeness, validity, uniqueness, consistency,
    timeliness and overall — for this node and, at a parent, every node below it, side by
    side and rolled up."""
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")

    def view(doc: dict[str, Any]) -> None:
        if as_csv:
            sys.stdout.write(report_csv(doc))
        else:
            print_report(doc)

    call_and_print(ctx, "quality.report", {}, as_json, view)
