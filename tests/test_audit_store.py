"""The audit chain in the store: appends, set-based verification that names the first
broken entry (edited, deleted, reordered, badly signed, cut short), the export verified
offline, and the parent's check of a child's segment against the hashes it verified."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stores import NAMES, StoreNode

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node.federation.servicer import FederationServicer
from node.model.schema import NodeMapping
from node.quality.report import QualityReporter
from node.security.audit import (
    ChildAuditor,
    export_chain,
    operation_entry,
    verify_file,
    verify_store,
)
from node.store.audit import (
    EDITED,
    GAP,
    GENESIS_HASH,
    HEAD,
    LINK,
    REWRITTEN,
    SIGNATURE,
    entry_hash,
    load_signing_key,
)
from node.store.model import delivery_digest
from node.store.outbound import pseudonym
from node.store.store import Store
from node.wire import encode_table, standard_to_message


@pytest.fixture
def county(tmp_path: Path) -> Iterator[StoreNode]:
    node = StoreNode(tmp_path, "320102", NAMES["320102"])
    for i in range(1, 6):
        node.store.audit.record("test.event", {"n": i, "text": "记录"}, actor="tester")
    yield node
    node.store.close()


def _sql(store: Store, sql: str, params: list[object] | None = None) -> None:
    with store.db.write() as cur:
        cur.execute(sql, params or [])


def rewrite_with_key(store: Store, seq: int, detail: str) -> None:
    """Edit entry `seq` and re-hash and re-sign it and every later one with the node's own
    key, as someone holding the key would: the chain verifies locally afterwards."""
    key = load_signing_key(store.audit.security_dir)
    with store.db.write() as cur:
        rows = cur.execute(
            "SELECT seq, recorded_at, node, kind, actor, detail, prev_hash FROM "
            "tongyuan.audit_chain WHERE seq >= ? ORDER BY seq",
            [seq],
        ).fetchall()
        prev = rows[0][6]
        for s, at, node, kind, actor, text, _ in rows:
            text = detail if s == seq else text
            digest = entry_hash(s, at, node, kind, actor, text, prev)
            cur.execute(
                "UPDATE tongyuan.audit_chain SET detail = ?, prev_hash = ?, hash = ?, "
                "signature = ? WHERE seq = ?",
                [text, prev, digest, key.sign(digest.encode()).hex(), s],
            )
            prev = digest
        cur.execute("UPDATE tongyuan.audit_head SET hash = ?", [prev])


def test_a_recorded_chain_verifies_and_links_each_entry_to_the_last(county: StoreNode) -> None:
    verdict = verify_store(county.store)
    assert verdict.problem is None
    assert (verdict.entries, verdict.head_seq) == (5, 5)
    entries = county.store.audit.entries(since=0)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert json.loads(entries[0]["detail"]) == {"n": 1, "text": "记录"}
    assert county.store.audit.head().hash == entries[-1]["hash"] == verdict.head_hash
    # The SQL recomputation and Python's agree (verify would flag every entry otherwise).
    e = entries[2]
    assert e["hash"] == entry_hash(
        e["seq"], e["recorded_at"], e["node"], e["kind"], e["actor"], e["detail"], e["prev_hash"]
    )


def test_edited_content_is_named_at_its_entry(county: StoreNode) -> None:
    _sql(county.store, "UPDATE tongyuan.audit_chain SET detail = '{\"n\": 99}' WHERE seq = 3")
    problem = verify_store(county.store).problem
    assert problem is not None and (problem.seq, problem.what) == (3, EDITED)


def test_a_deleted_entry_is_a_gap(county: StoreNode) -> None:
    _sql(county.store, "DELETE FROM tongyuan.audit_chain WHERE seq = 2")
    problem = verify_store(county.store).problem
    assert problem is not None and (problem.seq, problem.what) == (2, GAP)
    assert "entries 2 missing" in problem.detail


def test_the_first_entry_deleted_is_a_gap_at_one(county: StoreNode) -> None:
    _sql(county.store, "DELETE FROM tongyuan.audit_chain WHERE seq = 1")
    problem = verify_store(county.store).problem
    assert problem is not None and (problem.seq, problem.what) == (1, GAP)


def test_reordered_entries_are_caught_at_the_first_moved(county: StoreNode) -> None:
    _sql(
        county.store,
        "UPDATE tongyuan.audit_chain SET seq = CASE seq WHEN 2 THEN 3 ELSE 2 END "
        "WHERE seq IN (2, 3)",
    )
    problem = verify_store(county.store).problem
    assert problem is not None and problem.seq == 2
    assert problem.what in (EDITED, LINK)


def test_a_bad_signature_is_named(county: StoreNode) -> None:
    (other,) = county.store.audit.entries(since=3, limit=1)
    _sql(
        county.store,
        "UPDATE tongyuan.audit_chain SET signature = ? WHERE seq = 2",
        [other["signature"]],
    )
    problem = verify_store(county.store).problem
    assert problem is not None and (problem.seq, problem.what) == (2, SIGNATURE)


def test_rehashing_without_the_key_fails_on_the_signature(county: StoreNode) -> None:
    """Someone without the key who edits an entry and re-hashes the chain after it."""
    rows = county.store.audit.entries(since=0)
    prev = rows[2]["prev_hash"]
    with county.store.db.write() as cur:
        for e in rows[2:]:
            text = '{"n": 0}' if e["seq"] == 3 else e["detail"]
            digest = entry_hash(
                e["seq"], e["recorded_at"], e["node"], e["kind"], e["actor"], text, prev
            )
            cur.execute(
                "UPDATE tongyuan.audit_chain SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                [text, prev, digest, e["seq"]],
            )
            prev = digest
        cur.execute("UPDATE tongyuan.audit_head SET hash = ?", [prev])
    problem = verify_store(county.store).problem
    assert problem is not None and (problem.seq, problem.what) == (3, SIGNATURE)


def test_a_rewrite_with_the_key_verifies_locally(county: StoreNode) -> None:
    """What only a parent's anchors can catch (see test_audit.py)."""
    rewrite_with_key(county.store, 3, '{"n": 0}')
    assert verify_store(county.store).problem is None


