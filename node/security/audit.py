"""The audit chain's checks: this node's chain (`audit verify`), an exported file (offline,
without a store), and a parent's anchors over each child's chain.

A node can re-hash and re-sign its own chain with its own key, and nothing it holds can
show that; so a parent keeps evidence outside the child's reach. What it keeps per child:
the key it pinned at first sight, the hash of every child entry it verified (with the
flaw found in it, if any), and in one row where it verified through (seq and hash: the
next fetch links to it) and its last anchor — so a period that finds nothing new costs
one GetInfo and one row read, never a scan of the hashes held.

Each `audit_anchor_seconds`, when the child's head moved, the parent fetches the entries
after the verified-through point (GetAudit), verifies them segment by segment —
contiguous, every hash recomputed, the first linked to the hash verified last, each
signed with the pinned key —, keeps their hashes and moves the point on, then records
the child's head in its OWN chain (`audit.anchor`). It moves on even past a problem: the
finding is recorded, the flaw is kept on the entry it concerns, and the next fetch
starts after it, so a problem never makes every later period re-fetch a growing segment.

At its first check after it starts, every `audit_recheck_seconds`, and at once when a
fresh finding needs pinpointing (a head that is not the entry verified, entries gone, a
new entry that does not link), it re-checks the WHOLE chain in hashes-only mode
(GetAudit `hashes_only`): the child streams (seq, prev_hash, hash) with each hash
RECOMPUTED from the entry's content in SQL, and the parent joins each segment with the
hashes it holds (node/store/audit.py check_hashes), set-based. Because the hash is
recomputed on the child, an entry edited without re-hashing shows as a changed hash
just as a chain re-hashed and re-signed with the child's key does; the next entry's
prev_hash tells them apart (it still holds the hash verified here when only the content
was edited). The recomputation runs in the child's code: that trusts its code, not its
data — no weaker than fetching full entries, since a child running altered code could
as well serve originals it kept aside. Signatures are checked once, when an entry is
first fetched: a re-check cannot unsee a flaw found then (it is kept on the entry and
reported by every re-check), and the child's own `audit verify` checks every signature
of its chain. (Full entries after the verified-through point are fetched by the same
run before the re-check, so nothing goes unverified in between.)

A problem is kept until a full re-check passes (never, for a flaw kept), logged and
shown in status and metrics, and recorded in the parent's own chain; data keeps flowing
(the audit is evidence about the link, not a gate on it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pyarrow as pa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.errors import UserError
from node.store import Store
from node.store.audit import (
    AUDIT_COLUMNS,
    AUDIT_SCHEMA,
    EDITED,
    GAP,
    GENESIS_HASH,
    HASHES_SCHEMA,
    HEAD,
    LINK,
    REMOVED,
    REWRITTEN,
    SIGNATURE,
    ChainProblem,
    ChildAuditState,
    Evidence,
    entry_hash,
)
from node.store.outbound import pseudonym
from node.wire import decode_table

log = logging.getLogger(__name__)

EXPORT_FORMAT = "tongyuan-audit-chain"
EXPORT_VERSION = 1
# Entries per GetAudit segment: a few MB at most, whatever the chain's length.
SEGMENT_ROWS = 2048
# Entries per hashes-only segment (about 140 bytes each).
HASH_SEGMENT_ROWS = 16384
# A fetch of new entries cut short resumes at the next period where it stopped.
FETCH_TIMEOUT = 120
RECHECK_TIMEOUT = 600
# A child serving a long stream records what it served at most this often.
SERVED_RECORD_SECONDS = 60.0


# ----- signatures ---------------------------------------------------------------------


def _verifier(public_key: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key))
    except ValueError:
        raise UserError(f"{public_key!r} is not an Ed25519 public key (64 hex digits)") from None


def signature_ok(key: Ed25519PublicKey, digest: str, signature: str) -> bool:
    try:
        key.verify(bytes.fromhex(signature), digest.encode("ascii"))
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        return False
    return True


def first_bad_signature(
    key: Ed25519PublicKey, tables: Iterator[pa.Table], until: int | None = None
) -> ChainProblem | None:
    """The first entry (up to `until`) whose signature is not the key's over its hash."""
    for table in tables:
        seqs = table.column("seq").to_pylist()
        hashes = table.column("hash").to_pylist()
        signatures = table.column("signature").to_pylist()
        for seq, digest, signature in zip(seqs, hashes, signatures, strict=True):
            if until is not None and seq >= until:
                return None
            if not signature_ok(key, digest, signature):
                return ChainProblem(seq, SIGNATURE, "not signed by this node's audit key")
    return None


