"""`tongyuan export`: a resource's records written to a file as they would leave the node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from node.cli_support import actor_option, call_and_print, user_errors
from node.output import console
from node.security.sharing import EXPORT_FORMATS


def _print_export(result: dict[str, Any]) -> None:
    console.print(
        f"exported {result['rows']} records of {result['resource']} ({result['entity']}, "
        f"sharing {result['sharing']}) to {result['file']} as {result['format']}",
        highlight=False,
    )


@click.command()
@click.argument("resource")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (replaced if it exists).",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(EXPORT_FORMATS),
    help="csv, parquet or jsonl (default: from the file's extension).",
)
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def export(
    ctx: click.Context,
    resource: str,
    output: Path,
    file_format: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Write RESOURCE's live records to a file exactly as they would leave this node:
    sensitive attributes of a conditional resource pseudonymised or masked as their
    grade says; a not-shared resource is refused. Recorded in the audit chain."""
    args = {
        "resource": resource,
        "path": str(output.resolve()),
        "file_format": file_format,
        "actor": actor,
    }
    call_and_print(ctx, "export.write", args, as_json, _print_export, write=True)