def test_entries_cut_from_the_end_disagree_with_the_head(county: StoreNode) -> None:
    _sql(county.store, "DELETE FROM tongyuan.audit_chain WHERE seq >= 4")
    problem = verify_store(county.store).problem
    assert problem is not None and (problem.seq, problem.what) == (4, HEAD)


def test_a_missing_key_is_a_finding(county: StoreNode) -> None:
    (county.store.audit.security_dir / "audit.key").unlink()
    county.store.audit._key = None  # as a fresh process would find it
    problem = verify_store(county.store).problem
    assert problem is not None and problem.what == SIGNATURE and "missing" in problem.detail


def test_an_export_verifies_offline_and_an_edited_one_does_not(
    county: StoreNode, tmp_path: Path
) -> None:
    path = tmp_path / "chain.jsonl"
    result = export_chain(county.store, path, county.code)
    assert result["entries"] == 5
    verdict = verify_file(path)
    assert verdict.problem is None and verdict.head_seq == 5
    key = county.store.audit.public_key()
    assert verify_file(path, key).problem is None

    lines = path.read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[2])
    entry["detail"] = entry["detail"].replace("记录", "改过")
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([*lines[:2], json.dumps(entry), *lines[3:]]) + "\n", "utf-8")
    problem = verify_file(edited).problem
    assert problem is not None and (problem.seq, problem.what) == (2, EDITED)

    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join([*lines[:3], *lines[4:]]) + "\n", "utf-8")
    problem = verify_file(dropped).problem
    assert problem is not None and (problem.seq, problem.what) == (3, GAP)

    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-1]) + "\n", "utf-8")
    problem = verify_file(cut).problem
    assert problem is not None and problem.what == HEAD

    problem = verify_file(path, "00" * 32).problem
    assert problem is not None and problem.what == SIGNATURE


