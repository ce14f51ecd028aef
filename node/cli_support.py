"""What every command shares: user errors as one line, and the handle on the node."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.text import Text

from node.client import NodeAPI, open_node
from node.errors import UserError
from node.output import err_console

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
