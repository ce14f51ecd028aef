"""The audit chain in the store: an append-only log of every exchange, each entry holding
the previous entry's hash and signed with the node's Ed25519 key.

An entry's hash is SHA-256 over its fields joined by the unit separator (U+001F), the
previous hash among them, so editing, removing or reordering any entry breaks every
later link; the signature binds each hash to this node's key, so nobody without the key
can re-forge the chain, and a parent that anchors our head (GetAudit) catches us if we
rewrite it with the key. Entries are written inside the transaction of the exchange they
record when there is one (`cur=`), so an exchange and its evidence commit together.

The head (last sequence and hash) is kept in a one-row table updated in the same
transaction, so appending never scans the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.security.paths import SECURITY_DIR
from node.store.database import register_arrow, unregister_arrow

if TYPE_CHECKING:
    from node.store.store import Store

# What a write that receives something records about it, inside its transaction (a store
# method taking `evidence=` calls it with its cursor before committing).
Evidence = Callable[[duckdb.DuckDBPyConnection], object]

GENESIS_HASH = "0" * 64
SEPARATOR = "\x1f"
AUDIT_KEY_FILE = "audit.key"

# The columns of an entry, in the order they are hashed (see entry_hash).
AUDIT_COLUMNS = (
    "seq", "recorded_at", "node", "kind", "actor", "detail", "prev_hash", "hash", "signature"
)  # fmt: skip
# An entry as it travels (GetAudit segments) and is exported.
AUDIT_SCHEMA = pa.schema(
    [("seq", pa.int64())] + [(name, pa.string()) for name in AUDIT_COLUMNS[1:]]
)
# An entry in a parent's periodic re-check (GetAudit hashes_only): the hash recomputed.
HASHES_SCHEMA = pa.schema([("seq", pa.int64()), ("prev_hash", pa.string()), ("hash", pa.string())])
_COLUMNS_SQL = ", ".join(AUDIT_COLUMNS)
# entry_hash in SQL: the same text, so a whole chain is re-hashed in one set-based query.
_HASH_SQL = (
    "sha256(concat_ws(chr(31), seq::VARCHAR, recorded_at, node, kind, actor, detail, prev_hash))"
)


def entry_hash(
    seq: int, at: str, node: str, kind: str, actor: str, detail: str, prev_hash: str
) -> str:
    """The hash of one entry; `_HASH_SQL` computes the same in SQL."""
    text = SEPARATOR.join((str(seq), at, node, kind, actor, detail, prev_hash))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def windows_digest(digests: list[str]) -> str:
    """One digest for windows applied together: SHA-256 over their digests in order (one
    window's own digest is SHA-256 over its Arrow IPC parts: see node/wire.py)."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def _clean(text: str) -> str:
    """Free text (kinds, actors) without control characters, so the separator stays one."""
    return "".join(ch for ch in text if ch >= " " or ch == "\t")


@dataclass(frozen=True)
class AuditHead:
    seq: int
    hash: str


# What can be wrong with an entry, as verification names it.
GAP = "sequence gap"
EDITED = "content edited"
LINK = "link broken"
SIGNATURE = "signature invalid"
HEAD = "head mismatch"
REWRITTEN = "rewritten"
REMOVED = "entries removed"
FOREIGN = "foreign node"


@dataclass(frozen=True)
class ChainProblem:
    """The first broken entry of a chain: its sequence and what is wrong with it."""

    seq: int
    what: str
    detail: str = ""

    def describe(self) -> str:
        return f"seq {self.seq}: {self.what}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class ChildAuditState:
    """What a parent knows of one child's chain."""

    child: str
    public_key: str
    verified_seq: int  # verified through this entry: the next fetch links to it
    verified_hash: str
    anchored_seq: int  # the child head last recorded in this node's chain
    anchored_hash: str
    problem: str | None
    problem_seq: int | None
    problem_at: datetime | None
    checked_at: datetime | None
    full_checked_at: datetime | None


def load_signing_key(security_dir: Path) -> Ed25519PrivateKey:
    """The node's audit signing key (Ed25519, PEM, mode 0600), created on first use."""
    path = security_dir / AUDIT_KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return key
    security_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, path)
    return key


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )


class AuditStore:
    """This node's audit chain (`tongyuan.audit_chain`)."""

    def __init__(self, store: Store, code: str) -> None:
        self._store = store
        self._code = code
        self._key: Ed25519PrivateKey | None = None
        # Two threads at first use must not each make a key (one would sign with a key
        # that is not the one on disk).
        self._key_lock = threading.Lock()

    @property
    def security_dir(self) -> Path:
        return self._store.db.path.parent / SECURITY_DIR

    def _signing_key(self) -> Ed25519PrivateKey:
        with self._key_lock:
            if self._key is None:
                self._key = load_signing_key(self.security_dir)
            return self._key

    def public_key(self) -> str:
        """This node's audit public key (raw Ed25519, hex), as reported to its parent."""
        return public_key_hex(self._signing_key())

    def record(
        self,
        kind: str,
        detail: dict[str, Any],
        *,
        actor: str = "",
        cur: duckdb.DuckDBPyConnection | None = None,
    ) -> AuditHead:
        """Append one entry; inside `cur`'s transaction when given, else in its own."""
        if cur is not None:
            return self._append(cur, kind, detail, actor)
        with self._store.db.write() as own:
            return self._append(own, kind, detail, actor)

    def _append(
        self, cur: duckdb.DuckDBPyConnection, kind: str, detail: dict[str, Any], actor: str
    ) -> AuditHead:
        cur.execute("SELECT 1").fetchall()  # a partly fetched result would refuse the next
        row = cur.execute("SELECT seq, hash FROM tongyuan.audit_head").fetchall()
        last_seq, prev_hash = (int(row[0][0]), str(row[0][1])) if row else (0, GENESIS_HASH)
        seq = last_seq + 1
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        kind, actor = _clean(kind), _clean(actor)
        text = json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)
        digest = entry_hash(seq, at, self._code, kind, actor, text, prev_hash)
        signature = self._signing_key().sign(digest.encode("ascii")).hex()
        cur.execute(
            "INSERT INTO tongyuan.audit_chain VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [seq, at, self._code, kind, actor, text, prev_hash, digest, signature],
        )
        cur.execute("DELETE FROM tongyuan.audit_head")
        cur.execute("INSERT INTO tongyuan.audit_head VALUES (?, ?)", [seq, digest])
        return AuditHead(seq, digest)

    def head(self) -> AuditHead:
        with self._store.db.read() as cur:
            row = cur.execute("SELECT seq, hash FROM tongyuan.audit_head").fetchall()
        return AuditHead(int(row[0][0]), str(row[0][1])) if row else AuditHead(0, GENESIS_HASH)

    def entries_count(self) -> int:
        with self._store.db.read() as cur:
            row = cur.execute("SELECT count(*) FROM tongyuan.audit_chain").fetchall()
        return int(row[0][0])

    def existing_public_key(self) -> str | None:
        """This node's audit public key, or None when no key was ever made (verification
        must not make one: a missing key is a finding, not a fresh start)."""
        if self._key is None and not (self.security_dir / AUDIT_KEY_FILE).exists():
            return None
        return self.public_key()

    def entries(
        self, since: int | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Entries after `since` (oldest first), or the last `limit` ones without it."""
        where: list[str] = ["true"]
        params: list[object] = []
        if since is not None:
            where.append("seq > ?")
            params.append(since)
        if kind:
            # A family ("batch") or one kind ("batch.applied").
            where.append("(kind = ? OR starts_with(kind, ? || '.'))")
            params += [kind, kind]
        order = "ASC" if since is not None else "DESC"
        sql = f"SELECT {_COLUMNS_SQL} FROM tongyuan.audit_chain WHERE {' AND '.join(where)} "
        sql += f"ORDER BY seq {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._store.db.read() as cur:
            rows = cur.execute(sql, params).fetchall()
        found = [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in rows]
        return found if since is not None else found[::-1]

    def batches(self, after_seq: int = 0, rows: int = 4096) -> Iterator[pa.Table]:
        """The chain after `after_seq` in seq order, `rows` entries at a time (export,
        signature checks, GetAudit segments): memory stays bounded whatever its length."""
        yield from self._pages(_COLUMNS_SQL, AUDIT_SCHEMA, after_seq, rows)

    def _pages(
        self, columns_sql: str, schema: pa.Schema, after_seq: int, rows: int
    ) -> Iterator[pa.Table]:
        """`columns_sql` of the chain after `after_seq` in seq order, `rows` at a time,
        each page read with its own cursor (no read held open between pages)."""
        after = after_seq
        while True:
            with self._store.db.read() as cur:
                table = cur.sql(
                    f"SELECT {columns_sql} FROM tongyuan.audit_chain WHERE seq > {int(after)} "
                    f"ORDER BY seq LIMIT {int(rows)}"
                ).to_arrow_table()
            if table.num_rows == 0:
                return
            yield table.cast(schema)
            if table.num_rows < rows:
                return
            after = int(table.column("seq")[-1].as_py())

    # ----- verification -----------------------------------------------------------------

    def first_link_problem(self) -> ChainProblem | None:
        """The first entry whose sequence, hash or link is wrong, recomputed in one
        set-based query over the whole chain; then the head against the last entry."""
        with self._store.db.read() as cur:
            problem = _first_problem(cur, "tongyuan.audit_chain", 0, GENESIS_HASH)
            if problem is not None:
                return problem
            last = cur.execute(
                "SELECT seq, hash FROM tongyuan.audit_chain ORDER BY seq DESC LIMIT 1"
            ).fetchall()
            head = cur.execute("SELECT seq, hash FROM tongyuan.audit_head").fetchall()
        last_seq, last_hash = (int(last[0][0]), str(last[0][1])) if last else (0, GENESIS_HASH)
        head_seq, head_hash = (int(head[0][0]), str(head[0][1])) if head else (0, GENESIS_HASH)
        if (last_seq, last_hash) != (head_seq, head_hash):
            return ChainProblem(
                min(last_seq, head_seq) + (1 if last_seq < head_seq else 0),
                HEAD,
                f"the head says seq {head_seq}, the chain ends at seq {last_seq}"
                + (": entries were removed from its end" if last_seq < head_seq else ""),
            )
        return None

    def check_segment(
        self, child: str, table: pa.Table, after_seq: int, after_hash: str
    ) -> ChainProblem | None:
        """The first problem in a segment of a child's chain following (after_seq,
        after_hash): sequence, hashes and links recomputed in SQL, and entries of another
        node. (Signatures are checked by the caller; hashes held before, by check_hashes.)"""
        with self._store.db.read() as cur:
            register_arrow(cur, "audit_segment", table)
            try:
                return _first_problem(cur, "audit_segment", after_seq, after_hash, child=child)
            finally:
                unregister_arrow(cur, "audit_segment")

    def hash_batches(self, after_seq: int = 0, rows: int = 16384) -> Iterator[pa.Table]:
        """The chain after `after_seq` as (seq, prev_hash, hash) with each hash RECOMPUTED
        from the entry's content in SQL, `rows` at a time: what a parent's periodic re-check
        compares with the hashes it holds. An entry edited without re-hashing shows as a
        changed hash; one re-hashed (and re-signed) as well."""
        yield from self._pages(
            f"seq, prev_hash, {_HASH_SQL} AS hash", HASHES_SCHEMA, after_seq, rows
        )

    def check_hashes(
        self,
        child: str,
        table: pa.Table,
        after_seq: int,
        next_prev: str | None,
        through: int,
    ) -> ChainProblem | None:
        """The first problem in a hashes-only segment of a child's chain (seq, prev_hash,
        recomputed hash) following seq `after_seq`, against the hashes this node holds up
        to `through`: one join, set-based. `next_prev` is the prev_hash of the entry after
        the segment (None at the chain's end).

        A recomputed hash that differs from the one held is an edit: when the next entry
        still links to the held hash, the entry's stored hash was left as it was (content
        edited); otherwise the chain was re-hashed from there (rewritten). A flaw found when
        an entry was first verified (bad signature, broken link...) stays a problem: the
        child's chain cannot heal."""
        if table.num_rows == 0:
            return None
        first = int(table.column("seq")[0].as_py())
        last = int(table.column("seq")[-1].as_py())
        with self._store.db.read() as cur:
            register_arrow(cur, "audit_hashes", table)
            try:
                row = cur.execute(
                    f"""WITH seg AS (
                        SELECT seq, hash,
                            coalesce(lag(seq) OVER w, $after) AS before_seq,
                            coalesce(lead(prev_hash) OVER w, $next_prev) AS next_prev
                        FROM audit_hashes WINDOW w AS (ORDER BY seq)
                    ), held AS (
                        SELECT seq, hash AS held_hash, flaw, flaw_detail
                        FROM tongyuan.audit_child_entries
                        WHERE child = $child AND seq BETWEEN $first AND $last
                    )
                    SELECT s.seq, s.before_seq, s.hash, h.held_hash, s.next_prev, h.flaw,
                        h.flaw_detail,
                        CASE WHEN s.seq <> s.before_seq + 1 THEN '{GAP}'
                        WHEN h.held_hash IS NOT NULL AND h.held_hash <> s.hash THEN 'changed'
                        WHEN h.flaw IS NOT NULL THEN 'flaw' END AS problem
                    FROM seg s LEFT JOIN held h USING (seq)
                    WHERE (s.seq <= $through OR s.before_seq < $through) AND problem IS NOT NULL
                    ORDER BY s.seq LIMIT 1""",
                    {
                        "after": after_seq,
                        "next_prev": next_prev,
                        "child": child,
                        "first": first,
                        "last": last,
                        "through": through,
                    },
                ).fetchall()
            finally:
                unregister_arrow(cur, "audit_hashes")
        if not row:
            return None
        seq, before, digest, held, following, flaw, flaw_detail, what = row[0]
        seq, before = int(seq), int(before)
        if what == GAP:
            return _gap(seq, before)
        if what == "flaw":
            return ChainProblem(seq, str(flaw), str(flaw_detail or ""))
        if following is not None and following == held:
            return ChainProblem(seq, EDITED, "its hash no longer matches its content")
        return ChainProblem(
            seq, REWRITTEN, f"verified here as {str(held)[:16]}…, now {str(digest)[:16]}…"
        )

    # ----- a parent's watch over its children's chains -----------------------------------

    def child_state(self, child: str) -> ChildAuditState | None:
        """One row: no scan of the entries or anchors, whatever their number."""
        with self._store.db.read() as cur:
            row = cur.execute(
                "SELECT public_key, problem, problem_seq, problem_at, checked_at, "
                "full_checked_at, verified_seq, verified_hash, anchored_seq, anchored_hash "
                "FROM tongyuan.audit_children WHERE child = ?",
                [child],
            ).fetchall()
        if not row:
            return None
        r = row[0]
        return ChildAuditState(
            child=child,
            public_key=str(r[0]),
            verified_seq=int(r[6]),
            verified_hash=str(r[7]),
            anchored_seq=int(r[8]),
            anchored_hash=str(r[9]),
            problem=r[1],
            problem_seq=r[2],
            problem_at=r[3],
            checked_at=r[4],
            full_checked_at=r[5],
        )

    def pin_child_key(self, child: str, public_key: str) -> None:
        """Trust a child's key at first sight (like its node id): later keys must match."""
        with self._store.db.write() as cur:
            cur.execute("DELETE FROM tongyuan.audit_children WHERE child = ?", [child])
            cur.execute(
                "INSERT INTO tongyuan.audit_children (child, public_key, pinned_at) "
                "VALUES (?, ?, ?)",
                [child, public_key, datetime.now(UTC)],
            )
            self._append(cur, "audit.child_key", {"child": child, "public_key": public_key}, "")

    def save_child_entries(
        self, child: str, table: pa.Table, flaw: ChainProblem | None = None
    ) -> None:
        """Remember the hashes of a child's entries just fetched (seq and hash only, those
        above where this node verified through), with the flaw found in them on the first
        entry it concerns, and move the verified-through point to the segment's last entry:
        one transaction, so a fetch cut short resumes where it stopped."""
        pairs = table.select(["seq", "hash"])
        flaw_seq = -1
        if flaw is not None:
            seqs = [int(s) for s in table.column("seq").to_pylist() if int(s) >= flaw.seq]
            flaw_seq = seqs[0] if seqs else int(table.column("seq")[-1].as_py())
        last_seq = int(table.column("seq")[-1].as_py())
        last_hash = str(table.column("hash")[-1].as_py())
        with self._store.db.write(arrow={"audit_verified": pairs}) as cur:
            cur.execute(
                "INSERT INTO tongyuan.audit_child_entries "
                "SELECT $child, seq, first(hash), "
                "CASE WHEN seq = $flaw_seq THEN $what END, "
                "CASE WHEN seq = $flaw_seq THEN $detail END "
                "FROM audit_verified WHERE seq > (SELECT verified_seq FROM "
                "tongyuan.audit_children WHERE child = $child) GROUP BY seq",
                {
                    "child": child,
                    "flaw_seq": flaw_seq,
                    "what": flaw.what if flaw else None,
                    "detail": flaw.detail if flaw else None,
                },
            )
            cur.execute(
                "UPDATE tongyuan.audit_children SET verified_seq = ?, verified_hash = ? "
                "WHERE child = ? AND verified_seq < ?",
                [last_seq, last_hash, child, last_seq],
            )

    def anchor_child(
        self, child: str, seq: int, digest: str, detail: dict[str, Any], *, full: bool
    ) -> AuditHead:
        """Record a child's verified head in this node's own chain, with the anchor."""
        now = datetime.now(UTC)
        with self._store.db.write() as cur:
            own = self._append(cur, "audit.anchor", {"child": child, **detail}, "")
            cur.execute(
                "INSERT INTO tongyuan.audit_anchors VALUES (?, ?, ?, ?, ?)",
                [child, seq, digest, now, own.seq],
            )
            cur.execute(
                "UPDATE tongyuan.audit_children SET anchored_seq = ?, anchored_hash = ?, "
                "anchored_at = ?, anchors = anchors + 1 WHERE child = ?",
                [seq, digest, now, child],
            )
            self._checked(cur, child, now, full)
        return own

    def child_checked(self, child: str, *, full: bool, passed: bool = False) -> None:
        """A check done; a full one that `passed` clears the problem kept."""
        with self._store.db.write() as cur:
            self._checked(cur, child, datetime.now(UTC), full, passed)

    @staticmethod
    def _checked(
        cur: duckdb.DuckDBPyConnection,
        child: str,
        now: datetime,
        full: bool,
        passed: bool = False,
    ) -> None:
        cur.execute(
            "UPDATE tongyuan.audit_children SET checked_at = $2, "
            "full_checked_at = CASE WHEN $3 THEN $2 ELSE full_checked_at END, "
            "problem = CASE WHEN $4 THEN NULL ELSE problem END, "
            "problem_seq = CASE WHEN $4 THEN NULL ELSE problem_seq END, "
            "problem_at = CASE WHEN $4 THEN NULL ELSE problem_at END "
            "WHERE child = $1",
            [child, now, full, full and passed],
        )

    def child_problem(self, child: str, seq: int, message: str, *, full: bool = False) -> bool:
        """Keep a problem found in a child's chain and record it in this node's own chain
        when it is new; returns whether it is. A full re-check's finding replaces the one
        kept; a finding in new entries is kept only when none at an earlier seq is."""
        with self._store.db.write() as cur:
            row = cur.execute(
                "SELECT problem, problem_seq FROM tongyuan.audit_children WHERE child = ?",
                [child],
            ).fetchall()
            if row and row[0][0] == message:
                return False
            kept_seq = row[0][1] if row else None
            if full or (row and (row[0][0] is None or kept_seq is None or seq < int(kept_seq))):
                cur.execute(
                    "UPDATE tongyuan.audit_children SET problem = ?, problem_seq = ?, "
                    "problem_at = ? WHERE child = ?",
                    [message, seq, datetime.now(UTC), child],
                )
            self._append(
                cur, "audit.child_problem", {"child": child, "seq": seq, "problem": message}, ""
            )
        return True

    def forget_child(self, child: str, actor: str) -> bool:
        """Trust a child's chain afresh (after it was legitimately re-initialised): its
        pinned key, verified hashes and problem go; anchors stay as history."""
        with self._store.db.write() as cur:
            row = cur.execute(
                "SELECT public_key FROM tongyuan.audit_children WHERE child = ?", [child]
            ).fetchall()
            if not row:
                return False
            cur.execute("DELETE FROM tongyuan.audit_children WHERE child = ?", [child])
            cur.execute("DELETE FROM tongyuan.audit_child_entries WHERE child = ?", [child])
            self._append(
                cur, "audit.child_reset", {"child": child, "public_key": str(row[0][0])}, actor
            )
        return True

    def children(self) -> list[dict[str, Any]]:
        """Each watched child: pinned key, last anchor, problem (for status and metrics),
        from its one row."""
        keys = (
            "child", "public_key", "problem", "problem_seq", "problem_at", "checked_at",
            "full_checked_at", "anchored_seq", "anchored_hash", "anchored_at", "anchors",
        )  # fmt: skip
        with self._store.db.read() as cur:
            rows = cur.execute(
                f"SELECT {', '.join(keys)} FROM tongyuan.audit_children ORDER BY child"
            ).fetchall()
        return [dict(zip(keys, row, strict=True)) for row in rows]