def test_a_parent_sees_a_rewrite_against_the_hashes_it_verified(
    county: StoreNode, tmp_path: Path
) -> None:
    city = StoreNode(tmp_path, "320100", NAMES["320100"])
    try:
        audit = city.store.audit
        audit.pin_child_key("320102", county.store.audit.public_key())
        (first,) = list(county.store.audit.batches())
        assert audit.check_segment("320102", first, 0, GENESIS_HASH) is None
        audit.save_child_entries("320102", first)
        audit.anchor_child("320102", 5, first.column("hash")[-1].as_py(), {"seq": 5}, full=True)
        state = audit.child_state("320102")
        assert state is not None and (state.anchored_seq, state.verified_seq) == (5, 5)
        assert state.verified_hash == first.column("hash")[-1].as_py()
        (hashes,) = list(county.store.audit.hash_batches())
        assert audit.check_hashes("320102", hashes, 0, None, 5) is None

        rewrite_with_key(county.store, 4, '{"n": 0}')
        (again,) = list(county.store.audit.hash_batches())
        problem = audit.check_hashes("320102", again, 0, None, 5)
        assert problem is not None and (problem.seq, problem.what) == (4, REWRITTEN)
        # The city's own chain records the key it pinned and the anchor, and verifies.
        kinds = [e["kind"] for e in audit.entries(since=0)]
        assert kinds == ["audit.child_key", "audit.anchor"]
        assert verify_store(city.store).problem is None
        # An operator trusting the child afresh is evidenced too; anchors stay as history.
        assert audit.forget_child("320102", "operator")
        assert audit.child_state("320102") is None
        assert audit.entries(limit=1)[0]["kind"] == "audit.child_reset"
        assert audit.children() == []
    finally:
        city.store.close()


class _Stream(list[pb.AuditSegment]):
    """A GetAudit answer as the stub returns it (iterable, cancellable)."""

    def cancel(self) -> bool:
        return True


class _ChildStub:
    """The county's side of GetInfo and GetAudit, in process, with small segments (so a
    re-check spans several) and every GetAudit request kept."""

    def __init__(self, node: StoreNode, rows: int = 3) -> None:
        self.node = node
        self.rows = rows
        self.requests: list[tuple[int, bool]] = []

    def GetInfo(self, request: pb.GetInfoRequest, timeout: float = 0) -> pb.NodeInfo:
        audit = self.node.store.audit
        head = audit.head()
        return pb.NodeInfo(
            code=self.node.code,
            audit_head_seq=head.seq,
            audit_head_hash=head.hash,
            audit_public_key=audit.public_key(),
        )

    def GetAudit(self, request: pb.GetAuditRequest, timeout: float = 0) -> _Stream:
        self.requests.append((request.after_seq, request.hashes_only))
        audit = self.node.store.audit
        tables = (
            audit.hash_batches(request.after_seq, self.rows)
            if request.hashes_only
            else audit.batches(request.after_seq, self.rows)
        )
        return _Stream(pb.AuditSegment(arrow_ipc=encode_table(t), rows=t.num_rows) for t in tables)


@pytest.fixture
def city(tmp_path: Path) -> Iterator[StoreNode]:
    node = StoreNode(tmp_path, "320100", NAMES["320100"])
    yield node
    node.store.close()


def _auditor(city: StoreNode, recheck: float = 3600.0) -> ChildAuditor:
    return ChildAuditor("320102", "320100", city.store, recheck)


def _record(county: StoreNode, count: int) -> None:
    for i in range(count):
        county.store.audit.record("test.more", {"i": i})


def _kinds(city: StoreNode, kind: str) -> list[dict[str, Any]]:
    return [e for e in city.store.audit.entries(since=0) if e["kind"] == kind]