# ----- this node's chain --------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying a chain: intact (problem None) or its first broken entry."""

    entries: int
    head_seq: int
    head_hash: str
    public_key: str | None
    problem: ChainProblem | None

    def document(self) -> dict[str, Any]:
        return {
            "intact": self.problem is None,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "public_key": self.public_key,
            "problem": None
            if self.problem is None
            else {
                "seq": self.problem.seq,
                "what": self.problem.what,
                "detail": self.problem.detail,
                "message": self.problem.describe(),
            },
        }


def verify_store(store: Store) -> Verdict:
    """Verify this node's chain: hashes, links and sequence in one SQL pass, then every
    signature (up to the first SQL finding) against this node's key."""
    audit = store.audit
    head = audit.head()
    entries = audit.entries_count()
    problem = audit.first_link_problem()
    public_key = audit.existing_public_key()
    if entries and public_key is None:
        problem = ChainProblem(
            1, SIGNATURE, f"the audit key {audit.security_dir / 'audit.key'} is missing"
        )
    elif public_key is not None:
        until = problem.seq if problem is not None else None
        bad = first_bad_signature(_verifier(public_key), audit.batches(), until)
        if bad is not None:
            problem = bad
    return Verdict(entries, head.seq, head.hash, public_key, problem)


def export_chain(store: Store, path: Path, code: str) -> dict[str, Any]:
    """Write the chain as JSON Lines: a header (node, public key, head) and one entry per
    line with its hash and signature, so an auditor verifies it with the file alone."""
    audit = store.audit
    head = audit.head()
    header = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "node": code,
        "public_key": audit.existing_public_key(),
        "head_seq": head.seq,
        "head_hash": head.hash,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    count = 0
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(json.dumps(header, ensure_ascii=False) + "\n")
            for table in audit.batches():
                for row in table.to_pylist():
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return {"file": str(path), "entries": count, "head_seq": head.seq, "head_hash": head.hash}


