"""Return flows (数据回流) on real node processes: 秦淮区 (320104) asks 南京市 for the city's
people of its own division; the city approves; the slice flows down, stays in step with
the city's changes and never carries a row outside the filter; it is the county's to read
only, never in its change log; a window widened beyond the grant is refused with nothing
applied; on expiry and on revocation the county's copy is purged by its scheduler and
the purge recorded, and later deliveries are refused."""

from __future__ import annotations

import csv
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from conftest import Cluster, Node, wait_until

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.client import open_node
from node.wire import encode_table

COLUMNS = ["id_number", "name", "sex", "birth_date", "phone", "address", "division_code"]
WANG = ["320104198505050011", "王五", "1", "1985-05-05", "13800000003", "秦淮区3号", "320104"]
ZHAO = ["320104199202020022", "赵六", "2", "1992-02-02", "13800000004", "秦淮区4号", "320104"]
ZHANG = ["320102199001011234", "张三", "1", "1990-01-01", "13800000001", "玄武区1号", "320102"]
QIAN = ["320104200001010033", "钱七", "1", "2000-01-01", "13800000005", "秦淮区5号", "320104"]


def write_people(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def grants(node: Node) -> dict[str, dict[str, Any]]:
    """Every grant the node knows (requested or given), through its admin API."""
    api = open_node(node.directory, write=False)
    try:
        return {g["id"]: g for g in api.call("grant.list", {})}
    finally:
        api.close()


def returned(node: Node) -> set[tuple[str, str, str]]:
    """(id_number, name, grant) of the county's returned people."""
    rows = node.fetch("SELECT id_number, name, grant_id FROM returned_person")
    return {(r["id_number"], r["name"], r["grant_id"]) for r in rows}


def keys(node: Node) -> set[str]:
    return {key for key, _, _ in returned(node)}


def has_returned_table(node: Node) -> bool:
    tables = node.fetch(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'returned_person'"
    )
    return bool(tables[0]["n"])


def deliver(node: Node, parent: str, grant_id: str, after: int, rows: list[list[str]]) -> None:
    """A DeliverReturn call to `node` as if from `parent`, carrying `rows` of person."""
    columns = {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS)}
    table = pa.table(
        {
            "id_number": columns["id_number"],
            "name": columns["name"],
            "division_code": columns["division_code"],
            "_deleted": [False] * len(rows),
            "origin_node": [parent] * len(rows),
            "origin_seq": [1] * len(rows),
            "origin_resource": [f"{parent}-person-1"] * len(rows),
        }
    )
    with node.channel() as channel:
        pb_grpc.FederationStub(channel).DeliverReturn(
            pb.ReturnDelivery(
                parent_code=parent,
                grant_id=grant_id,
                after_seq=after,
                last_seq=after + 1,
                entity="person",
                arrow_ipc=encode_table(table),
                rows=table.num_rows,
            ),
            timeout=10,
        )


