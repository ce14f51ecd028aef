"""`tongyuan grant …`: ask the parent for a slice of its data (return flow, 数据回流),
decide children's requests, and see both sides."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from node.cli_support import actor_option, call_and_print, user_errors
from node.output import console


def _print_list(items: list[dict[str, Any]]) -> None:
    if not items:
        console.print("no grants requested here or given here", highlight=False)
        return
    for side, title in (("requested", "requested from the parent"), ("given", "given here")):
        chosen = [i for i in items if i["side"] == side]
        if not chosen:
            continue
        table = Table(title=title)
        for column in ("id", "node", "resource", "filter", "purpose", "state", "expires", "rows"):
            table.add_column(column)
        for item in chosen:
            state = item["state"]
            if item.get("reason"):
                state += f"\n{item['reason']}"
            if item.get("purged_at"):
                state += f"\n{item['rows_purged']} rows purged at {item['purged_at']}"
            table.add_row(
                item["id"],
                item["peer"],
                item["resource"],
                item["filter"],
                item["purpose"],
                state,
                item["expires_at"] or "",
                "" if item["rows_held"] is None else str(item["rows_held"]),
            )
        console.print(table)


def _print_one(item: dict[str, Any]) -> None:
    where = "from parent" if item["side"] == "requested" else "for child"
    console.print(
        f"grant {item['id']} {where} {item['peer']}: {item['resource']} where {item['filter']} "
        f"— {item['state']}, expires {item['expires_at']}",
        highlight=False,
    )
    if item["side"] == "requested":
        console.print(
            "the request travels up when the parent next pulls; see `tongyuan grant list`",
            highlight=False,
        )
    elif item["state"] in ("approved", "denied", "revoked"):
        console.print("the decision travels down on the next connection", highlight=False)


@click.group()
def grant() -> None:
    """Return flows: a child's request for a filtered slice of its parent's data, the
    parent's decision, and the slice kept in step until it expires or is revoked."""


@grant.command("request")
@click.argument("resource")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    required=True,
    metavar="ATTR=VALUE",
    help="Which rows: an attribute (or origin_node, origin_dept) and a value; repeat to AND.",
)
@click.option("--purpose", required=True, help="What the data is for (travels with the request).")
@click.option(
    "--expires",
    required=True,
    help="Until when: a duration (30s, 12h, 90d, 2w), a date or a date and time (UTC).",
)
@click.option("--to", "to", default=None, help="The parent asked (default: the one that pulls).")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def request_command(
    ctx: click.Context,
    resource: str,
    filters: tuple[str, ...],
    purpose: str,
    expires: str,
    to: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Ask the parent for the rows of RESOURCE (a code from its catalogue) the filters admit."""
    args = {
        "resource": resource,
        "filters": list(filters),
        "purpose": purpose,
        "expires": expires,
        "to": to,
        "actor": actor,
    }
    call_and_print(ctx, "grant.request", args, as_json, _print_one, write=True)


@grant.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Requests made here (state, rows held, expiry) and grants given here."""
    call_and_print(ctx, "grant.list", {}, as_json, _print_list)


@grant.command("approve")
@click.argument("grant_id", metavar="ID")
@click.option("--expires", default=None, help="Until when (default: as requested).")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def approve_command(
    ctx: click.Context, grant_id: str, expires: str | None, actor: str, as_json: bool
) -> None:
    """Approve a child's request ID; its slice flows down from the next connection."""
    args = {"grant_id": grant_id, "expires": expires, "actor": actor}
    call_and_print(ctx, "grant.approve", args, as_json, _print_one, write=True)


@grant.command("deny")
@click.argument("grant_id", metavar="ID")
@click.option("--reason", required=True, help="Why (travels to the child).")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def deny_command(ctx: click.Context, grant_id: str, reason: str, actor: str, as_json: bool) -> None:
    """Deny a child's request ID."""
    args = {"grant_id": grant_id, "reason": reason, "actor": actor}
    call_and_print(ctx, "grant.deny", args, as_json, _print_one, write=True)


@grant.command("revoke")
@click.argument("grant_id", metavar="ID")
@click.option("--reason", default="", help="Why (travels to the child).")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def revoke_command(
    ctx: click.Context, grant_id: str, reason: str, actor: str, as_json: bool
) -> None:
    """Revoke grant ID now: deliveries stop and the child purges its copy."""
    args = {"grant_id": grant_id, "reason": reason, "actor": actor}
    call_and_print(ctx, "grant.revoke", args, as_json, _print_one, write=True)