def verify_file(path: Path, expected_key: str | None = None) -> Verdict:
    """Verify an exported chain with nothing but the file (and, better, the key the
    parent pinned: a file re-signed with another key is only caught against it)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}:1: not an audit chain export (`tongyuan audit export`)")
    public_key = str(header.get("public_key") or "")
    if expected_key and public_key != expected_key:
        wrong_key = ChainProblem(
            0, SIGNATURE, f"the file carries key {public_key[:16]}…, not {expected_key[:16]}…"
        )
        return Verdict(len(lines) - 1, 0, GENESIS_HASH, public_key, wrong_key)
    key = _verifier(public_key) if public_key else None
    before_seq, before_hash = 0, GENESIS_HASH
    problem: ChainProblem | None = None
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
            values = [entry[c] for c in AUDIT_COLUMNS]
            seq = int(values[0])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{number}: not an audit entry") from None
        _, at, node, kind, actor, detail, prev_hash, digest, signature = (str(v) for v in values)
        if seq != before_seq + 1:
            problem = ChainProblem(before_seq + 1, GAP, f"line {number} holds seq {seq}")
        elif entry_hash(seq, at, node, kind, actor, detail, prev_hash) != digest:
            problem = ChainProblem(seq, EDITED, "its hash no longer matches its content")
        elif prev_hash != before_hash:
            problem = ChainProblem(seq, LINK, "it does not hold the previous entry's hash")
        elif key is None or not signature_ok(key, digest, signature):
            problem = ChainProblem(seq, SIGNATURE, "not signed by the file's key")
        if problem is not None:
            break
        before_seq, before_hash = seq, digest
    claimed = (int(header.get("head_seq", 0)), str(header.get("head_hash", GENESIS_HASH)))
    if problem is None and claimed != (before_seq, before_hash):
        problem = ChainProblem(
            before_seq + 1,
            HEAD,
            f"the header's head is seq {claimed[0]}, the entries end at {before_seq}",
        )
    return Verdict(len(lines) - 1, before_seq, before_hash, public_key or None, problem)


# ----- what a child served ---------------------------------------------------------------


class ServedRecord:
    """What one PullChanges session served, recorded as one `batch.served` entry when it
    ends and at most every SERVED_RECORD_SECONDS while it streams — not one write
    transaction per streamed window on the hot path."""

    def __init__(self, store: Store, parent: str, every: float = SERVED_RECORD_SECONDS) -> None:
        self._store = store
        self._parent = parent
        self._every = every
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self._first: int | None = None
        self._last = 0
        self._windows = 0
        self._rows = 0
        self._since = now

    def served(self, after_seq: int, last_seq: int, rows: int) -> None:
        if self._first is None:
            self._first = after_seq
        self._last = last_seq
        self._windows += 1
        self._rows += rows
        now = time.monotonic()
        if now - self._since >= self._every:
            self.flush()

    def flush(self) -> None:
        if self._first is None:
            return
        detail = {
            "parent": self._parent,
            "after_seq": self._first,
            "last_seq": self._last,
            "windows": self._windows,
            "rows": self._rows,
        }
        self._reset(time.monotonic())
        try:
            self._store.audit.record("batch.served", detail, actor=self._parent)
        except Exception:  # evidence must never break serving; the failure is logged
            log.exception("recording served changes for parent %s failed", self._parent)


# ----- what a child received ------------------------------------------------------------


def received(
    store: Store, what: str, parent: str, digest: str, rows: int, **extra: Any
) -> Evidence:
    """The `delivery.received` entry for a set a parent delivered (standards, model, rules,
    discrepancies, feedback), written by the store method that replaces the set, inside
    its transaction. Only a set that changed is replaced, so an identical redelivery
    records nothing."""
    detail = {"set": what, "parent": parent, "digest": digest, "rows": rows, **extra}

    def evidence(cur: duckdb.DuckDBPyConnection) -> None:
        store.audit.record("delivery.received", detail, actor=parent, cur=cur)

    return evidence


def rules_in(library_json: str) -> int:
    """How many rules a delivered library holds (0 when it does not parse: it is refused)."""
    try:
        layers = json.loads(library_json).get("layers", [])
        return sum(len(layer.get("rules", [])) for layer in layers)
    except (ValueError, AttributeError, TypeError):
        return 0


# ----- a parent's anchors over a child's chain ------------------------------------------


def _message(child: str, problem: ChainProblem) -> str:
    return f"child {child} rewrote its audit chain at seq {problem.seq}: {problem.what}" + (
        f" ({problem.detail})" if problem.detail else ""
    )


class ChildAuditor:
    """Anchors one child's audit chain in this node's own chain (a scheduled job per
    child, off the apply path). See the module docstring for the design."""

    def __init__(self, child: str, parent: str, store: Store, recheck_seconds: float) -> None:
        self.child = child
        self._parent = parent
        self._store = store
        self._recheck = recheck_seconds
        self._last_full: float | None = None  # the first check after start is a full one
        self._lock = threading.Lock()
        self._unreachable: str | None = None
        self._log = {"child": child}

    def run(self, stub: pb_grpc.FederationStub) -> None:
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._run(stub)
            self._unreachable = None
        except grpc.RpcError as exc:
            problem = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
            if problem != self._unreachable:  # once per problem, not every period
                log.info(
                    "child %s: audit chain not fetched: %s", self.child, problem, extra=self._log
                )
            self._unreachable = problem
        finally:
            self._lock.release()

    def _run(self, stub: pb_grpc.FederationStub) -> None:
        info = stub.GetInfo(pb.GetInfoRequest(caller_code=self._parent), timeout=5)
        known_id = self._store.link_node_id(self.child)
        if info.code != self.child or (known_id is not None and known_id != info.node_id):
            return  # the link refuses this address and says why
        if not info.audit_public_key:
            return  # a child of a version without an audit chain
        audit = self._store.audit
        state = audit.child_state(self.child)
        if state is None:
            audit.pin_child_key(self.child, info.audit_public_key)
            log.info(
                "child %s: pinned its audit key %s…",
                self.child,
                info.audit_public_key[:16],
                extra=self._log,
            )
            state = audit.child_state(self.child)
            assert state is not None
        if state.public_key != info.audit_public_key:
            self._problem(
                ChainProblem(
                    info.audit_head_seq,
                    "signed with another key",
                    f"pinned {state.public_key[:16]}…, now {info.audit_public_key[:16]}…",
                ),
                full=True,
            )
            return
        now = time.monotonic()
        full = self._last_full is None or now - self._last_full >= self._recheck
        head_seq, head_hash = info.audit_head_seq, info.audit_head_hash
        verified = (state.verified_seq, state.verified_hash)
        if not full and (head_seq, head_hash) == verified:
            return  # nothing new: one GetInfo and one row read per period
        found: ChainProblem | None = None
        fetched: ChainProblem | None = None  # in new entries: found once, then passed
        new = 0
        if head_seq > state.verified_seq:
            found, new = self._fetch_new(stub, state)
            fetched = found
        elif head_seq < state.verified_seq:
            found = ChainProblem(
                head_seq + 1,
                REMOVED,
                f"the chain ends at seq {head_seq}, this node verified it up to seq "
                f"{state.verified_seq}",
            )
        elif head_hash != state.verified_hash:
            found = ChainProblem(
                head_seq, REWRITTEN, "its head is not the entry this node verified"
            )
        if found is not None and state.problem is None:
            full = True  # pinpoint a fresh finding at once (kept ones wait for the period)
        after = audit.child_state(self.child)
        assert after is not None
        if after.verified_seq > state.anchored_seq or (
            after.verified_seq == state.anchored_seq and after.verified_hash != state.anchored_hash
        ):
            detail = {"seq": after.verified_seq, "hash": after.verified_hash, "verified": new}
            own = audit.anchor_child(
                self.child, after.verified_seq, after.verified_hash, detail, full=False
            )
            log.debug(
                "child %s: anchored its audit head %d (own entry %d)",
                self.child,
                after.verified_seq,
                own.seq,
                extra=self._log,
            )
        if not full:
            # (A finding at the head with a problem kept waits for the full re-check.)
            if fetched is not None:
                self._problem(fetched, full=False)
            else:
                audit.child_checked(self.child, full=False)
            return
        # Also when the re-check fails: the next one waits its period.
        self._last_full = now
        problem = self._recheck_hashes(stub, after.verified_seq) or found
        if problem is not None:
            self._problem(problem, full=True)
            audit.child_checked(self.child, full=True)
            return
        audit.child_checked(self.child, full=True, passed=True)
        if state.problem:
            log.info("child %s: its audit chain verifies again", self.child, extra=self._log)

    def _fetch_new(
        self, stub: pb_grpc.FederationStub, state: ChildAuditState
    ) -> tuple[ChainProblem | None, int]:
        """Fetch the entries after the verified-through point and verify them segment by
        segment (contiguous, hashes recomputed, linked to the last verified hash, signed
        with the pinned key); each segment's hashes are kept, with the flaw found in it,
        and the point moves on even past a problem. Returns the first problem and how many
        entries were new."""
        audit = self._store.audit
        key = _verifier(state.public_key)
        last_seq, last_hash = state.verified_seq, state.verified_hash
        first: ChainProblem | None = None
        new = 0
        request = pb.GetAuditRequest(caller_code=self._parent, after_seq=last_seq)
        for segment in stub.GetAudit(request, timeout=FETCH_TIMEOUT):
            table = self._decode(segment.arrow_ipc, list(AUDIT_COLUMNS), AUDIT_SCHEMA)
            if table.num_rows == 0:
                continue
            table = table.sort_by("seq")
            problem = audit.check_segment(self.child, table, last_seq, last_hash)
            if problem is None:
                problem = first_bad_signature(key, iter([table]))
            audit.save_child_entries(self.child, table, problem)
            first = first or problem
            new += table.num_rows
            last_seq = max(last_seq, int(table.column("seq")[-1].as_py()))
            last_hash = str(table.column("hash")[-1].as_py())
        return first, new

    def _recheck_hashes(self, stub: pb_grpc.FederationStub, through: int) -> ChainProblem | None:
        """The full re-check: the child's chain as (seq, prev_hash, recomputed hash), each
        segment joined with the hashes this node holds (node/store/audit.py check_hashes);
        stops at the first problem or once past `through`."""
        audit = self._store.audit
        request = pb.GetAuditRequest(caller_code=self._parent, after_seq=0, hashes_only=True)
        stream = stub.GetAudit(request, timeout=RECHECK_TIMEOUT)
        before = 0
        pending: pa.Table | None = None
        try:
            for segment in stream:
                table = self._decode(segment.arrow_ipc, list(HASHES_SCHEMA.names), HASHES_SCHEMA)
                if table.num_rows == 0:
                    continue
                table = table.sort_by("seq")
                if pending is not None:
                    following = str(table.column("prev_hash")[0].as_py())
                    problem = audit.check_hashes(self.child, pending, before, following, through)
                    if problem is not None:
                        return problem
                    before = int(pending.column("seq")[-1].as_py())
                    if before >= through:
                        return None
                pending = table
            if pending is not None:
                problem = audit.check_hashes(self.child, pending, before, None, through)
                if problem is not None:
                    return problem
                before = int(pending.column("seq")[-1].as_py())
        finally:
            stream.cancel()  # done with it (a no-op once the stream ended)
        if before < through:
            return ChainProblem(
                before + 1,
                REMOVED,
                f"the chain ends at seq {before}, this node verified it up to seq {through}",
            )
        return None

    def _decode(self, data: bytes, columns: list[str], schema: pa.Schema) -> pa.Table:
        try:
            return decode_table(data).select(columns).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowException, KeyError, OSError, ValueError) as exc:
            raise UserError(f"child {self.child}: audit segment does not decode: {exc}") from None

    def _problem(self, problem: ChainProblem, *, full: bool) -> None:
        message = _message(self.child, problem)
        if self._store.audit.child_problem(self.child, problem.seq, message, full=full):
            log.warning("%s", message, extra=self._log)


# ----- what state-changing operations record ------------------------------------------------

# Named operations (NodeService.call) that change state, and the entry kind each records.
AUDITED_OPERATIONS = {
    "catalog.add": "catalog.add",
    "catalog.edit": "catalog.edit",
    "catalog.publish": "catalog.publish",
    "catalog.retire": "catalog.retire",
    "catalog.remove": "catalog.remove",
    "catalog.map": "catalog.map",
    "catalog.import": "catalog.import",
    "catalog.standard_add": "standard.add",
    "catalog.standard_withdraw": "standard.withdraw",
    "model.publish": "model.publish",
    "model.adopt": "model.adopt",
    "model.mapping": "model.mapping",
    "quality.rules_publish": "rules.publish",
    "quality.rules_local": "rules.local",
    "quality.quarantine_release": "quarantine.release",
    "quality.quarantine_drop": "quarantine.drop",
    "discrepancies.resolve": "discrepancy.resolve",
    "feedback.respond": "feedback.respond",
    "objection.raise": "objection.raise",
}
# Result fields worth keeping as evidence (the rest is for the terminal; never a value).
_RESULT_KEYS = (
    "code", "status", "version", "published", "from", "to", "adopted", "layer", "rules",
    "changed", "released", "still_held", "dropped", "id", "state", "withdrawn", "role",
    "action", "resource", "rows",
)  # fmt: skip
# Entries travel to the parent (GetAudit) and into `audit export` files, so they must
# not carry a record's content — a conditional resource's values leave a node only
# masked or pseudonymised. Arguments that may hold a value are dropped (that one was
# given shows as `<name>_given`); those that may hold a record's key, or free text that
# may quote one, are kept as their pseudonym under the federation key (`<name>_pseudonym`,
# HMAC-SHA256 as on the way out, `node.store.outbound.pseudonym`), which proves what was
# said without saying it. Not a plain SHA-256: an ID number has about 1e11 candidates,
# and hashing them all takes minutes without a key.
_VALUE_ARGS = frozenset({"value", "values", "observed_value", "corrected", "row", "rows_data"})
_DIGEST_ARGS = frozenset({"key", "keys", "record_key", "source_key", "note", "reason"})
# The federation key, fetched only when an entry has something to pseudonymise.
KeySource = Callable[[], bytes]


def evidence_pseudonym(value: Any, key: bytes) -> str:
    """A value (text, or anything JSON-able) as audit evidence: its pseudonym under the
    federation key."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return pseudonym(text, key)


