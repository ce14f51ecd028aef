"""`tongyuan pki …`: the federation's root, certificate requests, issuing, installing,
revoking, and what this node holds. File formats: see `node.security.pki`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from node.cli_support import actor_option, node_handle, user_errors
from node.errors import UserError
from node.output import console, print_json
from node.security import pki as pki_files


@click.group()
def pki() -> None:
    """Node identity: certificates naming each node's code, mutual TLS between tiers."""


def _read_input(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None


def _print_identity(doc: dict[str, Any]) -> None:
    mode = doc["mode"]
    if mode == "plaintext-dev":
        console.print(
            Text("PLAINTEXT — development only, federation is not authenticated", style="bold red"),
            highlight=False,
        )
        return
    if "fingerprint" not in doc:
        console.print(
            Text(doc.get("problem") or "no certificate installed", style="bold red"),
            highlight=False,
        )
        return
    parent = doc["parent"] or "none: holds the federation root"
    lines = [
        f"node {doc['code']}  mode {mode}",
        f"parent (issuer): {parent}; name {doc.get('dns_name') or '?'}",
        f"certificate serial {doc['serial']}, valid {doc['not_before']} … {doc['not_after']}"
        + ("  EXPIRED" if doc["expired"] else ""),
        f"fingerprint sha256 {doc['fingerprint']}",
        f"federation root sha256 {doc['root_fingerprint']}",
        f"federation pseudonym key: {'present' if doc.get('federation_key') else 'MISSING'}",
    ]
    for line in lines:
        console.print(Text(line), highlight=False)
    if doc.get("restart_needed"):
        console.print(
            Text("restart the node (`serve`) to use the new certificate", style="yellow"),
            highlight=False,
        )


@pki.command("init-root")
@click.option("--days", type=float, default=pki_files.DEFAULT_DAYS, show_default=True,
              help="Validity of this node's own certificate (the root: 10 years).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@actor_option
@click.pass_context
@user_errors
def init_root(ctx: click.Context, days: float, as_json: bool, actor: str) -> None:
    """Create the federation root here (the top node), this node's certificate under it,
    and the federation's pseudonym key."""
    with node_handle(ctx, write=True) as node:
        doc = node.call("pki.init_root", {"days": days, "actor": actor})
    if as_json:
        print_json(doc)
    else:
        _print_identity(doc)


@pki.command("request")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write the request to FILE (default: stdout).")  # fmt: skip
@click.option("--new-key", is_flag=True, help="Make a new key even if node.key exists.")
@click.pass_context
@user_errors
def request_command(ctx: click.Context, output: Path | None, new_key: bool) -> None:
    """Make this node's key (security/node.key) and a certificate request for its parent."""
    with node_handle(ctx, write=True) as node:
        doc = node.call("pki.request", {"new_key": new_key})
    if output is None:
        sys.stdout.write(doc["csr"])
        return
    try:
        output.write_text(doc["csr"], encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(
        f"request for node {doc['code']} written to {output} (key: {doc['key']}); give it to "
        "the parent's operator: `tongyuan pki issue FILE -o BUNDLE`"
    )


@pki.command("issue")
@click.argument("csr", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Bundle file to write (mode 0600: it holds the federation key).")  # fmt: skip
@click.option("--days", type=float, default=pki_files.DEFAULT_DAYS, show_default=True,
              help="Validity in days (never beyond this node's own certificate).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the register entry as JSON.")
@actor_option
@click.pass_context
@user_errors
def issue_command(
    ctx: click.Context, csr: Path, output: Path, days: float, as_json: bool, actor: str
) -> None:
    """Issue a certificate for a child's request CSR; write the bundle it installs."""
    text = _read_input(csr, "certificate request")
    # Checked first: the register records a certificate only if its bundle can be written.
    if output.is_dir():
        raise UserError(f"{output} is a directory")
    if not output.resolve().parent.is_dir():
        raise UserError(
            f"cannot write {output}: directory {output.resolve().parent} does not exist"
        )
    with node_handle(ctx, write=True) as node:
        doc = node.call("pki.issue", {"csr": text, "where": str(csr), "days": days, "actor": actor})
    try:
        pki_files.write_private(output, (json.dumps(doc["bundle"], indent=2) + "\n").encode())
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    record = doc["record"]
    if as_json:
        print_json(record)
        return
    click.echo(
        f"issued to node {record['code']}: serial {record['serial']}, valid until "
        f"{record['not_after']}; bundle {output} — install it there with "
        "`tongyuan pki install BUNDLE`"
    )


@pki.command("install")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@actor_option
@click.pass_context
@user_errors
def install_command(ctx: click.Context, bundle: Path, as_json: bool, actor: str) -> None:
    """Install the certificate bundle the parent issued (checked against node.key)."""
    text = _read_input(bundle, "bundle")
    with node_handle(ctx, write=True) as node:
        doc = node.call("pki.install", {"bundle": text, "where": str(bundle), "actor": actor})
    if as_json:
        print_json(doc)
    else:
        _print_identity(doc)


@pki.command("revoke")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@actor_option
@click.pass_context
@user_errors
def revoke_command(ctx: click.Context, code: str, as_json: bool, actor: str) -> None:
    """Revoke the certificates issued to child CODE; a serving node drops it at once."""
    with node_handle(ctx, write=True) as node:
        doc = node.call("pki.revoke", {"code": code, "actor": actor})
    if as_json:
        print_json(doc)
        return
    serials = ", ".join(r["serial"] for r in doc["revoked"])
    click.echo(
        f"revoked {len(doc['revoked'])} certificate(s) of node {code} ({serials})"
        + ("; its link is cut" if doc["link_cut"] else "")
    )


@pki.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def show_command(ctx: click.Context, as_json: bool) -> None:
    """This node's identity: code, parent, validity, fingerprints."""
    with node_handle(ctx, write=False) as node:
        doc = node.call("pki.show", {})
    if as_json:
        print_json(doc)
    else:
        _print_identity(doc)


@pki.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Certificates this node issued, with their status (valid, expired, revoked)."""
    with node_handle(ctx, write=False) as node:
        records = node.call("pki.list", {})
    if as_json:
        print_json(records)
        return
    if not records:
        console.print("no certificates issued by this node", highlight=False)
        return
    table = Table()
    for column in ("node", "serial", "status", "issued", "valid until", "revoked"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r["code"], r["serial"], r["status"], r["issued_at"], r["not_after"],
            r.get("revoked_at") or "",
        )  # fmt: skip
    console.print(table)
