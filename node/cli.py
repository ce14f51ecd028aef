"""The `tongyuan` command. Each command builds the node handle and calls one method;
a user's mistake becomes one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.text import Text

from node import __version__
from node.cli_support import node_handle, user_errors
from node.config import (
    CONFIG_FILE,
    STORE_FILE,
    load_config,
    render_initial_config,
    resolve_directory,
    validate_address,
)
from node.divisions import lookup_division, tier_of
from node.errors import UserError
from node.output import err_console, print_batches, print_children, print_json, print_status
from node.service import IngestOptions


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dir",
    "directory",
    metavar="DIR",
    help="Node directory (default: $TONGYUAN_DIR, then the current directory).",
)
@click.version_option(__version__, prog_name="tongyuan")
@click.pass_context
def cli(ctx: click.Context, directory: str | None) -> None:
    """Tongyuan (同源): one node program for county, city and province data federation."""
    ctx.ensure_object(dict)
    ctx.obj["dir"] = resolve_directory(directory)


@cli.command()
@click.option("--code", required=True, help="GB/T 2260 division code of this node, e.g. 320102.")
@click.option("--name", help="Display name (default: the division's name).")
@click.option(
    "--listen",
    default="127.0.0.1:7400",
    show_default=True,
    metavar="HOST:PORT",
    help="Address the parent pulls from.",
)
@click.option(
    "--model",
    "model_file",
    type=click.Path(path_type=Path),
    help="The node's own model file (TOML or YAML); default: the shipped base model.",
)
@click.option(
    "--plaintext-dev",
    is_flag=True,
    help="Federation without TLS or identity checks: development only (status says so loudly).",
)
@click.pass_context
@user_errors
def init(
    ctx: click.Context,
    code: str,
    name: str | None,
    listen: str,
    model_file: Path | None,
    plaintext_dev: bool,
) -> None:
    """Create a node directory: config, store with its schema and model, node identity."""
    from node.model import load_base_model
    from node.model.files import load_model
    from node.store import Store

    directory: Path = ctx.obj["dir"]
    division = lookup_division(code)
    if division.retired:
        raise UserError(f"division code {code} ({division.name}) is retired; use its current code")
    validate_address(listen, "--listen")
    model = load_model(model_file) if model_file is not None else load_base_model()
    config_path, store_path = directory / CONFIG_FILE, directory / STORE_FILE
    for existing in (config_path, store_path):
        if existing.exists():
            raise UserError(f"{existing} already exists; refusing to overwrite an existing node")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ".tongyuan-write-test").touch()
        (directory / ".tongyuan-write-test").unlink()
    except OSError as exc:
        raise UserError(f"cannot create a node in {directory}: {exc.strerror or exc}") from None
    display = name or division.name
    config_path.write_text(
        render_initial_config(code, display, listen, plaintext_dev=plaintext_dev),
        encoding="utf-8",
    )
    try:
        config = load_config(directory)
        Store.create(
            store_path, code=code, name=display, tier=tier_of(code).value, model=model
        ).close()
    except BaseException:
        config_path.unlink(missing_ok=True)
        store_path.unlink(missing_ok=True)
        raise
    click.echo(
        f"initialised {config.tier.value} node {code} ({display}) in {directory}\n"
        f"  model: {model.label()} (entities: {', '.join(e.name for e in model.entities)})\n"
        f"  next: tongyuan --dir {directory} serve, and register each department's resources "
        "with `tongyuan catalog add`"
    )
    if plaintext_dev:
        click.secho(
            "  PLAINTEXT — development only: federation is not authenticated", fg="red", bold=True
        )
    else:
        click.echo(
            "  identity: `tongyuan pki init-root` at the top node, or `tongyuan pki request` "
            "and install what the parent issues"
        )


@cli.command()
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Least severe level logged.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one JSON object per line (ts, level, logger, msg, node, child, parent, batch).",
)
@click.pass_context
@user_errors
def serve(ctx: click.Context, log_level: str, log_format: str) -> None:
    """Run the node: federation and admin gRPC services, health, metrics and status page
    over HTTP, scheduler."""
    from node.observe.logs import configure_logging
    from node.server import serve as run_server

    config = load_config(ctx.obj["dir"])
    configure_logging(log_level, log_format, config.code)
    run_server(config)


@cli.group()
def children() -> None:
    """Children this node pulls from (city and province nodes)."""


@children.command("add")
@click.argument("code")
@click.argument("address", metavar="HOST:PORT")
@click.pass_context
@user_errors
def children_add(ctx: click.Context, code: str, address: str) -> None:
    """Pull from child CODE at HOST:PORT (its first pull backfills everything)."""
    with node_handle(ctx, write=True) as node:
        print_children(node.add_child(code, address))


@children.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def children_list(ctx: click.Context, as_json: bool) -> None:
    """Children with link state, checkpoint and lag."""
    with node_handle(ctx, write=False) as node:
        listed = node.list_children()
    if as_json:
        print_json(listed)
    else:
        print_children(listed)


@children.command("remove")
@click.argument("code")
@click.pass_context
@user_errors
def children_remove(ctx: click.Context, code: str) -> None:
    """Stop pulling from child CODE (records it sent are kept)."""
    with node_handle(ctx, write=True) as node:
        print_children(node.remove_child(code))


@cli.command()
@click.argument("resource")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--snapshot",
    is_flag=True,
    help=(
        "The file is the complete set of the resource's department: its records missing "
        "from it are deleted."
    ),
)
@click.option("--allow-empty", is_flag=True, help="With --snapshot: accept a file without rows.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl", "parquet", "xlsx"]),
    help="File format (default: from the extension).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@user_errors
def ingest(
    ctx: click.Context,
    resource: str,
    file: Path,
    snapshot: bool,
    file_format: str | None,
    allow_empty: bool,
    as_json: bool,
) -> None:
    """Import FILE (CSV, JSON Lines, Parquet, Excel) into RESOURCE."""
    # Imported here: only this command draws a progress bar.
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    show = sys.stderr.isatty() and not as_json
    with (
        node_handle(ctx, write=True) as node,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(),
            console=err_console,
            disable=not show,
        ) as bar,
    ):
        task = bar.add_task("reading", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total or None)

        options = IngestOptions(
            snapshot=snapshot,
            file_format=file_format,
            allow_empty=allow_empty,
        )
        result = node.ingest(resource, file.resolve(), options, progress)
    if as_json:
        print_json(result)
        return
    if result.get("ignored_sheets"):
        err_console.print(
            Text(
                f"note: read sheet '{result['sheet']}' only; not read: "
                + ", ".join(f"'{name}'" for name in result["ignored_sheets"])
            )
        )
    seqs = f" (seq {result['first_seq']}..{result['last_seq']})" if result["changes"] else ""
    if result.get("observed_source"):
        node, department = result["observed_source"]
        click.echo(
            f"{result['resource']}: {result['rows_read']} rows read from {result['file']}; its "
            f"values are observations of {node} {department}'s records (one source per "
            f"attribute), none written to them: {result['inserted']} new, "
            f"{result['updated']} changed, {result['deleted']} withdrawn, "
            f"{result['unchanged']} unchanged{seqs}"
        )
        return
    click.echo(
        f"{result['resource']} ({result['entity']}): {result['rows_read']} rows read from "
        f"{result['file']}: "
        f"{result['inserted']} inserted, {result['updated']} updated, {result['deleted']} deleted, "
        f"{result['unchanged']} unchanged{seqs}"
    )
    if result["quarantined"]:
        held = ", ".join(f"{rule}: {count}" for rule, count in result["held_by_rule"])
        click.echo(
            f"{result['quarantined']} rows held in quarantine ({held}); "
            "see `tongyuan quality quarantine list`"
        )
    if result["flagged"]:
        click.echo(f"{result['flagged']} rows written with a warning flag")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Identity, tier, parents, children with lag, rows per entity."""
    with node_handle(ctx, write=False) as node:
        doc = node.status()
    if as_json:
        print_json(doc)
    else:
        print_status(doc)


@cli.command()
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of row objects.")
@click.pass_context
@user_errors
def query(ctx: click.Context, sql: str, as_json: bool) -> None:
    """Run read-only SQL on the local store (tables: person, legal_entity, …)."""
    with node_handle(ctx, write=False) as node:
        print_batches(node.query_batches(sql), as_json=as_json)


# Command groups register after the group exists.
from node.catalog.commands import catalog  # noqa: E402
from node.model.commands import model  # noqa: E402
from node.quality.commands import quality  # noqa: E402
from node.quality.feedback_commands import feedback, objection  # noqa: E402
from node.security.audit_commands import audit  # noqa: E402
from node.security.export_commands import export  # noqa: E402
from node.security.grant_commands import grant  # noqa: E402
from node.security.pki_commands import pki  # noqa: E402
from node.sources.commands import discrepancies  # noqa: E402

cli.add_command(catalog)
cli.add_command(model)
cli.add_command(discrepancies)
cli.add_command(quality)
cli.add_command(feedback)
cli.add_command(objection)
cli.add_command(grant)
cli.add_command(pki)
cli.add_command(export)
cli.add_command(audit)


def main() -> None:
    cli(prog_name="tongyuan")
