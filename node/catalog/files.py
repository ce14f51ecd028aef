"""Catalogue entry files people write: TOML or YAML, one entry or several.

One entry is a table of metadata at the top level; several are a `[[resource]]`
array (TOML) or a list (YAML). Standard items use `[[standard]]` the same way.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from node.errors import UserError
from node.textfiles import read_user_text


def load_entries(path: Path, plural: str = "resource") -> list[dict[str, Any]]:
    """The raw entries in `path`; a file that does not parse names its line."""
    text = read_user_text(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            doc: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise UserError(f"{path}: not valid YAML{line}: {exc}") from None
    else:
        raise UserError(f"{path}: use a .toml or .yaml file for catalogue entries")
    if isinstance(doc, dict) and plural in doc:
        entries = doc[plural]
        others = sorted(set(doc) - {plural})
        if others:
            raise UserError(
                f"{path}: besides [[{plural}]] the file has {', '.join(others)}; put every "
                f"key inside a [[{plural}]] entry"
            )
    elif isinstance(doc, dict):
        entries = [doc]
    else:
        entries = doc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: expected one entry (a table) or a list of {plural} entries")
    if not entries:
        raise UserError(f"{path}: no entries in the file")
    return entries
