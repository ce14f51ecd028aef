"""`tongyuan discrepancies …`: where sources disagree, and resolving it at the source."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from node.cli_support import actor_option, call_and_print, user_errors
from node.output import console


@click.group()
def discrepancies() -> None:
    """Disagreements between an attribute's authoritative source and other sources."""


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no discrepancies")
        return
    table = Table()
    for column in ("id", "record", "attribute", "source says", "observed", "observer", "state"):
        table.add_column(column)
    for r in rows:
        state = r["state"] if r["state"] == "open" else f"{r['state']} ({r['resolution']})"
        if r.get("action"):
            state += f"; {r['action']} here by {r['actor']}"
        table.add_row(
            r["id"],
            f"{r['entity']} {r['record_key']}",
            r["attribute"],
            f"{r['authoritative_value']} ({r['source_node']} {r['source_dept'] or ''})",
            str(r["observed_value"]),
            f"{r['observer_node']} {r['observer_dept'] or ''}",
            state,
        )
    console.print(table)


@discrepancies.command("list")
@click.option("--all", "include_resolved", is_flag=True, help="Include resolved ones.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def list_command(ctx: click.Context, include_resolved: bool, as_json: bool) -> None:
    """Discrepancies found here or delivered by the parent (about this node's subtree)."""
    args = {"include_resolved": include_resolved}
    call_and_print(ctx, "discrepancies.list", args, as_json, _print_list)


@discrepancies.command("resolve")
@click.argument("discrepancy_id", metavar="ID")
@click.option("--accept-observed", is_flag=True, help="The observed value is right: correct ours.")
@click.option("--value", help="Correct the source's value to VALUE.")
@click.option("--confirm", is_flag=True, help="The source's value is right: keep it.")
@click.option("--note", default="", help="Why (kept with the resolution).")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def resolve(
    ctx: click.Context,
    discrepancy_id: str,
    accept_observed: bool,
    value: str | None,
    confirm: bool,
    note: str,
    actor: str,
    as_json: bool,
) -> None:
    """Resolve discrepancy ID at its authoritative source; a correction travels everywhere."""
    args = {
        "discrepancy_id": discrepancy_id,
        "accept_observed": accept_observed,
        "value": value,
        "confirm": confirm,
        "note": note,
        "actor": actor,
    }

    def view(answer: dict[str, Any]) -> None:
        if answer["action"] == "corrected":
            console.print(
                f"{answer['id']}: corrected to {answer['value']!r} through {answer['resource']}; "
                "the correction travels upward and closes the discrepancy at every tier",
                highlight=False,
            )
        else:
            console.print(f"{answer['id']}: confirmed", highlight=False)

    call_and_print(ctx, "discrepancies.resolve", args, as_json, view, write=True)