def test_anchors_fetch_only_what_is_new_and_recheck_hashes_only(
    county: StoreNode, city: StoreNode
) -> None:
    stub = _ChildStub(county)
    auditor = _auditor(city)
    auditor.run(stub)  # type: ignore[arg-type]
    # The first check after start: the new entries, then the whole chain, hashes only.
    assert stub.requests == [(0, False), (0, True)]
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is None
    assert (state.verified_seq, state.anchored_seq) == (5, 5)
    assert state.verified_hash == county.store.audit.head().hash
    assert state.full_checked_at is not None

    stub.requests.clear()
    auditor.run(stub)  # type: ignore[arg-type]
    assert stub.requests == []  # nothing new: GetInfo and one row, no fetch
    _record(county, 4)
    auditor.run(stub)  # type: ignore[arg-type]
    assert stub.requests == [(5, False)]  # from the verified-through point, not before it
    state = city.store.audit.child_state("320102")
    assert state is not None and (state.verified_seq, state.anchored_seq) == (9, 9)
    assert len(_kinds(city, "audit.anchor")) == 2
    assert city.store.audit.children()[0]["anchors"] == 2
    assert verify_store(city.store).problem is None


def test_a_rewrite_is_pinpointed_and_the_anchor_keeps_advancing(
    county: StoreNode, city: StoreNode
) -> None:
    stub = _ChildStub(county)
    auditor = _auditor(city)
    auditor.run(stub)  # type: ignore[arg-type]
    rewrite_with_key(county.store, 3, '{"n": 0}')
    _record(county, 2)  # entries 6 and 7 link to the rewritten chain
    stub.requests.clear()
    auditor.run(stub)  # type: ignore[arg-type]
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is not None
    assert state.problem.startswith("child 320102 rewrote its audit chain at seq 3: rewritten")
    # Pinpointed at once by a hashes-only re-check, and the point moved on past it.
    assert stub.requests == [(5, False), (0, True)]
    assert (state.verified_seq, state.anchored_seq) == (7, 7)

    _record(county, 3)
    stub.requests.clear()
    auditor.run(stub)  # type: ignore[arg-type]
    assert stub.requests == [(7, False)]  # not an ever-growing segment from the problem
    state = city.store.audit.child_state("320102")
    assert state is not None and state.verified_seq == 10 and state.problem is not None
    # The periodic re-check still finds it; recorded once, not every period.
    _auditor(city, recheck=0).run(stub)  # type: ignore[arg-type]
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is not None and "seq 3" in state.problem
    assert len(_kinds(city, "audit.child_problem")) == 1
    assert verify_store(city.store).problem is None


def test_an_entry_edited_without_rehashing_is_caught_in_hashes_only_mode(
    county: StoreNode, city: StoreNode
) -> None:
    stub = _ChildStub(county)
    _auditor(city).run(stub)  # type: ignore[arg-type]
    # Seq 3 ends a 3-entry segment: what follows it is read from the next segment.
    _sql(county.store, "UPDATE tongyuan.audit_chain SET detail = '{\"n\": 99}' WHERE seq = 3")
    (hashes, *_) = list(county.store.audit.hash_batches(0, 3))
    stored = county.store.audit.entries(since=2, limit=1)[0]["hash"]
    assert hashes.column("hash")[2].as_py() != stored  # recomputed, not as stored
    stub.requests.clear()
    _auditor(city).run(stub)  # type: ignore[arg-type]
    assert stub.requests == [(0, True)]  # the head did not move: hashes only
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is not None
    assert "at seq 3: content edited" in state.problem


def test_a_flaw_in_new_entries_outlives_a_hashes_only_recheck(
    county: StoreNode, city: StoreNode
) -> None:
    stub = _ChildStub(county)
    auditor = _auditor(city)
    auditor.run(stub)  # type: ignore[arg-type]
    _record(county, 2)
    (other,) = county.store.audit.entries(since=1, limit=1)
    _sql(
        county.store,
        "UPDATE tongyuan.audit_chain SET signature = ? WHERE seq = 7",
        [other["signature"]],
    )
    auditor.run(stub)  # type: ignore[arg-type]
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is not None
    assert "at seq 7: signature invalid" in state.problem
    assert state.verified_seq == 7
    # A re-check sees no signatures, but the flaw kept on seq 7 stays a problem.
    _auditor(city, recheck=0).run(stub)  # type: ignore[arg-type]
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is not None and "seq 7" in state.problem


