"""`tongyuan model …`: show, compare, publish, calibrate and adopt the entity-relationship
model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from node.cli_support import actor_option, call_and_print, user_errors
from node.output import console


@click.group()
def model() -> None:
    """The entity-relationship model: counties propose, cities calibrate, the province
    publishes, every node adopts."""


def _print_summary(summary: dict[str, Any]) -> None:
    active = summary["active"]
    console.print(f"model: {active['label']}  digest {active['digest']}", highlight=False)
    console.print(f"  entities: {', '.join(active['entities'])}", highlight=False)
    offered = summary.get("offered")
    if offered:
        state = "adopted" if offered["adopted"] else "NOT ADOPTED — `tongyuan model adopt`"
        console.print(
            f"  parent {offered['parent']} offers {offered['label']}: {state}", highlight=False
        )
    for child in summary.get("children", []):
        same = "same as ours" if child["same_as_ours"] else "differs"
        console.print(f"  child {child['code']}: {child['label']} ({same})", highlight=False)


def _print_model(answer: dict[str, Any]) -> None:
    doc = answer["document"]
    console.print(f"{answer['label']}  digest {answer['digest']}", highlight=False)
    for entity in doc["entities"]:
        table = Table(title=f"{entity['name']} (key {entity['key']}) {entity['description']}")
        for column in ("attribute", "type", "required", "code list", "identifier", "sensitivity"):
            table.add_column(column)
        for a in entity["attributes"]:
            table.add_row(
                a["name"],
                a["type"],
                "yes" if a["required"] else "",
                a["code_list"] or "",
                a["identifier"] or "",
                a["sensitivity"] or "",
            )
        console.print(table)
    for r in doc["relations"]:
        how = f"via {r['via']}" if r["via"] else f"through {r['through']}"
        console.print(
            f"relation {r['source']} {r['name']} {r['target']} ({r['cardinality']}, {how})",
            highlight=False,
        )
    _print_summary(answer["summary"])


@model.command("show")
@click.argument("which", default="active")
@click.option("--json", "as_json", is_flag=True, help="Print the model document as JSON.")
@click.pass_context
@user_errors
def show(ctx: click.Context, which: str, as_json: bool) -> None:
    """Show a model: `active` (default), `offered` (the parent's), a child's code, or a file."""
    call_and_print(ctx, "model.show", {"which": which}, as_json, _print_model)


def _print_diff(answer: dict[str, Any]) -> None:
    console.print(f"{answer['from']} → {answer['to']}", highlight=False)
    if not answer["changes"]:
        console.print("  no changes", highlight=False)
    for change in answer["changes"]:
        console.print(
            f"  {change['kind']:<9} {change['subject']}: {change['detail']}", highlight=False
        )
    console.print(
        f"{answer['breaking']} breaking; needs a {answer['required_bump']} version bump",
        highlight=False,
    )


@model.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def diff_command(ctx: click.Context, old: str, new: str, as_json: bool) -> None:
    """Classified changes from OLD to NEW (files, `active`, `offered` or a child's code):
    addition, widening, breaking or cosmetic."""
    args = {"old": _path_or_name(old), "new": _path_or_name(new)}
    call_and_print(ctx, "model.diff", args, as_json, _print_diff)


def _path_or_name(value: str) -> str:
    """Files are read by the node process: pass them as absolute paths."""
    path = Path(value)
    return str(path.resolve()) if path.suffix or path.exists() else value


def _print_plan(answer: dict[str, Any]) -> None:
    for step in answer.get("plan", []):
        console.print(f"  {step['step']}", highlight=False)
    for note in answer.get("notes", []):
        console.print(f"  note: {note}", style="yellow", highlight=False)


@model.command("publish")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="The children's local names for this model (see `model calibrate --write-mapping`).",
)
@click.option("--allow-breaking", is_flag=True, help="Publish even if it breaks compatibility.")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def publish(
    ctx: click.Context,
    file: Path,
    mapping: Path | None,
    allow_breaking: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Make FILE this node's model: its store migrates and its children are offered it."""
    args = {
        "path": str(file.resolve()),
        "mapping": str(mapping.resolve()) if mapping else None,
        "allow_breaking": allow_breaking,
        "actor": actor,
    }

    def view(answer: dict[str, Any]) -> None:
        _print_diff(answer)
        _print_plan(answer)
        console.print(f"published {answer['published']}", highlight=False)

    call_and_print(ctx, "model.publish", args, as_json, view, write=True)


@model.command("adopt")
@click.option("--dry-run", is_flag=True, help="Print the migration plan and change nothing.")
@click.option("--allow-breaking", is_flag=True, help="Consent to steps that may lose data.")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def adopt(
    ctx: click.Context, dry_run: bool, allow_breaking: bool, actor: str, as_json: bool
) -> None:
    """Adopt the model the parent offers: the store migrates, local names become standard."""
    args = {"allow_breaking": allow_breaking, "dry_run": dry_run, "actor": actor}

    def view(answer: dict[str, Any]) -> None:
        console.print(f"{answer['from']} → {answer['to']} (from {answer['parent']})")
        _print_plan(answer)
        console.print("adopted" if answer["adopted"] else "not adopted (dry run)")

    call_and_print(ctx, "model.adopt", args, as_json, view, write=not dry_run)


def _print_calibration(answer: dict[str, Any]) -> None:
    console.print(f"standard: {answer['standard']}", highlight=False)
    for code, label in answer["children"].items():
        console.print(f"  child {code}: {label}", highlight=False)
    rows = answer.get("rows", [])
    if not rows:
        console.print("no differences: every child matches the standard")
    else:
        table = Table(title="where the children differ")
        for column in rows[0]:
            table.add_column(column.replace("_", " "))
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        console.print(table)
    if answer.get("mapping_file"):
        console.print(
            f"suggested mapping written to {answer['mapping_file']}: edit it, then "
            "`tongyuan model publish MODEL --mapping FILE`",
            highlight=False,
        )


@model.command("calibrate")
@click.option(
    "--write-mapping",
    type=click.Path(path_type=Path),
    help="Write the suggested mapping of the children's local names to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def calibrate_command(ctx: click.Context, write_mapping: Path | None, as_json: bool) -> None:
    """Per entity, where the children's models differ from this node's and each other's."""
    args = {"write_mapping": str(write_mapping.resolve()) if write_mapping else None}
    call_and_print(ctx, "model.calibrate", args, as_json, _print_calibration)


@model.command("mapping")
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_context
@user_errors
def mapping_command(ctx: click.Context, file: Path) -> None:
    """Replace the children's local-name mapping without publishing a new model."""

    def view(answer: dict[str, Any]) -> None:
        console.print(f"mapping saved for children {', '.join(answer['children'])}")

    call_and_print(ctx, "model.mapping", {"path": str(file.resolve())}, False, view, write=True)
