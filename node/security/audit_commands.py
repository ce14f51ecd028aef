"""`tongyuan audit …`: this node's tamper-evident audit chain — list it, verify it (exit
1 naming the first broken entry), export it for an auditor, and verify an export offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from node.cli_support import actor_option, call_and_print, node_handle, user_errors
from node.output import console, err_console, print_json
from node.security.audit import verify_file


def _detail(text: str) -> str:
    """An entry's detail as `key=value` pairs (the JSON as stored with --json)."""
    try:
        detail = json.loads(text)
    except json.JSONDecodeError:
        return text
    if not isinstance(detail, dict):
        return text
    return ", ".join(
        f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v}"
        for k, v in detail.items()
    )


def _print_entries(entries: list[dict[str, Any]]) -> None:
    if not entries:
        console.print("no audit entries", highlight=False)
        return
    table = Table()
    for column in ("seq", "recorded at (UTC)", "kind", "actor", "detail", "hash"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            str(entry["seq"]),
            entry["recorded_at"][:19].replace("T", " "),
            Text(entry["kind"]),
            Text(entry["actor"]),
            Text(_detail(entry["detail"])),
            entry["hash"][:12] + "…",
        )
    console.print(table)


def _report(verdict: dict[str, Any], what: str) -> None:
    """Print the verdict; exit 1 when the chain is broken."""
    problem = verdict["problem"]
    if problem is None:
        console.print(
            f"{what} intact: {verdict['entries']} entries, head {verdict['head_seq']} "
            f"{verdict['head_hash']}",
            highlight=False,
        )
        if verdict.get("public_key"):
            console.print(f"signed with audit key {verdict['public_key']}", highlight=False)
        return
    err_console.print(
        Text("error: ", style="red")
        + Text(f"{what} broken at seq {problem['seq']}: {problem['what']}")
        + Text(f" ({problem['detail']})" if problem["detail"] else ""),
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(1)


@click.group()
def audit() -> None:
    """This node's audit chain: every exchange (batches served and applied, catalogue,
    model and rule changes, grants, purges, admin actions, refused logins) as an entry
    holding the previous entry's hash, signed with the node's Ed25519 key. Parents record
    their children's chain heads in their own chains, so a rewrite is caught above."""


@audit.command("show")
@click.option("--since", type=int, metavar="SEQ", help="Entries after SEQ, oldest first.")
@click.option("--kind", metavar="K", help="Only kind K, or a family (`batch`: batch.*).")
@click.option(
    "--limit", type=int, default=50, show_default=True, metavar="N", help="At most N entries."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (entries as stored).")
@click.pass_context
@user_errors
def show_command(
    ctx: click.Context, since: int | None, kind: str | None, limit: int, as_json: bool
) -> None:
    """The last entries of this node's chain (or those after --since)."""
    args = {"since": since, "kind": kind, "limit": limit}
    call_and_print(ctx, "audit.show", args, as_json, _print_entries)


@audit.command("verify")
@click.option(
    "--file",
    "export_file",
    type=click.Path(path_type=Path),
    help="Verify an exported chain instead (no node needed).",
)
@click.option(
    "--key",
    metavar="HEX",
    help="With --file: the public key the chain must be signed with (e.g. as the parent "
    "pinned it); without it the key in the file is taken at its word.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.pass_context
@user_errors
def verify_command(
    ctx: click.Context, export_file: Path | None, key: str | None, as_json: bool
) -> None:
    """Recompute every hash and link and check every signature; exit 1 naming the first
    broken entry."""
    if export_file is not None:
        verdict = verify_file(export_file, key).document()
        what = f"audit export {export_file}"
    else:
        with node_handle(ctx, write=False) as node:
            verdict = node.call("audit.verify", {})
        what = "audit chain"
    if as_json:
        print_json(verdict)
        if verdict["problem"] is not None:
            sys.exit(1)
        return
    _report(verdict, what)


@audit.command("export")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["jsonl"]),
    default="jsonl",
    show_default=True,
    help="File format: JSON Lines, a header line (node, public key, head) then one entry per line.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@user_errors
def export_command(ctx: click.Context, output: Path, file_format: str, as_json: bool) -> None:
    """Write the chain with its hashes, signatures and public key, for offline checks
    (`tongyuan audit verify --file FILE`)."""

    def view(result: dict[str, Any]) -> None:
        console.print(
            f"exported {result['entries']} audit entries (head {result['head_seq']}) to "
            f"{result['file']}",
            highlight=False,
        )

    args = {"path": str(output.resolve())}
    call_and_print(ctx, "audit.export", args, as_json, view)


@audit.command("forget-child")
@click.argument("child")
@actor_option
@click.pass_context
@user_errors
def forget_child_command(ctx: click.Context, child: str, actor: str) -> None:
    """Trust child CHILD's audit chain afresh (its key is pinned again at the next check),
    e.g. after it was re-initialised; recorded in this node's chain."""
    args = {"child": child, "actor": actor}

    def view(result: dict[str, Any]) -> None:
        console.print(
            f"child {child}: audit key and verified hashes forgotten; pinned again at the "
            "next check",
            highlight=False,
        )

    call_and_print(ctx, "audit.forget_child", args, False, view, write=True)