def test_a_granted_slice_flows_down_stays_in_step_and_is_purged_on_expiry_and_revocation(
    cluster: Cluster, tmp_path: Path
) -> None:
    city, county = (
        cluster.node(code, name, init=False)
        for code, name in (("320100", "nanjing"), ("320104", "qinhuai"))
    )
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda node: node.init(), (city, county)))
        for node in (city, county):
            node.configure("sync", grant_check_seconds=0.3)
        list(pool.map(lambda node: node.start(wait=False), (city, county)))
        for node in (city, county):
            node.wait_serving()
        attached = pool.submit(city.cli, "children", "add", county.code, county.address)
        resource = city.resource("person")
        attached.result()
    city.ingest(resource, write_people(tmp_path / "people.csv", [WANG, ZHAO, ZHANG]))
    wait_until(lambda: bool(county.fetch_status()["parents"]), what="the city pulling the county")

    # The county asks for two slices: its division's people for an hour, and one person's
    # record, which the city will grant for a few seconds only.
    made = json.loads(
        county.cli(
            "grant", "request", resource, "--filter", "division_code=320104",
            "--purpose", "低保资格核查", "--expires", "1h", "--by", "秦淮民政", "--json",
        ).stdout
    )  # fmt: skip
    brief = json.loads(
        county.cli(
            "grant", "request", resource, "--filter", "name=赵六", "--filter",
            "division_code=320104", "--purpose", "个案核查", "--expires", "1h", "--json",
        ).stdout
    )  # fmt: skip
    assert made["state"] == "pending" and made["peer"] == city.code
    wait_until(
        lambda: {made["id"], brief["id"]} <= set(grants(city)), what="the requests at the city"
    )
    at_city = grants(city)[made["id"]]
    assert at_city == at_city | {
        "side": "given",
        "peer": county.code,
        "resource": resource,
        "entity": "person",
        "filter": "division_code=320104",
        "purpose": "低保资格核查",
        "state": "pending",
        "requested_by": "秦淮民政",
    }
    city.cli("grant", "approve", made["id"], "--by", "市大数据局")
    city.cli("grant", "approve", brief["id"], "--expires", "8s")

    # The slices flow down: the county's people only, never 张三 of 玄武区.
    wait_until(
        lambda: has_returned_table(county) and len(returned(county)) == 3,
        what="the slices at the county",
    )
    assert returned(county) == {
        (WANG[0], "王五", made["id"]),
        (ZHAO[0], "赵六", made["id"]),
        (ZHAO[0], "赵六", brief["id"]),
    }

    # A later change at the city reaches the county; 张三's change does not.
    changed_zhang = [*ZHANG[:5], "玄武区9号", ZHANG[6]]
    city.ingest(resource, write_people(tmp_path / "more.csv", [WANG, ZHAO, changed_zhang, QIAN]))
    wait_until(lambda: QIAN[0] in keys(county), what="钱七 at the county")
    assert ZHANG[0] not in keys(county)
    assert "grants: 2 held (4 rows returned, 0 requested), 0 given" in county.cli("status").stdout
    assert city.fetch_status()["grants"]["given"] == 2

    # Returned rows are the county's to read only, and never its own data: not in its
    # tables or change log, so they never travel back up.
    refused = county.cli("query", "DELETE FROM returned_person", check=False)
    assert refused.returncode == 1 and "only read-only SELECT" in refused.stderr
    assert county.fetch("SELECT count(*) AS n FROM person") == [{"n": 0}]
    assert county.fetch_status()["head_seq"] == 0
    assert city.fetch("SELECT count(*) AS n FROM person WHERE origin_node = '320104'") == [{"n": 0}]

    # A window that widens the grant (张三 of 玄武区 slipped in) is refused whole.
    checkpoint = grants(county)[made["id"]]["checkpoint"]
    with pytest.raises(grpc.RpcError) as widened:
        deliver(county, city.code, made["id"], checkpoint, [QIAN, ZHANG])
    assert widened.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "outside the grant" in (widened.value.details() or "")
    assert ZHANG[0] not in keys(county)
    assert grants(county)[made["id"]]["checkpoint"] == checkpoint

    # The brief grant expires: the county's scheduler purges its copy and records it.
    def purged(grant_id: str, why: str) -> bool:
        return grants(county)[grant_id]["state"] == f"purged ({why})"

    wait_until(lambda: purged(brief["id"], "expired"), timeout=30, what="the expiry purge")
    mine = grants(county)[brief["id"]]
    assert mine["rows_purged"] == 1 and mine["purged_at"]
    assert returned(county) == {  # the other grant's rows stay
        (WANG[0], "王五", made["id"]),
        (ZHAO[0], "赵六", made["id"]),
        (QIAN[0], "钱七", made["id"]),
    }
    wait_until(lambda: grants(city)[brief["id"]]["state"] == "expired", what="expired at city")

    # Revocation: purged at once, without waiting for the expiry.
    revoked_at = time.monotonic()
    city.cli("grant", "revoke", made["id"], "--reason", "核查结束")
    wait_until(lambda: purged(made["id"], "revoked"), what="the revocation purge")
    assert time.monotonic() - revoked_at < 20
    assert returned(county) == set()
    assert grants(county)[made["id"]]["reason"] == "核查结束"

    # Further deliveries are refused: the city sends nothing more, and the county
    # refuses a window for an ended grant.
    with pytest.raises(grpc.RpcError) as ended:
        deliver(county, city.code, made["id"], 0, [QIAN])
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert returned(county) == set()

    # The city evidences what it sent: one entry per round per grant that carried rows.
    sent = city.fetch("SELECT detail FROM tongyuan.audit_chain WHERE kind = 'return.sent'")
    details = [json.loads(r["detail"]) for r in sent]
    assert {d["grant"] for d in details} == {made["id"], brief["id"]}
    assert all(d["child"] == county.code and d["rows"] + d["departures"] for d in details)
    audit = [r["kind"] for r in county.fetch("SELECT kind FROM tongyuan.audit_chain")]
    for kind in ("grant.requested", "grant.approved", "return.applied", "grant.expired"):
        assert kind in audit
    assert audit.count("grant.purged") == 2 and "grant.revoked" in audit
    listed = county.cli("grant", "list").stdout
    assert "purged (expired)" in listed and "purged (revoked)" in listed
    assert county.fetch_status()["grants"] | {"next_expiry": None} == {
        "held": 0,
        "requested": 0,
        "given": 0,
        "to_decide": 0,
        "rows_returned": 0,
        "next_expiry": None,
    }
