"""Reading a file a user names (entries, models, mappings), with errors that say which."""

from __future__ import annotations

from pathlib import Path

from node.errors import UserError


def read_user_text(path: Path) -> str:
    """The file's text (UTF-8); a missing or unreadable file is a one-line UserError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None
