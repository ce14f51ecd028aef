"""The audit chain between real node processes (one pair, to keep it quick): a city
anchors its county's chain; a chain rewritten with the county's own key (which verifies
locally) is caught by the city; an entry edited in the county's store file is caught by
`audit verify` at the county and by the city's re-check; an edited export is caught
offline; GetAudit answers only a node above. The anchors' logic in detail (what is
fetched when, hashes-only re-checks, findings kept) is in test_audit_store.py."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pyarrow.csv as pacsv
import pytest
from conftest import Cluster, Node, wait_until

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.client import open_node
from node.demo_data import fake_people
from node.security.audit import verify_file
from node.store.audit import entry_hash, load_signing_key

COUNTY, CITY = "320102", "320100"


def _audit(node: Node) -> dict[str, Any]:
    return dict(node.fetch_status()["audit"])


def _call(node: Node, method: str, **args: Any) -> Any:
    """A named operation through the node's own client in-process (faster than the CLI)."""
    api = open_node(node.directory, write=False)
    try:
        return api.call(method, args)
    finally:
        api.close()


def _child_audit(city: Node) -> dict[str, Any]:
    return next((c for c in _audit(city)["children"] if c["child"] == COUNTY), {})


def _linked(cluster: Cluster, tmp_path: Path) -> tuple[Node, Node]:
    """A city pulling a county that imported people, with the county's chain anchored; the
    city re-checks the whole chain (hashes only) every second."""
    city = cluster.node(CITY, "city")
    city.configure("sync", audit_anchor_seconds=0.3, audit_recheck_seconds=1.0)
    county = cluster.node(COUNTY, "xuanwu")
    city.start()
    county.start()
    city.cli("children", "add", county.code, county.address)
    people = tmp_path / "people.csv"
    pacsv.write_csv(fake_people(COUNTY, 50, seed=3), people)
    county.ingest("person", people)
    wait_until(
        lambda: len(city.fetch("SELECT id_number FROM person")) == 50, what="50 people at the city"
    )
    wait_until(
        lambda: _child_audit(city).get("anchored_seq") == _audit(county)["head_seq"],
        what="the county's head anchored",
    )
    return city, county