def test_entries_cut_from_the_childs_chain_are_named(county: StoreNode, city: StoreNode) -> None:
    stub = _ChildStub(county)
    _auditor(city).run(stub)  # type: ignore[arg-type]
    _sql(county.store, "DELETE FROM tongyuan.audit_chain WHERE seq >= 4")
    (row,) = county.store.audit.entries(since=2, limit=1)
    _sql(county.store, "UPDATE tongyuan.audit_head SET seq = 3, hash = ?", [row["hash"]])
    _auditor(city).run(stub)  # type: ignore[arg-type]
    state = city.store.audit.child_state("320102")
    assert state is not None and state.problem is not None
    assert "at seq 4: entries removed" in state.problem
    assert state.verified_seq == 5  # held: the child's shorter chain is not trusted


def test_an_applied_batch_is_recorded_in_the_same_transaction(tmp_path: Path) -> None:
    county = StoreNode(tmp_path, "320102", NAMES["320102"])
    city = StoreNode(tmp_path, "320100", NAMES["320100"])
    try:
        county.register("320102-p", ["id_number", "name"])
        county.ingest("320102-p", [{"id_number": "110101199003070012", "name": "张三"}])
        city.pull(county)
        (entry,) = city.store.audit.entries(kind="batch")
        detail = json.loads(entry["detail"])
        assert entry["kind"] == "batch.applied" and entry["actor"] == "320102"
        assert detail["child"] == "320102" and detail["rows_applied"] >= 1
        assert detail["last_seq"] == county.store.head_seq and len(detail["digest"]) == 64
        # A redelivery applies nothing and records nothing.
        link = city.store.link("320102")
        assert link is not None
        city.pull(county)
        assert len(city.store.audit.entries(kind="batch")) == 1
    finally:
        county.store.close()
        city.store.close()


def test_operations_record_who_did_what_and_dry_runs_nothing() -> None:
    entry = operation_entry(
        "catalog.add",
        {"entries": [{"code": "320102-p", "fields": ["x"] * 3}], "actor": "li", "publish": True},
        [{"code": "320102-p", "status": "published"}],
        _no_key,
    )
    assert entry is not None
    kind, detail = entry
    assert kind == "catalog.add" and detail["args"]["entries"] == ["320102-p"]
    assert "actor" not in detail["args"] and detail["result"] == ["320102-p"]
    assert operation_entry("model.adopt", {"dry_run": True}, {}, _no_key) is None
    assert operation_entry("catalog.list", {}, [], _no_key) is None


def _no_key() -> bytes:
    raise AssertionError("nothing here needs the federation key")


class _Context:
    """Enough of a gRPC servicer context for a delivery handled in process."""

    def is_active(self) -> bool:
        return True

    def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"delivery refused: {code} {details}")


def _deliver_everything(city: StoreNode, county: StoreNode) -> None:
    """What the city's link delivers to its county, handed to the county's servicer."""
    servicer = FederationServicer(
        county.config, county.store, threading.Event(), QualityReporter(county.config, county.store)
    )
    context: Any = _Context()
    standards_digest, items = city.store.catalog.downward_set()
    servicer.DeliverStandards(
        pb.StandardsDelivery(
            parent_code=city.code,
            digest=standards_digest,
            items=[standard_to_message(i) for i in items],
        ),
        context,
    )
    model, mapping = city.store.model, NodeMapping()
    servicer.DeliverModel(
        pb.ModelDelivery(
            parent_code=city.code,
            model_json=model.to_json(),
            mapping_json="{}",
            digest=delivery_digest(model, mapping),
        ),
        context,
    )
    rules_digest, library_json = city.store.quality.downward_library()
    servicer.DeliverRules(
        pb.RulesDelivery(parent_code=city.code, library_json=library_json, digest=rules_digest),
        context,
    )
    for downward, deliver, message in (
        (city.store.sources.downward_set, servicer.DeliverDiscrepancies, pb.DiscrepancyDelivery),
        (city.store.feedback.downward_set, servicer.DeliverFeedback, pb.FeedbackDelivery),
    ):
        digest, table = downward(county.code)
        deliver(
            message(
                parent_code=city.code,
                arrow_ipc=encode_table(table),
                rows=table.num_rows,
                digest=digest,
            ),
            context,
        )


