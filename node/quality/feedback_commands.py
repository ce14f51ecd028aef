"""`tongyuan feedback …` and `tongyuan objection raise`: questionable records sent back
to the node and department that own them, and the owners' answers.

Discrepancies are listed as items of kind `discrepancy`; they are answered with
`tongyuan discrepancies resolve ID`, not with `feedback acknowledge|confirm|reject`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.table import Table

from node.cli_support import actor_option, call_and_print, user_errors
from node.output import console
from node.quality.feedback import DISCREPANCY
from node.store.feedback import STATES


def _when(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")


def _state(item: dict[str, Any]) -> str:
    """The state with who and when: the correcting version's time or the last answer."""
    state = item["state"]
    if state == "corrected":
        how = "deleted" if item.get("corrected_by_delete") else "new version"
        if item["kind"] == DISCREPANCY:  # agreed, withdrawn, record deleted
            how = item["discrepancy"]["resolution"] or "resolved"
        text = f"corrected ({how} {_when(item['corrected_at'])})"
    elif item["responses"]:
        last = item["responses"][-1]
        text = f"{state} by {last['actor']} at {last['node']} {_when(last['at'])}"
    else:
        text = state
    return text + ("; OVERDUE" if item["overdue"] else "")


def _where(item: dict[str, Any]) -> str:
    if item["at_owner"]:
        if item["closed"]:
            return ""
        return "resolve here" if item["kind"] == DISCREPANCY else "answer here"
    return f"→ node {item['travels_to']}"


def _print_list(items: list[dict[str, Any]], everything: bool) -> None:
    if not items:
        more = "" if everything else " open (`--all` shows closed ones too)"
        console.print(f"no{more} feedback items", highlight=False)
        return
    table = Table()
    for column in ("id", "kind", "record", "owner", "reason", "raised", "state", "where"):
        table.add_column(column)
    for item in items:
        record = f"{item['entity']} {item['record_key']}"
        if item["resource"]:
            record += f"\n{item['resource']}"
        table.add_row(
            item["id"],
            item["kind"],
            record,
            f"{item['owner_node']} {item['owner_dept'] or ''}".strip(),
            item["reason"],
            f"{item['raised_by']} at {item['raised_node']}\n{_when(item['raised_at'])}",
            _state(item),
            _where(item),
        )
    console.print(table)
    answerable = [i for i in items if i["at_owner"] and not i["closed"]]
    if any(i["kind"] != DISCREPANCY for i in answerable):
        console.print(
            "items about this node's records: answer with `tongyuan feedback acknowledge|"
            "confirm|reject ID`, or correct the record by importing it again",
            highlight=False,
        )
    if any(i["kind"] == DISCREPANCY for i in answerable):
        console.print(
            "discrepancies about this node's records: resolve with `tongyuan discrepancies "
            "resolve ID` (--confirm, --accept-observed or --value V)",
            highlight=False,
        )
    if any(not i["at_owner"] for i in items):
        console.print(
            "the others travel down to the node that owns the record; its answers and "
            "corrections travel back up",
            highlight=False,
        )


@click.group()
def feedback() -> None:
    """Questionable records sent back to the node and department that own them.

    Items are blocking rules that failed on a record (kind rule), users' objections
    (objection) and disagreements with an attribute's source (discrepancy). Answer a rule
    item or an objection with acknowledge, confirm or reject; resolve a discrepancy with
    `tongyuan discrepancies resolve ID`.
    """


@feedback.command("list")
@click.option(
    "--state",
    type=click.Choice(list(STATES)),
    help="Only items in this state.",
)
@click.option("--all", "include_closed", is_flag=True, help="Include closed items.")
@click.option("--overdue", is_flag=True, help="Only items open longer than the configured limit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def list_command(
    ctx: click.Context, state: str | None, include_closed: bool, overdue: bool, as_json: bool
) -> None:
    """Items raised here or delivered by the parent (about this node's subtree), and
    discrepancies (kind discrepancy), oldest first."""
    args = {"state": state, "include_closed": include_closed, "overdue": overdue}
    everything = include_closed or state is not None
    call_and_print(
        ctx, "feedback.list", args, as_json, lambda found: _print_list(found, everything)
    )


def _print_answer(answer: dict[str, Any]) -> None:
    response = answer["response"]
    meaning = {
        "acknowledged": "acknowledged: the owner is looking at it",
        "confirmed-correct": "closed as confirmed-correct: the record is right",
        "rejected": "closed as rejected: the objection is unfounded",
    }[response["state"]]
    console.print(
        f"{answer['id']}: {meaning} (by {response['actor']} at node {response['node']}); "
        "the answer travels up to every tier above",
        highlight=False,
    )


def _answer_command(name: str, state: str, summary: str) -> None:
    @feedback.command(name, help=summary)
    @click.argument("item_id", metavar="ID")
    @click.option("--note", default="", help="Why (travels with the answer).")
    @actor_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    @user_errors
    def command(ctx: click.Context, item_id: str, note: str, actor: str, as_json: bool) -> None:
        args = {"item_id": item_id, "state": state, "note": note, "actor": actor}
        call_and_print(ctx, "feedback.respond", args, as_json, _print_answer, write=True)


_NOT_DISCREPANCIES = " (a discrepancy is resolved with `tongyuan discrepancies resolve ID`)"
_answer_command(
    "acknowledge",
    "acknowledged",
    "Acknowledge item ID about one of this node's records." + _NOT_DISCREPANCIES,
)
_answer_command(
    "confirm",
    "confirmed-correct",
    "Close item ID: the record is right (confirmed-correct)." + _NOT_DISCREPANCIES,
)
_answer_command(
    "reject",
    "rejected",
    "Close item ID: the objection is unfounded (rejected)." + _NOT_DISCREPANCIES,
)


@click.group()
def objection() -> None:
    """Objections (异议) to a record, sent to the node and department that own it."""


@objection.command("raise")
@click.argument("resource")
@click.argument("key")
@click.option("--reason", required=True, help="What is wrong with the record.")
@actor_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def raise_command(
    ctx: click.Context, resource: str, key: str, reason: str, actor: str, as_json: bool
) -> None:
    """Object to record KEY of RESOURCE (a code from `tongyuan catalog list`)."""
    args = {"resource": resource, "key": key, "reason": reason, "actor": actor}

    def view(item: dict[str, Any]) -> None:
        dept = item["owner_dept"]
        console.print(
            f"objection {item['id']} raised about {item['entity']} {item['record_key']} "
            f"of {item['resource']}: {item['reason']}",
            highlight=False,
        )
        if item["at_owner"]:
            whose = f"this node's own ({dept})" if dept else "this node's own"
            console.print(
                f"the record is {whose}: answer it here with `tongyuan feedback "
                f"acknowledge|confirm|reject {item['id']}`, or correct the record by importing "
                "it again",
                highlight=False,
            )
        else:
            owner = f"its owner, {dept}" if dept else "its owner"
            console.print(
                f"it travels down to node {item['owner_node']} ({owner}); the answer or "
                "correction travels back up and closes it at every tier",
                highlight=False,
            )

    call_and_print(ctx, "objection.raise", args, as_json, view, write=True)