def _brief(value: Any, key: KeySource) -> Any:
    """An argument as evidence: lists of documents by their codes, long text cut, values
    and keys never in clear (see _VALUE_ARGS)."""
    if isinstance(value, str):
        return value if len(value) <= 500 else value[:500] + "…"
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value):
            return [v.get("code", v.get("id", "?")) for v in value][:200]
        return [_brief(v, key) for v in value[:200]]
    if isinstance(value, dict):
        return _withheld(dict(list(value.items())[:50]), key)
    return value


def _withheld(args: dict[str, Any], key: KeySource) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in args.items():
        if name in _VALUE_ARGS:
            out[f"{name}_given"] = value is not None
        elif name in _DIGEST_ARGS:
            if value is not None and value != "":
                out[f"{name}_pseudonym"] = evidence_pseudonym(value, key())
        else:
            out[name] = _brief(value, key)
    return out


def operation_entry(
    method: str, args: dict[str, Any], result: Any, key: KeySource
) -> tuple[str, dict[str, Any]] | None:
    """The entry (kind, detail) a named operation records, or None when it changed
    nothing worth evidence. No record value or key is ever in it (see _VALUE_ARGS);
    `key` gives the federation key (called only when something is pseudonymised)."""
    kind = AUDITED_OPERATIONS.get(method)
    if kind is None or args.get("dry_run"):
        return None
    detail: dict[str, Any] = {"operation": method}
    detail["args"] = _withheld({k: v for k, v in args.items() if k != "actor"}, key)
    if isinstance(result, dict):
        detail["result"] = _withheld({k: result[k] for k in _RESULT_KEYS if k in result}, key)
    elif isinstance(result, list):
        detail["result"] = _brief(result, key)
    return kind, detail