def test_deliveries_received_are_evidenced_once_per_change(
    county: StoreNode, city: StoreNode
) -> None:
    _deliver_everything(city, county)
    received = county.store.audit.entries(kind="delivery")
    details = [json.loads(e["detail"]) for e in received]
    assert sorted(d["set"] for d in details) == [
        "discrepancies", "feedback", "model", "rules", "standards",
    ]  # fmt: skip
    assert all(e["kind"] == "delivery.received" and e["actor"] == city.code for e in received)
    assert all(d["parent"] == city.code and d["digest"] and "rows" in d for d in details)
    model = next(d for d in details if d["set"] == "model")
    assert model["rows"] == len(city.store.model.entities)
    # An identical redelivery changes nothing and records nothing.
    _deliver_everything(city, county)
    assert len(county.store.audit.entries(kind="delivery")) == 5
    assert verify_store(county.store).problem is None


def test_a_received_set_commits_with_its_evidence(county: StoreNode) -> None:
    def failing(cur: Any) -> None:
        county.store.audit.record("delivery.received", {"set": "standards"}, cur=cur)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        county.store.catalog.replace_received("320100", [], "abc", failing)
    assert county.store.catalog.received_digest("320100") == ""
    assert county.store.audit.entries(kind="delivery") == []


def test_audit_entries_carry_no_record_values_or_keys() -> None:
    """Entries travel to the parent and into exports: a correction's value, an objection's
    key and free text that may quote a record are never in them in clear, nor as a plain
    SHA-256 (an ID number's ~1e11 candidates are hashed in minutes): as their pseudonym
    under the federation key."""
    id_number = "110101199003070012"
    federation_key = bytes(range(32))

    def key() -> bytes:
        return federation_key

    entries = [
        operation_entry(
            "discrepancies.resolve",
            {"discrepancy_id": "d1", "value": id_number, "note": f"was {id_number}", "actor": "li"},
            {"id": "d1", "action": "corrected", "value": id_number, "resource": "320102-p"},
            key,
        ),
        operation_entry(
            "objection.raise",
            {"resource": "320102-p", "key": id_number, "reason": f"{id_number} 重复"},
            {"id": "f1", "state": "open", "key": id_number},
            key,
        ),
        operation_entry(
            "feedback.respond",
            {"item_id": "f1", "state": "rejected", "note": id_number},
            {"id": "f1", "state": "rejected", "key": id_number, "value": id_number},
            key,
        ),
        operation_entry("quality.quarantine_release", {"ids": ["q1"]}, {"released": 1}, key),
        operation_entry("quality.quarantine_drop", {"ids": ["q2"]}, {"dropped": 1}, key),
    ]
    unkeyed = hashlib.sha256(id_number.encode()).hexdigest()
    for entry in entries:
        assert entry is not None
        assert id_number not in json.dumps(entry, ensure_ascii=False)
        assert unkeyed not in json.dumps(entry, ensure_ascii=False)
    resolve = entries[0]
    assert resolve is not None
    assert resolve[1]["args"]["value_given"] is True and "value" not in resolve[1]["args"]
    assert resolve[1]["result"] == {"id": "d1", "action": "corrected", "resource": "320102-p"}
    objection = entries[1]
    assert objection is not None
    assert objection[1]["args"]["key_pseudonym"] == pseudonym(id_number, federation_key)
    reason = pseudonym(f"{id_number} 重复", federation_key)
    assert objection[1]["args"]["reason_pseudonym"] == reason
    assert "key_sha256" not in objection[1]["args"]
