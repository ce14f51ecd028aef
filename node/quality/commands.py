"""`tongyuan quality …`: the rule library, quarantine and the quality report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from node.cli_support import actor_option, call_and_print, user_errors
from node.output import console
from node.quality.report_commands import report_command


@click.group()
def quality() -> None:
    """Data quality: one rule library, quarantine instead of silent loss, scores."""


quality.add_command(report_command, "report")


@quality.group()
def rules() -> None:
    """The rule library: published from above, this node's own, and local rules."""


def _print_rules(answer: dict[str, Any]) -> None:
    layers = answer["layers"]
    if not layers:
        console.print(
            "no rule library: publish one (`tongyuan quality rules publish FILE`, start from "
            "config/base-rules.toml) or wait for the parent's",
            highlight=False,
        )
        return
    for layer in layers:
        console.print(f"library {layer['label']}: {layer['rules']} rules", highlight=False)
    table = Table()
    for column in ("rule", "from", "entity.attribute", "check", "severity", "applies"):
        table.add_column(column)
    for rule in answer["rules"]:
        table.add_row(
            rule["id"],
            rule["origin"],
            f"{rule['entity']}.{rule['attribute']}",
            rule["check"],
            rule["severity"],
            "yes" if rule["applies"] else f"waits: {rule['waiting_because']}",
        )
    console.print(table)


@rules.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def rules_show(ctx: click.Context, as_json: bool) -> None:
    """Every rule this node applies, where it comes from, and whether it applies yet."""
    call_and_print(ctx, "quality.rules_show", {}, as_json, _print_rules)


def _print_set(answer: dict[str, Any]) -> None:
    if answer.get("removed"):
        console.print("local rules removed", highlight=False)
        return
    if not answer["changed"]:
        console.print(f"{answer['layer']} is already in force; nothing changed", highlight=False)
        return
    where = "here and at every node below" if answer["role"] == "published" else "here only"
    console.print(f"{answer['layer']}: {answer['rules']} rules in force {where}", highlight=False)
    if answer["children"]:
        console.print(
            f"it reaches {', '.join(answer['children'])} on their next connection", highlight=False
        )
    if answer["waiting"]:
        console.print(
            f"{answer['waiting']} rules wait: they do not fit this node's model yet "
            "(`tongyuan quality rules show` says why)",
            highlight=False,
        )


@rules.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def rules_publish(ctx: click.Context, file: Path, actor: str, as_json: bool) -> None:
    """Make FILE this node's rule library, applied here and by every node below."""
    args = {"path": str(file.resolve()), "actor": actor}
    call_and_print(ctx, "quality.rules_publish", args, as_json, _print_set, write=True)


@rules.command("local")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--remove", is_flag=True, help="Remove this node's local rules.")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def rules_local(
    ctx: click.Context, file: Path | None, remove: bool, actor: str, as_json: bool
) -> None:
    """Extra rules from FILE for this node only (marked local, never passed down)."""
    args = {"path": str(file.resolve()) if file else None, "remove": remove, "actor": actor}
    call_and_print(ctx, "quality.rules_local", args, as_json, _print_set, write=True)


@quality.group()
def quarantine() -> None:
    """Rows held back by a blocking rule, with rule, reason and origin."""


def _print_quarantine(answer: dict[str, Any]) -> None:
    rows = answer["rows"]
    if not rows:
        console.print("nothing in quarantine", highlight=False)
        return
    table = Table()
    for column in ("id", "record", "from", "rules", "reason", "state"):
        table.add_column(column)
    for r in rows:
        origin = (
            r["source"] if r["received_from"] is None else f"{r['source']} ({r['origin_node']})"
        )
        table.add_row(
            r["id"],
            f"{r['entity']} {r['record_key']}",
            origin,
            ", ".join(r["rules"]),
            "; ".join(r["reasons"]),
            r["state"],
        )
    console.print(table)
    console.print(f"{answer['counts']['held']} rows held in all", highlight=False)


@quarantine.command("list")
@click.option(
    "--state",
    type=click.Choice(["held", "released", "dropped", "superseded", "all"]),
    default="held",
    show_default=True,
)
@click.option("--rule", help="Only rows that failed this rule (as listed, e.g. 'x (320000)').")
@click.option("--resource", help="Only rows of this resource.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def quarantine_list(
    ctx: click.Context,
    state: str,
    rule: str | None,
    resource: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Quarantined rows (held ones unless --state says otherwise)."""
    args = {"state": state, "rule": rule, "resource": resource, "limit": limit}
    call_and_print(ctx, "quality.quarantine_list", args, as_json, _print_quarantine)


def _settle_command(name: str, summary: str, view: Callable[[dict[str, Any]], None]) -> None:
    """`quarantine release|drop ID…|--all`: the same arguments, another operation."""

    @quarantine.command(name, help=summary)
    @click.argument("ids", nargs=-1)
    @click.option("--all", "everything", is_flag=True, help="Every held row.")
    @actor_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    @user_errors
    def command(
        ctx: click.Context, ids: tuple[str, ...], everything: bool, actor: str, as_json: bool
    ) -> None:
        args = {"ids": list(ids), "everything": everything, "actor": actor}
        call_and_print(ctx, f"quality.quarantine_{name}", args, as_json, view, write=True)


_settle_command(
    "release",
    "Re-validate held rows and apply those that pass now (after a rule changed, say).",
    lambda answer: console.print(
        f"{answer['released']} released and applied; {answer['still_held']} still fail "
        "and stay held",
        highlight=False,
    ),
)
_settle_command(
    "drop",
    "Give up on held rows: never applied, kept in the list as dropped.",
    lambda answer: console.print(f"{answer['dropped']} rows dropped", highlight=False),
)