# ----- the operations behind `tongyuan audit` ----------------------------------------------


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


class AuditService:
    """`tongyuan audit show|verify|export|forget-child` and the audit lines of status."""

    def __init__(self, code: str, store: Store) -> None:
        self._code = code
        self._store = store

    def show(
        self, since: int | None = None, kind: str | None = None, limit: int | None = 50
    ) -> list[dict[str, Any]]:
        if limit is not None and limit <= 0:
            raise UserError(f"--limit must be above 0, got {limit}")
        return self._store.audit.entries(since, kind, limit)

    def verify(self) -> dict[str, Any]:
        return verify_store(self._store).document()

    def export(self, path: str) -> dict[str, Any]:
        target = Path(path)
        if not target.parent.is_dir():
            raise UserError(f"cannot write {target}: directory {target.parent} does not exist")
        return export_chain(self._store, target, self._code)

    def forget_child(self, child: str, actor: str = "unknown") -> dict[str, Any]:
        """Trust a child's chain afresh, e.g. after it was re-initialised with a new key."""
        if not self._store.audit.forget_child(child, actor):
            raise UserError(f"node {self._code} keeps no audit anchors of child {child}")
        return {"child": child, "forgotten": True}

    def summary(self) -> dict[str, Any]:
        audit = self._store.audit
        head = audit.head()
        children = [_jsonable(c) for c in audit.children()]
        return {
            "entries": audit.entries_count(),
            "head_seq": head.seq,
            "head_hash": head.hash,
            "children": children,
            "problems": [
                {"child": c["child"], "seq": c["problem_seq"], "problem": c["problem"]}
                for c in children
                if c["problem"]
            ],
        }