def _metric(node: Node, name: str, child: str) -> float | None:
    address = json.loads((node.directory / "run" / "http.json").read_text())["address"]
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{child="{child}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def _rewrite_with_key(county: Node, seq: int) -> None:
    """Edit entry `seq` in the stopped county's store file, then re-hash and re-sign it and
    every later entry with the county's own key: its chain verifies locally afterwards."""
    key = load_signing_key(county.directory / "security")
    with duckdb.connect(str(county.directory / "store.duckdb")) as db:
        rows = db.execute(
            "SELECT seq, recorded_at, node, kind, actor, detail, prev_hash FROM "
            "tongyuan.audit_chain WHERE seq >= ? ORDER BY seq",
            [seq],
        ).fetchall()
        prev = rows[0][6]
        for s, at, node, kind, actor, detail, _ in rows:
            if s == seq:
                detail = detail.replace('"rows_read": 50', '"rows_read": 5')
            digest = entry_hash(s, at, node, kind, actor, detail, prev)
            db.execute(
                "UPDATE tongyuan.audit_chain SET detail = ?, prev_hash = ?, hash = ?, "
                "signature = ? WHERE seq = ?",
                [detail, prev, digest, key.sign(digest.encode()).hex(), s],
            )
            prev = digest
        db.execute("UPDATE tongyuan.audit_head SET hash = ?", [prev])


def _ingest_seq(county: Node) -> int:
    entries = _call(county, "audit.show", kind="ingest")
    assert len(entries) == 1 and json.loads(entries[0]["detail"])["rows_read"] == 50
    return int(entries[0]["seq"])


def _problem(city: Node) -> str:
    problems = _audit(city)["problems"]
    return str(problems[0]["problem"]) if len(problems) == 1 else ""


def test_a_rewritten_or_edited_county_chain_is_caught_by_the_citys_anchor(
    cluster: Cluster, tmp_path: Path
) -> None:
    """One pair of nodes, two tamperings: a chain re-hashed and re-signed with the county's
    own key (verifies locally, caught only by the city), then an entry edited without
    re-hashing (caught by `audit verify` at the county and by the city's re-check)."""
    city, county = _linked(cluster, tmp_path)
    seq = _ingest_seq(county)
    # Only a node above may read the chain.
    with grpc.insecure_channel(county.address) as channel:
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.GetAudit(pb.GetAuditRequest(caller_code="320104"), timeout=5))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    applied = _call(city, "audit.show", kind="batch")
    assert applied and json.loads(applied[-1]["detail"])["child"] == COUNTY
    kinds = {e["kind"] for e in _call(city, "audit.show")}
    assert {"children.add", "audit.child_key", "audit.anchor", "batch.applied"} <= kinds
    shown = {e["kind"] for e in _call(county, "audit.show")}
    assert {"catalog.add", "ingest"} <= shown
    county.stop()

    # What the county served, evidenced once when the session ended (not per window).
    served = _call(county, "audit.show", kind="batch.served")
    assert served and json.loads(served[-1]["detail"])["parent"] == CITY
    # An export verifies offline; an edited one does not.
    export = tmp_path / "county-audit.jsonl"
    _call(county, "audit.export", path=str(export))
    assert verify_file(export).problem is None
    lines = export.read_text(encoding="utf-8").splitlines()
    lines[seq] = lines[seq].replace('rows_read\\": 50', 'rows_read\\": 5')
    assert lines != export.read_text(encoding="utf-8").splitlines()
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    caught = county.cli("audit", "verify", "--file", str(export), check=False)
    assert caught.returncode == 1 and f"seq {seq}: content edited" in caught.stderr

    # Re-hashed and re-signed with the county's key: locally nothing shows.
    _rewrite_with_key(county, seq)
    assert _call(county, "audit.verify")["intact"]
    county.start()
    wait_until(lambda: bool(_problem(city)), what="the city to catch the rewrite")
    problem = _problem(city)
    assert problem.startswith(f"child {COUNTY} rewrote its audit chain at seq {seq}")
    assert "rewritten" in problem
    assert f"AUDIT: child {COUNTY} rewrote its audit chain" in city.cli("status").stdout
    assert _metric(city, "tongyuan_audit_child_problem", COUNTY) == 1
    assert "rewrote its audit chain" in city.log()
    # The city's own chain holds the finding, and still verifies.
    found = _call(city, "audit.show", kind="audit")
    assert "audit.child_problem" in [e["kind"] for e in found]
    assert _call(city, "audit.verify")["intact"]
    county.stop()

    # An earlier entry edited in the county's store file, its hash left as it was.
    edited = seq - 1
    with duckdb.connect(str(county.directory / "store.duckdb")) as db:
        db.execute("UPDATE tongyuan.audit_chain SET detail = detail || ' ' WHERE seq = ?", [edited])
    broken = _call(county, "audit.verify")
    assert not broken["intact"]
    assert broken["problem"]["message"].startswith(f"seq {edited}: content edited")
    county.start()
    wait_until(
        lambda: f"at seq {edited}: content edited" in _problem(city),
        what="the city to catch the edit",
    )
    assert _problem(city).startswith(f"child {COUNTY} rewrote its audit chain at seq {edited}")
    # Data keeps flowing: the audit is evidence about the link, not a gate on it.
    more = tmp_path / "more.csv"
    pacsv.write_csv(fake_people(COUNTY, 10, seed=4), more)
    county.ingest("person", more)
    wait_until(
        lambda: len(city.fetch("SELECT id_number FROM person")) == 60, what="60 people at the city"
    )
