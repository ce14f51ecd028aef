"""What every command shares: user errors as one line, and the handle on the node."""

from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.text import Text

from node.client import NodeAPI, open_node
from node.errors import UserError
from node.output import err_console, print_json

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn UserError into `error: …` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(
                Text("error: ", style="red") + Text(str(exc)), highlight=False, soft_wrap=True
            )
            sys.exit(1)
        except KeyboardInterrupt:
            # Every write is one transaction: an interrupted command changed nothing.
            err_console.print("interrupted; nothing was changed", highlight=False)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@contextmanager
def node_handle(ctx: click.Context, *, write: bool) -> Iterator[NodeAPI]:
    node = open_node(ctx.obj["dir"], write=write)
    try:
        yield node
    finally:
        node.close()


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def actor_option(fn: F) -> F:
    """`--by WHO`: who makes a change, recorded in its history."""
    return click.option(
        "--by",
        "actor",
        default=_default_actor,
        show_default="the current user",
        help="Who makes the change (recorded in the history).",
    )(fn)


def call_and_print(
    ctx: click.Context,
    method: str,
    args: dict[str, Any],
    as_json: bool,
    view: Callable[[Any], None],
    *,
    write: bool = False,
) -> None:
    """Call a named node operation, then print JSON or the terminal view."""
    with node_handle(ctx, write=write) as node:
        answer = node.call(method, args)
    if as_json:
        print_json(answer)
    else:
        view(answer)
