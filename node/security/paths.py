"""Where a node keeps its security files, and the one reader of the federation key.

Every module that names `DIR/security/` or `security/federation.key` takes the names
from here (pki, the audit chain, sharing at the source), so they cannot disagree, and
the federation key is validated one way wherever it is read. No dependencies beyond the
standard library: the store and the PKI both import it.
"""

from __future__ import annotations

from pathlib import Path

from node.errors import UserError

SECURITY_DIR = "security"
FEDERATION_KEY = "federation.key"
FEDERATION_KEY_BYTES = 32
_HEX = frozenset("0123456789abcdef")


def security_dir(directory: Path) -> Path:
    """`DIR/security/` of the node in `directory`."""
    return directory / SECURITY_DIR


def federation_key_path(directory: Path) -> Path:
    return security_dir(directory) / FEDERATION_KEY


def parse_federation_key(data: bytes, where: str) -> bytes:
    """The key in a federation key's text (64 lower-case hex digits, surrounding white
    space ignored); a UserError naming `where` otherwise. The message never quotes it."""
    text = data.decode("ascii", errors="replace").strip()
    if len(text) != 2 * FEDERATION_KEY_BYTES or not set(text) <= _HEX:
        raise UserError(f"{where}: the federation key must be 64 lower-case hex digits")
    return bytes.fromhex(text)


def read_federation_key(directory: Path) -> bytes | None:
    """The federation key of the node in `directory`, None when it has none yet."""
    path = federation_key_path(directory)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_federation_key(data, str(path))
