"""`tongyuan catalog …`: register, publish, retire, browse, search and exchange the
resource catalogue, and define or map standard items."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from node.catalog.entries import FORMATS, FREQUENCIES, OPEN_ATTRIBUTES
from node.catalog.files import load_entries
from node.catalog.views import (
    print_coverage,
    print_entries,
    print_entry,
    print_standards,
)
from node.cli_support import actor_option, call_and_print, node_handle, user_errors
from node.errors import UserError
from node.output import console, print_json

F = TypeVar("F", bound=Callable[..., Any])

# Flag → entry key, for entries given on the command line.
_ENTRY_FLAGS = {
    "entry_code": "code",
    "name": "name",
    "summary": "summary",
    "department": "department",
    "source_node": "source_node",
    "source_department": "source_department",
    "entity": "entity",
    "fields": "fields",
    "resource_format": "format",
    "frequency": "update_frequency",
    "sharing": "sharing",
    "conditions": "sharing_conditions",
    "open_attribute": "open_attribute",
    "sensitivity": "sensitivity",
    "keywords": "keywords",
    "provides": "provides",
}


def _entry_options(fn: F) -> F:
    options = [
        click.option(
            "--code",
            "entry_code",
            help="Resource code, prefixed by this node's code: 320102-GA-001.",
        ),
        click.option("--name", help="Resource name (信息资源名称)."),
        click.option("--summary", help="Summary (信息资源摘要)."),
        click.option("--department", help="Provider department (default: [node] department)."),
        click.option("--source-node", help="Authoritative source node (default: this node)."),
        click.option(
            "--source-department", help="Authoritative source department (default: provider)."
        ),
        click.option("--entity", help="Entity the resource carries (person, legal_entity, …)."),
        click.option(
            "--fields", help="Information items, comma-separated (default: every attribute)."
        ),
        click.option(
            "--format", "resource_format", type=click.Choice(list(FORMATS)), help="Format."
        ),
        click.option("--frequency", type=click.Choice(list(FREQUENCIES)), help="Update frequency."),
        click.option("--sharing", help="Sharing attribute id (see [catalog] sharing)."),
        click.option("--conditions", help="Sharing conditions (for a conditional attribute)."),
        click.option(
            "--open",
            "open_attribute",
            type=click.Choice(list(OPEN_ATTRIBUTES)),
            help="Open to the public.",
        ),
        click.option("--sensitivity", help="Sensitivity grade (see [catalog] sensitivity_grades)."),
        click.option("--keywords", help="Keywords, comma-separated."),
        click.option("--provides", help="Standard item this resource provides."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _raw_from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    return {_ENTRY_FLAGS[k]: v for k, v in flags.items() if k in _ENTRY_FLAGS and v is not None}


@click.group()
def catalog() -> None:
    """The resource catalogue (政务信息资源目录): what data exists, where its source is,
    how it may be shared."""


@catalog.command("add")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@_entry_options
@click.option("--publish", is_flag=True, help="Publish right away.")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def add(
    ctx: click.Context,
    file: Path | None,
    publish: bool,
    actor: str,
    as_json: bool,
    **flags: Any,
) -> None:
    """Register resources from FILE (TOML or YAML) or from flags, as drafts."""
    raw = _raw_from_flags(flags)
    if file is not None and raw:
        raise UserError("give a FILE or entry flags, not both")
    if file is not None:
        args: dict[str, Any] = {"entries": load_entries(file), "source": str(file)}
    else:
        args = {"entries": [raw], "source": "command line", "fill_defaults": True}
    with node_handle(ctx, write=True) as node:
        added = node.call("catalog.add", {**args, "actor": actor, "publish": publish})
    if as_json:
        print_json(added)
        return
    for entry in added:
        click.echo(
            f"{entry['code']} {entry['name']}: {entry['status']} (version {entry['version']})"
        )


@catalog.command("edit")
@click.argument("code")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@_entry_options
@actor_option
@click.pass_context
@user_errors
def edit(ctx: click.Context, code: str, file: Path | None, actor: str, **flags: Any) -> None:
    """Change resource CODE (a published one gets a draft of its next version)."""
    changes = _raw_from_flags(flags)
    if file is not None:
        if changes:
            raise UserError("give a FILE or entry flags, not both")
        entries = load_entries(file)
        if len(entries) != 1:
            raise UserError(f"{file}: edit takes one entry, the file has {len(entries)}")
        changes = entries[0]
    if not changes:
        raise UserError("nothing to change: give a FILE or entry flags")
    source = str(file) if file is not None else "command line"
    with node_handle(ctx, write=True) as node:
        draft = node.call(
            "catalog.edit", {"code": code, "changes": changes, "source": source, "actor": actor}
        )
    click.echo(
        f"{draft['code']}: draft of version {draft['version']} saved; "
        f"`tongyuan catalog publish {draft['code']}` makes it current"
    )


def _lifecycle(ctx: click.Context, method: str, args: dict[str, Any]) -> dict[str, Any]:
    with node_handle(ctx, write=True) as node:
        return dict(node.call(method, args))


@catalog.command("publish")
@click.argument("code")
@actor_option
@click.pass_context
@user_errors
def publish(ctx: click.Context, code: str, actor: str) -> None:
    """Publish resource CODE's draft: it accepts imports and travels to the parent."""
    entry = _lifecycle(ctx, "catalog.publish", {"code": code, "actor": actor})
    click.echo(f"{entry['code']} {entry['name']}: published version {entry['version']}")