def _gap(seq: int, before: int) -> ChainProblem:
    if seq > before + 1:
        missing = f"{before + 1}" if seq == before + 2 else f"{before + 1}..{seq - 1}"
        return ChainProblem(before + 1, GAP, f"entries {missing} missing")
    return ChainProblem(
        seq, GAP, f"seq {seq} follows seq {before}: entries duplicated or reordered"
    )


def _first_problem(
    cur: duckdb.DuckDBPyConnection,
    source: str,
    after_seq: int,
    after_hash: str,
    *,
    child: str | None = None,
) -> ChainProblem | None:
    """The first broken entry of `source` (a chain or a segment of one following
    (after_seq, after_hash)): one query, each entry's hash recomputed and its predecessor
    taken with a window. With `child`, entries must be that node's."""
    checks = f"WHEN node <> $3 THEN '{FOREIGN}' " if child is not None else ""
    params: list[object] = [after_seq, after_hash] + ([child] if child is not None else [])
    row = cur.execute(
        f"""WITH entries AS (
            SELECT seq, node, hash, prev_hash, {_HASH_SQL} AS recomputed,
                coalesce(lag(seq) OVER w, $1) AS before_seq,
                coalesce(lag(hash) OVER w, $2) AS before_hash
            FROM {source} WINDOW w AS (ORDER BY seq)
        ), judged AS (
            SELECT seq, before_seq,
                CASE WHEN seq <> before_seq + 1 THEN '{GAP}' {checks}
                WHEN recomputed <> hash THEN '{EDITED}'
                WHEN prev_hash <> before_hash THEN '{LINK}'
                END AS problem
            FROM entries
        )
        SELECT seq, before_seq, problem FROM judged
        WHERE problem IS NOT NULL ORDER BY seq LIMIT 1""",
        params,
    ).fetchall()
    if not row:
        return None
    seq, before, what = row[0]
    seq, before = int(seq), int(before)
    if what == GAP:
        return _gap(seq, before)
    if what == EDITED:
        return ChainProblem(seq, EDITED, "its hash no longer matches its content")
    if what == LINK:
        return ChainProblem(seq, LINK, "it does not hold the previous entry's hash")
    if what == FOREIGN:
        return ChainProblem(seq, FOREIGN, "an entry of another node")
    return ChainProblem(seq, str(what), "")