@catalog.command("retire")
@click.argument("code")
@click.option("--reason", default="", help="Why (recorded in the history).")
@actor_option
@click.pass_context
@user_errors
def retire(ctx: click.Context, code: str, reason: str, actor: str) -> None:
    """Retire resource CODE: it keeps its history and refuses new data."""
    entry = _lifecycle(ctx, "catalog.retire", {"code": code, "actor": actor, "reason": reason})
    click.echo(f"{entry['code']} {entry['name']}: retired")


@catalog.command("remove")
@click.argument("code")
@actor_option
@click.pass_context
@user_errors
def remove(ctx: click.Context, code: str, actor: str) -> None:
    """Remove a draft, or a retired resource's entry (tiers above drop it too)."""
    result = _lifecycle(ctx, "catalog.remove", {"code": code, "actor": actor})
    click.echo(f"{code}: {result['removed']} removed")


@catalog.command("map")
@click.argument("code")
@click.argument("standard", required=False)
@click.option("--unmap", is_flag=True, help="The resource no longer provides a standard item.")
@actor_option
@click.pass_context
@user_errors
def map_standard(
    ctx: click.Context, code: str, standard: str | None, unmap: bool, actor: str
) -> None:
    """Say that published resource CODE provides standard item STANDARD."""
    if bool(standard) == unmap:
        raise UserError("give a STANDARD item code, or --unmap")
    entry = _lifecycle(
        ctx, "catalog.map", {"code": code, "standard": None if unmap else standard, "actor": actor}
    )
    provides = entry.get("provides") or "no standard item"
    click.echo(f"{entry['code']} {entry['name']}: provides {provides}")


@catalog.command("show")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def show(ctx: click.Context, code: str, as_json: bool) -> None:
    """One resource: its metadata, fields, freshness, node path and history."""
    call_and_print(ctx, "catalog.show", {"code": code}, as_json, print_entry)


@catalog.command("list")
@click.option("--node", "origin", help="Only resources of this node (default: the subtree).")
@click.option("--status", type=click.Choice(["draft", "published", "retired"]))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def list_entries(ctx: click.Context, origin: str | None, status: str | None, as_json: bool) -> None:
    """This node's and its subtree's resources, with freshness."""
    call_and_print(ctx, "catalog.list", {"node": origin, "status": status}, as_json, print_entries)


@catalog.command("search")
@click.argument("text", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def search(ctx: click.Context, text: tuple[str, ...], as_json: bool) -> None:
    """Find resources in the subtree by words in their name, summary, fields or department."""
    call_and_print(ctx, "catalog.search", {"text": " ".join(text)}, as_json, print_entries)


@catalog.command("coverage")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def coverage(ctx: click.Context, as_json: bool) -> None:
    """Nodes below × standard items: provided, stale or missing, rolled up."""
    call_and_print(ctx, "catalog.coverage", {}, as_json, print_coverage)


@catalog.command("export")
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["dcat", "csv"]),
    default="dcat",
    show_default=True,
    help="DCAT-AP 3.0 JSON-LD, or CSV for spreadsheets.",
)
@click.option(
    "--scope",
    type=click.Choice(["own", "subtree"]),
    default="own",
    show_default=True,
    help="This node's resources, or the whole subtree's.",
)
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), help="Write to a file (default: stdout)."
)
@click.pass_context
@user_errors
def export(ctx: click.Context, out_format: str, scope: str, output: Path | None) -> None:
    """Export the catalogue for other systems."""
    import json

    from node.catalog.interchange import to_csv, to_dcat

    with node_handle(ctx, write=False) as node:
        exported = node.call("catalog.export", {"scope": scope})
    if out_format == "csv":
        text = to_csv(exported["entries"])
        encoding = "utf-8-sig"  # Excel reads Chinese text only with the BOM
    else:
        document = to_dcat(
            exported["entries"],
            node_code=exported["node_code"],
            node_name=exported["node_name"],
            issued=datetime.now(UTC),
        )
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
        encoding = "utf-8"
    if output is None:
        sys.stdout.write(text)
        return
    tmp = output.with_name(output.name + ".tmp")
    try:
        tmp.write_text(text, encoding=encoding, newline="")
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{output}: cannot write it ({exc.strerror or exc})") from None
    click.echo(f"{len(exported['entries'])} entries written to {output}", err=True)


@catalog.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--entity", help="Entity of datasets the file does not type (foreign files).")
@click.option("--sharing", help="Sharing attribute id for datasets that do not state one.")
@click.option("--department", help="Provider department for datasets without a publisher.")
@actor_option
@click.pass_context
@user_errors
def import_dcat(
    ctx: click.Context,
    file: Path,
    entity: str | None,
    sharing: str | None,
    department: str | None,
    actor: str,
) -> None:
    """Import a DCAT-AP JSON-LD file's datasets as draft entries (all or none).

    Datasets from other systems lack what only Tongyuan records (entity, sharing
    attribute); give those with the options, and fields default to every attribute."""
    from node.catalog.interchange import from_dcat

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read it ({exc})") from None
    entries = from_dcat(text, source=str(file))
    with node_handle(ctx, write=True) as node:
        defaults = {
            k: v
            for k, v in (("entity", entity), ("sharing", sharing), ("department", department))
            if v
        }
        drafts = node.call(
            "catalog.import",
            {"entries": entries, "source": str(file), "actor": actor, "defaults": defaults},
        )
    for entry in drafts:
        click.echo(f"{entry['code']} {entry['name']}: draft (version {entry['version']})")


@catalog.group("standard")
def standard() -> None:
    """Standard items (基础目录) every node below must provide."""


@standard.command("add")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--code", help="Item code, prefixed by this node's code: 320000-STD-001.")
@click.option("--name", help="Item name.")
@click.option("--summary", help="What providers must deliver.")
@click.option("--entity", help="Entity the item is about.")
@click.option("--fields", help="Attributes every provider must carry, comma-separated.")
@click.option("--frequency", type=click.Choice(list(FREQUENCIES)), help="Update frequency.")
@click.pass_context
@user_errors
def standard_add(ctx: click.Context, file: Path | None, **flags: Any) -> None:
    """Define standard items from FILE ([[standard]] entries) or flags."""
    raw = {("update_frequency" if k == "frequency" else k): v for k, v in flags.items() if v}
    if file is not None and raw:
        raise UserError("give a FILE or item flags, not both")
    items = load_entries(file, plural="standard") if file is not None else [raw]
    source = str(file) if file is not None else "command line"
    with node_handle(ctx, write=True) as node:
        defined = node.call("catalog.standard_add", {"items": items, "source": source})
    for item in defined:
        click.echo(
            f"{item['code']} {item['name']}: defined (version {item['version']}); it reaches "
            "every node below on its next connection"
        )


@standard.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def standard_list(ctx: click.Context, as_json: bool) -> None:
    """Standard items known here and which local resource provides each."""
    call_and_print(ctx, "catalog.standard_list", {}, as_json, print_standards)


@standard.command("withdraw")
@click.argument("code")
@click.pass_context
@user_errors
def standard_withdraw(ctx: click.Context, code: str) -> None:
    """Withdraw a standard item defined at this node (nodes below drop it)."""
    with node_handle(ctx, write=True) as node:
        node.call("catalog.standard_withdraw", {"code": code})
    console.print(f"{code}: withdrawn", highlight=False)
