"""Grants and return flows in the store, in-process on real DuckDB files: filters compiled
to SQL (quoted, checked), the slice a city sends a county and keeps in step, the county's
refusal of a window outside its grant (nothing applied), of a grant set it never asked
for, of deliveries once a grant ended, and the purge.

Documents and windows travel as the link and the servicer carry them: requests as JSON
with their digest, grants likewise, windows through the Arrow IPC encoding."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from stores import NAMES, StoreNode, closing_all

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node.client import LocalNode, open_node
from node.config import Child
from node.errors import UserError
from node.federation import links
from node.federation.links import ChildLink
from node.federation.servicer import MAX_WINDOW_BYTES
from node.security.grants import GrantService, check_request, parse_expiry, parse_filters
from node.security.identity import Security, SecurityMode
from node.store.grants import (
    GrantFilter,
    ReturnRefused,
    check_filters,
    digest_of,
    filter_sql,
)
from node.store.outbound import pseudonym
from node.wire import decode_table

QINHUAI, XUANWU, NANJING = "320104", "320102", "320100"
FIELDS = ["id_number", "name", "division_code"]
# Two people of 秦淮区 (320104) and one of 玄武区 (320102), held at the city.
PEOPLE = [
    {"id_number": "320104198505050011", "name": "王五", "division_code": "320104"},
    {"id_number": "320104199202020022", "name": "赵六", "division_code": "320104"},
    {"id_number": "320102199001011234", "name": "张三", "division_code": "320102"},
]


class Node(StoreNode):
    def __init__(self, base: Path, code: str) -> None:
        super().__init__(base, code, NAMES[code])
        self.grants = GrantService(self.config, self.store)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    yield from closing_all({code: Node(tmp_path, code) for code in (NANJING, QINHUAI)})


def city_with_people(nodes: dict[str, Node]) -> tuple[Node, Node, str]:
    city, county = nodes[NANJING], nodes[QINHUAI]
    resource = f"{NANJING}-GA-001"
    city.register(resource, FIELDS, name="全市人口")
    city.ingest(resource, PEOPLE)
    county.store.record_parent_ack(NANJING, 0)  # the city has pulled: it is the parent
    return city, county, resource


def pull_requests(city: Node, county: Node) -> tuple[int, list[str]]:
    requests_json, digest = county.store.grants.requests_document(city.code)
    return city.store.grants.receive_requests(
        county.code, requests_json, digest, partial(check_request, city.store, county.code)
    )


def deliver_grants(city: Node, county: Node) -> None:
    digest, grants_json = city.store.grants.downward_set(county.code)
    county.store.grants.receive_grants(city.code, grants_json, digest)


def send_windows(
    city: Node, county: Node, max_changes: int = 2, max_bytes: int = MAX_WINDOW_BYTES
) -> list[pa.Table]:
    """Every window of every grant in force, from the county's checkpoints, as the return
    worker sends them (noted before, confirmed after the county's receipt); the tables
    as the county decoded them."""
    held = dict(county.store.grants.return_checkpoints(city.code))
    sent = []
    grants = city.store.grants
    for grant in grants.active_for(county.code):
        at = held.get(grant["id"], 0)
        while (found := grants.next_window(grant, at, max_changes, max_bytes)) is not None:
            window, payload = found
            grants.note_sending(window)
            table = decode_table(payload)
            at, _ = county.store.grants.apply_return(
                city.code, grant["id"], window.entity, window.after_seq, window.last_seq, table
            )
            grants.confirm_return(window, at)
            sent.append(table)
    return sent


def send_returns(city: Node, county: Node) -> int:
    """`send_windows`: the live rows sent (departures not counted)."""
    tables = send_windows(city, county)
    return sum(t.column("_deleted").to_pylist().count(False) for t in tables)


def sent_keys(city: Node) -> set[tuple[str, str]]:
    """(origin node, key as sent) the city notes as delivered, over all grants."""
    rows = city.rows("SELECT origin_node, sent_key FROM tongyuan.grant_sent")
    return {(r["origin_node"], r["sent_key"]) for r in rows}


def returned(county: Node) -> dict[str, str]:
    rows = county.rows("SELECT id_number, name FROM returned_person ORDER BY id_number")
    return {r["id_number"]: r["name"] for r in rows}


def granted(nodes: dict[str, Node], **request: str) -> tuple[Node, Node, str, str]:
    """The county asks for the city's people of 秦淮区; the city approves."""
    city, county, resource = city_with_people(nodes)
    made = county.grants.request(
        resource,
        [request.get("filter", "division_code=320104")],
        "低保资格核查",
        request.get("expires", "1h"),
        actor="秦淮民政",
    )
    assert pull_requests(city, county) == (1, [])
    city.grants.approve(made["id"], actor="市大数据局")
    deliver_grants(city, county)
    return city, county, resource, made["id"]


# ----- filters ------------------------------------------------------------------------------


def test_filters_compile_to_quoted_sql_and_unknown_attributes_are_refused(
    nodes: dict[str, Node],
) -> None:
    city, _, _ = city_with_people(nodes)
    person = city.store.entities["person"]

    def matching(*texts: str) -> list[str]:
        condition = filter_sql(person, parse_filters(texts))
        rows = city.rows(f"SELECT id_number FROM person WHERE {condition} ORDER BY id_number")
        return [r["id_number"] for r in rows]

    assert matching("division_code=320104") == [PEOPLE[0]["id_number"], PEOPLE[1]["id_number"]]
    assert matching("division_code=320104", "name=赵六") == [PEOPLE[1]["id_number"]]
    assert matching("origin_node=320100", "name=张三") == [PEOPLE[2]["id_number"]]
    # A value is a literal, never SQL: quotes are doubled, so this matches nothing.
    assert matching("name=x' OR '1'='1") == []
    assert "'x'' OR ''1''=''1'" in filter_sql(person, [GrantFilter("name", "x' OR '1'='1")])
    assert "'O''Brien'" in filter_sql(person, [GrantFilter("name", "O'Brien")])
    # Typed attributes compare as their type; a value the type cannot hold is refused.
    assert "CAST('1990-01-01' AS DATE)" in filter_sql(
        person, [GrantFilter("birth_date", "1990-01-01")]
    )
    for bad, message in (
        (GrantFilter("salary", "1"), "not an attribute of person"),
        (GrantFilter('name" OR true --', "1"), "not an attribute of person"),
        (GrantFilter("origin_seq", "1"), "not an attribute of person"),
        (GrantFilter("birth_date", "yesterday"), "not a value of type date"),
        (GrantFilter("name", "a\x00b"), "NUL"),
    ):
        with pytest.raises(UserError, match=message):
            filter_sql(person, [bad])
    with pytest.raises(UserError, match="given twice"):
        check_filters(person, [GrantFilter("name", "a"), GrantFilter("name", "b")])
    with pytest.raises(UserError, match="at least one filter"):
        check_filters(person, [])
    with pytest.raises(UserError, match="ATTRIBUTE=VALUE"):
        parse_filters(["division_code"])


def test_expiries_parse_as_durations_dates_and_times() -> None:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_expiry("90s", now) == now + timedelta(seconds=90)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("2026-06-30", now) == datetime(2026, 7, 1, tzinfo=UTC)
    assert parse_expiry("2026-06-01T23:00:00+08:00", now) == datetime(2026, 6, 1, 15, tzinfo=UTC)
    for past in ("2026-05-01", "0s"):
        with pytest.raises(UserError, match="not in the future"):
            parse_expiry(past, now)
    with pytest.raises(UserError, match="give a duration"):
        parse_expiry("soon", now)


# ----- the slice, in step --------------------------------------------------------------------


def test_an_approved_slice_flows_down_and_stays_in_step(nodes: dict[str, Node]) -> None:
    city, county, resource, grant_id = granted(nodes)
    assert send_returns(city, county) == 2
    assert returned(county) == {PEOPLE[0]["id_number"]: "王五", PEOPLE[1]["id_number"]: "赵六"}
    rows = county.rows("SELECT origin_node, origin_resource, grant_id FROM returned_person")
    assert {(r["origin_node"], r["origin_resource"], r["grant_id"]) for r in rows} == {
        (NANJING, resource, grant_id)
    }

    # At the city: 赵六 renamed, a newcomer of 秦淮区, 王五 moves to 玄武区 (leaves the slice),
    # and 张三 changes (outside the slice: never sent).
    moved = {**PEOPLE[0], "division_code": "320102"}
    city.ingest(
        resource,
        [
            moved,
            {**PEOPLE[1], "name": "赵六六"},
            {**PEOPLE[2], "name": "张三丰"},
            {"id_number": "320104200001010033", "name": "钱七", "division_code": "320104"},
        ],
    )
    send_returns(city, county)
    assert returned(county) == {PEOPLE[1]["id_number"]: "赵六六", "320104200001010033": "钱七"}

    # A delete at the city reaches the county as a departure (its key as sent, no more).
    city.ingest(resource, [moved, PEOPLE[2]], snapshot=True)
    send_returns(city, county)
    assert returned(county) == {}

    # Returned rows are not the county's data: nothing in its change log or its tables.
    assert county.rows("SELECT count(*) AS n FROM person") == [{"n": 0}]
    assert county.store.read_window(0, 10_000).tables.get("person") is None
    (mine,) = [g for g in county.grants.list() if g["id"] == grant_id]
    assert mine["state"] == "approved" and mine["checkpoint"] == city.store.head_seq


def test_departures_name_only_keys_the_child_held_in_the_form_it_holds_them(
    nodes: dict[str, Node],
) -> None:
    city, county, resource, _grant_id = granted(nodes)
    (first,) = send_windows(city, county, max_changes=10_000)
    # The first window carries 秦淮区's people and nothing else: 张三 of 玄武区 was never
    # the county's, so nothing of him leaves (no departure, no hash).
    assert first.column("_deleted").to_pylist() == [False, False]
    assert PEOPLE[2]["id_number"] not in str(first.to_pylist())
    assert sent_keys(city) == {(NANJING, p["id_number"]) for p in PEOPLE[:2]}

    # Changes and a delete outside the slice: nothing at all leaves for them.
    city.ingest(resource, [{**PEOPLE[2], "name": "张三丰"}])
    city.ingest(resource, PEOPLE[:2], snapshot=True)  # 张三 deleted
    assert [t.num_rows for t in send_windows(city, county, max_changes=10_000)] == [0]

    # 王五 moves to 玄武区: a departure with his key as sent, every other column NULL.
    city.ingest(resource, [{**PEOPLE[0], "division_code": "320102"}, PEOPLE[1]])
    (window,) = send_windows(city, county, max_changes=10_000)
    (gone,) = window.to_pylist()
    assert gone["_deleted"] is True
    assert gone["id_number"] == PEOPLE[0]["id_number"] and gone["origin_node"] == NANJING
    assert {k for k, v in gone.items() if v is not None} == {
        "id_number",
        "_deleted",
        "origin_node",
    }
    assert returned(county) == {PEOPLE[1]["id_number"]: "赵六"}
    assert sent_keys(city) == {(NANJING, PEOPLE[1]["id_number"])}  # confirmed: dropped

    # A receipt the city never saw: the departure stays noted and is sent again (the
    # county, holding it no more, is unchanged by it).
    city.ingest(resource, [PEOPLE[0], PEOPLE[1]], snapshot=True)  # 王五 back in 秦淮区
    send_windows(city, county)
    city.ingest(resource, [PEOPLE[1]], snapshot=True)  # 王五 deleted
    (grant,) = city.store.grants.active_for(county.code)
    checkpoint = dict(county.store.grants.return_checkpoints(city.code))[grant["id"]]
    found = city.store.grants.next_window(grant, checkpoint, 10_000, MAX_WINDOW_BYTES)
    assert found is not None
    lost, payload = found
    city.store.grants.note_sending(lost)
    county.store.grants.apply_return(
        city.code, grant["id"], "person", lost.after_seq, lost.last_seq, decode_table(payload)
    )
    assert returned(county) == {PEOPLE[1]["id_number"]: "赵六"}
    assert (NANJING, PEOPLE[0]["id_number"]) in sent_keys(city)  # not confirmed
    again = city.store.grants.read_return(grant, checkpoint, 10_000)
    assert again is not None and again.departures == 1
    county.store.grants.apply_return(
        city.code, grant["id"], "person", again.after_seq, again.last_seq, again.table
    )
    city.store.grants.confirm_return(again, again.last_seq)
    assert sent_keys(city) == {(NANJING, PEOPLE[1]["id_number"])}
    assert returned(county) == {PEOPLE[1]["id_number"]: "赵六"}


def grant_conditional_people(
    city: Any, county: Any, id_grade: str
) -> tuple[str, dict[str, Any], str]:
    """The city publishes a conditional people resource (ID numbers graded `id_grade`),
    imports PEOPLE into it, and grants the county its division's records; returns the
    resource code, its catalogue entry and the grant's id."""
    resource = f"{NANJING}-GA-002"
    entry: dict[str, Any] = {
        "code": resource,
        "name": "全市户籍人口",
        "summary": "人口",
        "department": "公安局",
        "entity": "person",
        "update_frequency": "daily",
        "sharing": "conditional",
        "sharing_conditions": "仅限政务部门履职使用",
        "fields": [
            {"name": "id_number", "sensitivity": id_grade},
            {"name": "name", "sensitivity": "general"},
            {"name": "division_code"},
        ],
    }
    city.catalog.add([entry], "people.toml", "tester", publish=True)
    city.ingest(resource, PEOPLE)
    county.store.record_parent_ack(NANJING, 0)
    made = county.grants.request(resource, ["division_code=320104"], "低保资格核查", "1h")
    assert pull_requests(city, county) == (1, [])
    city.grants.approve(made["id"], actor="市大数据局")
    deliver_grants(city, county)
    return resource, entry, made["id"]


def test_departures_of_pseudonymised_keys_match_at_the_child(nodes: dict[str, Node]) -> None:
    """A conditional resource whose key is graded core leaves pseudonymised; a record
    leaving the slice departs under the pseudonym the county holds."""
    city, county = nodes[NANJING], nodes[QINHUAI]
    resource, _, _ = grant_conditional_people(city, county, id_grade="core")

    tables = send_windows(city, county)
    held = returned(county)
    assert sorted(held.values()) == ["王五", "赵六"]
    assert all(k.startswith("ty1:") for k in held)  # pseudonyms, never the ID numbers
    raw = {p["id_number"] for p in PEOPLE}
    assert not raw & {k for _, k in sent_keys(city)}

    # 王五 moves to 玄武区, 赵六 is deleted: both depart under their pseudonyms.
    city.ingest(resource, [{**PEOPLE[0], "division_code": "320102"}, PEOPLE[2]], snapshot=True)
    tables += send_windows(city, county)
    assert returned(county) == {}
    assert sent_keys(city) == set()
    for table in tables:
        assert not raw & set(str(v) for v in table.column("id_number").to_pylist())


# ----- refusals: nothing applied --------------------------------------------------------------


def test_a_window_outside_the_grant_is_refused_and_nothing_applied(
    nodes: dict[str, Node],
) -> None:
    city, county, resource, grant_id = granted(nodes)
    send_returns(city, county)
    before = returned(county)
    checkpoint = dict(county.store.grants.return_checkpoints(city.code))[grant_id]
    city.ingest(
        resource, [{"id_number": "320104200001010033", "name": "钱七", "division_code": "320104"}]
    )
    (grant,) = city.store.grants.active_for(county.code)
    window = city.store.grants.read_return(grant, checkpoint, 10_000)
    assert window is not None and window.table.num_rows == 1
    # A parent (or anyone on the link) widening the filter: a row of 玄武区 slipped in.
    outsider = window.table.to_pylist()[0] | {
        "id_number": "320102199001011234",
        "name": "张三",
        "division_code": "320102",
    }
    widened = pa.Table.from_pylist([*window.table.to_pylist(), outsider], window.table.schema)
    with pytest.raises(ReturnRefused, match="1 of 2 rows are outside the grant") as refused:
        county.store.grants.apply_return(
            city.code, grant_id, "person", window.after_seq, window.last_seq, widened
        )
    assert refused.value.reason == "outside"
    assert returned(county) == before
    assert dict(county.store.grants.return_checkpoints(city.code))[grant_id] == checkpoint
    # Another resource's rows are outside it too.
    other = pa.Table.from_pylist(
        [window.table.to_pylist()[0] | {"origin_resource": f"{NANJING}-MZ-009"}],
        window.table.schema,
    )
    with pytest.raises(ReturnRefused, match="outside the grant"):
        county.store.grants.apply_return(
            city.code, grant_id, "person", window.after_seq, window.last_seq, other
        )
    # A window that starts past what the county holds would leave a gap.
    with pytest.raises(ReturnRefused, match="holds it only through") as gap:
        county.store.grants.apply_return(
            city.code, grant_id, "person", checkpoint + 1, checkpoint + 5, window.table
        )
    assert gap.value.reason == "precondition"
    # An unknown grant.
    with pytest.raises(ReturnRefused, match="holds no grant") as unknown:
        county.store.grants.apply_return(
            city.code, "feedfacecafe", "person", checkpoint, window.last_seq, window.table
        )
    assert unknown.value.reason == "precondition"
    assert returned(county) == before


def test_a_request_cannot_widen_itself_after_it_was_made(nodes: dict[str, Node]) -> None:
    city, county, _resource, _grant_id = granted(nodes)
    # The county rewrites its request (the same id, the whole division's people) and the
    # city pulls again: the request as first received stands.
    requests_json, _ = county.store.grants.requests_document(city.code)
    document = json.loads(requests_json)
    document[0]["filters"] = [{"attribute": "origin_node", "value": NANJING}]
    added, problems = city.store.grants.receive_requests(
        county.code,
        json.dumps(document),
        digest_of(document),
        partial(check_request, city.store, county.code),
    )
    assert added == 0 and "changed after it was made" in problems[0]
    (grant,) = city.store.grants.given()
    assert grant["filters"] == [{"attribute": "division_code", "value": "320104"}]
    send_returns(city, county)
    assert set(returned(county)) == {p["id_number"] for p in PEOPLE[:2]}


def test_a_grant_that_differs_from_the_request_is_refused_alone(nodes: dict[str, Node]) -> None:
    city, county, _resource, grant_id = granted(nodes)
    send_returns(city, county)
    digest, grants_json = city.store.grants.downward_set(county.code)
    document = json.loads(grants_json)
    document[0]["filters"] = [{"attribute": "origin_node", "value": NANJING}]
    stranger = {**json.loads(grants_json)[0], "id": "0123456789ab"}
    widened = [*document, stranger]
    received = county.store.grants.receive_grants(
        city.code, json.dumps(widened), digest_of(widened)
    )
    assert received.count == 2
    assert "asked for" in received.problems[0] and "made no such request" in received.problems[1]
    (mine,) = county.grants.list()
    assert mine["state"] == "refused" and "asked for" in mine["reason"]
    assert returned(county) == {}  # nothing is held under a grant refused here
    assert county.store.grants.return_checkpoints(city.code) == []
    # The parent's next word on it is taken afresh.
    county.store.grants.receive_grants(city.code, grants_json, digest)
    assert county.grants.list()[0]["state"] == "approved"
    send_returns(city, county)
    assert len(returned(county)) == 2
    # Only a set that is not one (digest, shape) is refused whole.
    with pytest.raises(ReturnRefused, match="digest"):
        county.store.grants.receive_grants(city.code, grants_json, "0" * 64)
    with pytest.raises(ReturnRefused, match="must be a list"):
        county.store.grants.receive_grants(city.code, "{}", digest_of({}))
    assert county.store.grants.received_digest(city.code) == digest
    assert dict(county.store.grants.return_checkpoints(city.code))[grant_id] > 0


def test_a_grant_the_child_cannot_take_does_not_hold_up_a_revocation(
    nodes: dict[str, Node],
) -> None:
    city, county, resource, wide = granted(nodes)
    narrow = county.grants.request(
        resource, ["division_code=320104", "name=赵六"], "个案核查", "1h"
    )["id"]
    pull_requests(city, county)
    city.grants.approve(narrow)
    deliver_grants(city, county)
    assert send_returns(city, county) == 3  # 赵六 under both grants
    city.grants.revoke(wide, reason="核查结束")
    _, grants_json = city.store.grants.downward_set(county.code)
    document = {g["id"]: g for g in json.loads(grants_json)}
    # The narrow grant names an entity the county's model lacks; the revocation of the
    # wide one comes with a time nobody can read.
    document[narrow]["entity"] = "spaceship"
    document[wide]["decided_at"] = "the day before yesterday"
    grant_set = list(document.values())
    received = county.store.grants.receive_grants(
        city.code, json.dumps(grant_set), digest_of(grant_set)
    )
    assert [p for p in received.problems if narrow in p and "spaceship" in p] == received.problems
    listed = {g["id"]: g for g in county.grants.list()}
    assert listed[wide]["state"] == "purged (revoked)" and listed[wide]["rows_purged"] == 2
    assert listed[narrow]["state"] == "refused" and "spaceship" in listed[narrow]["reason"]
    assert county.rows("SELECT count(*) AS n FROM tongyuan.returned_person") == [{"n": 0}]
    kinds = [r["kind"] for r in county.rows("SELECT kind FROM tongyuan.audit_chain")]
    assert {"grant.revoked", "grant.purged", "grant.refused"} <= set(kinds)


def test_requests_the_city_cannot_serve_are_denied_with_the_reason(
    nodes: dict[str, Node],
) -> None:
    city, county, resource = city_with_people(nodes)
    county.grants.request(f"{NANJING}-XX-404", ["division_code=320104"], "核查", "1h")
    county.grants.request(resource, ["uscc=91320100MA1XXXXX0X"], "核查", "1h")  # a company's
    assert pull_requests(city, county)[0] == 2
    given = {g["resource"]: g for g in city.grants.list()}
    assert given[f"{NANJING}-XX-404"]["state"] == "denied"
    assert "not a published resource" in given[f"{NANJING}-XX-404"]["reason"]
    assert "'uscc' is not an attribute of person" in given[resource]["reason"]
    deliver_grants(city, county)
    assert {g["state"] for g in county.grants.list() if g["side"] == "requested"} == {"denied"}


def test_user_errors_write_nothing(nodes: dict[str, Node]) -> None:
    city, county, resource = city_with_people(nodes)
    for args, message in (
        ((resource, ["division_code=320104"], " ", "1h"), "needs a --purpose"),
        ((resource, ["division_code=320104"], "核查", "yesterday"), "give a duration"),
        ((resource, ["division_code=320104"], "核查", "2020-01-01"), "not in the future"),
        ((resource, ["nonsense=1"], "核查", "1h"), "not an attribute of any entity"),
        ((f"{QINHUAI}-GA-001", ["division_code=320104"], "核查", "1h"), "here already"),
        (("person", ["division_code=320104"], "核查", "1h"), "not a catalogue code"),
    ):
        with pytest.raises(UserError, match=message):
            county.grants.request(*args)
    with pytest.raises(UserError, match="not above node"):
        county.grants.request(resource, ["division_code=320104"], "核查", "1h", to="320200")
    assert county.grants.list() == []
    with pytest.raises(UserError, match="no grant"):
        city.grants.approve("nope")


# ----- ending: revocation and expiry ----------------------------------------------------------


def test_revocation_purges_at_once_and_refuses_later_windows(nodes: dict[str, Node]) -> None:
    city, county, _resource, grant_id = granted(nodes)
    send_returns(city, county)
    assert len(returned(county)) == 2
    city.grants.revoke(grant_id, actor="市大数据局")
    assert city.store.grants.active_for(county.code) == []
    assert not city.store.grants.in_force(grant_id)
    deliver_grants(city, county)
    assert returned(county) == {}
    (mine,) = county.grants.list()
    assert mine["state"] == "purged (revoked)" and mine["rows_purged"] == 2
    (grant,) = city.store.grants.given()
    window = city.store.grants.read_return(grant, 0, 10_000)
    assert window is not None
    with pytest.raises(ReturnRefused, match="the grant is purged") as refused:
        county.store.grants.apply_return(
            city.code, grant_id, "person", 0, window.last_seq, window.table
        )
    assert refused.value.reason == "precondition"
    with pytest.raises(UserError, match="is revoked"):
        city.grants.revoke(grant_id)


def test_expiry_purges_the_copy_and_records_it(nodes: dict[str, Node]) -> None:
    city, county, _resource, grant_id = granted(nodes)
    send_returns(city, county)
    later = datetime.now(UTC) + timedelta(hours=2)
    assert county.store.grants.purge_ended(datetime.now(UTC)) == []
    (grant,) = city.store.grants.active_for(county.code)
    window = city.store.grants.read_return(grant, 0, 10_000)
    assert window is not None
    # Past its expiry the county refuses windows by its own clock, before any purge.
    with pytest.raises(ReturnRefused, match="the grant is expired"):
        county.store.grants.apply_return(
            city.code, grant_id, "person", 0, window.last_seq, window.table, now=later
        )
    assert county.store.grants.purge_ended(later) == [
        {"id": grant_id, "ended": "expired", "rows_purged": 2}
    ]
    assert returned(county) == {}
    (mine,) = county.grants.list()
    assert mine["state"] == "purged (expired)" and mine["purged_at"]
    assert city.store.grants.expire_given(later) == [grant_id]
    assert city.grants.list()[0]["state"] == "expired"
    kinds = [r["kind"] for r in county.rows("SELECT kind FROM tongyuan.audit_chain ORDER BY seq")]
    assert "return.applied" in kinds  # once per window that carried rows
    assert [k for k in kinds if k != "return.applied"] == [
        "grant.requested",
        "grant.approved",
        "grant.expired",
        "grant.purged",
    ]
    kinds = [r["kind"] for r in city.rows("SELECT kind FROM tongyuan.audit_chain ORDER BY seq")]
    assert kinds[-3:] == ["grant.requested", "grant.approved", "grant.expired"]


def test_a_window_from_zero_replaces_what_is_held(nodes: dict[str, Node]) -> None:
    """A parent that compacted deletes the county has not seen sends the slice again from
    the start: the county replaces its copy rather than merging into it."""
    city, county, _resource, grant_id = granted(nodes)
    send_returns(city, county)
    assert len(returned(county)) == 2
    (grant,) = city.store.grants.active_for(county.code)
    window = city.store.grants.read_return(grant, 0, 10_000)
    assert window is not None
    only_zhao = window.table.filter(pc.equal(pc.fill_null(window.table.column("name"), ""), "赵六"))
    county.store.grants.apply_return(city.code, grant_id, "person", 0, window.last_seq, only_zhao)
    assert returned(county) == {PEOPLE[1]["id_number"]: "赵六"}


# ----- reading an ended slice; the wire; the cost of asking -----------------------------------


def test_an_ended_slice_is_unreadable_at_once_and_purged_when_the_node_opens_for_writing(
    nodes: dict[str, Node],
) -> None:
    city, county, _resource, grant_id = granted(nodes)
    send_returns(city, county)
    assert len(returned(county)) == 2
    # The grant's time is up by the county's clock, and no scheduler runs there.
    with county.store.db.write() as cur:
        cur.execute(
            "UPDATE tongyuan.grant_requests SET granted_expires_at = now() - INTERVAL 1 SECOND"
        )
    assert returned(county) == {}  # the view shows grants in force only
    assert county.rows("SELECT count(*) AS n FROM tongyuan.returned_person") == [{"n": 2}]
    county.store.close()
    reader = open_node(county.directory, write=False)  # a read-only command purges nothing
    try:
        assert isinstance(reader, LocalNode)
        assert list(reader.store.query("SELECT * FROM returned_person").to_pylist()) == []
    finally:
        reader.close()
    writer = open_node(county.directory, write=True)  # a writing command purges first
    try:
        assert isinstance(writer, LocalNode)
        (mine,) = writer.call("grant.list", {})
        assert mine["id"] == grant_id
        assert mine["state"] == "purged (expired)" and mine["rows_purged"] == 2
        held = writer.store.query("SELECT count(*) AS n FROM tongyuan.returned_person")
        assert held.to_pylist() == [{"n": 0}]
    finally:
        writer.close()


def test_windows_are_halved_until_their_arrow_ipc_fits(nodes: dict[str, Node]) -> None:
    city, county, resource, grant_id = granted(nodes)
    many = [
        {"id_number": f"32010420000101{i:04d}", "name": "名" * 60, "division_code": "320104"}
        for i in range(120)
    ]
    city.ingest(resource, many)
    (grant,) = city.store.grants.active_for(county.code)
    limit = 4096
    at, windows = 0, 0
    while (found := city.store.grants.next_window(grant, at, 10_000, limit)) is not None:
        window, payload = found
        assert len(payload) <= limit or window.last_seq - window.after_seq == 1
        city.store.grants.note_sending(window)
        at, _ = county.store.grants.apply_return(
            city.code, grant_id, "person", window.after_seq, window.last_seq, decode_table(payload)
        )
        city.store.grants.confirm_return(window, at)  # as the worker does after each receipt
        windows += 1
    assert windows > 4
    assert len(returned(county)) == 122


def test_the_requests_digest_is_kept_until_a_request_is_added(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    _city, county, resource = city_with_people(nodes)
    grants = county.store.grants
    built: list[str] = []
    build = grants._build_requests_document

    def counting(parent: str) -> tuple[str, str]:
        built.append(parent)
        return build(parent)

    monkeypatch.setattr(grants, "_build_requests_document", counting)
    assert grants.requests_digest(NANJING) == ""
    county.grants.request(resource, ["division_code=320104"], "核查", "1h")
    first = grants.requests_digest(NANJING)
    for _ in range(5):  # GetInfo, on every session and grant check
        assert grants.requests_digest(NANJING) == first
    requests_json, digest = grants.requests_document(NANJING)
    assert digest == first == digest_of(json.loads(requests_json))
    assert built == [NANJING, NANJING]
    county.grants.request(resource, ["division_code=320102"], "核查", "1h")
    assert grants.requests_digest(NANJING) not in ("", first)
    assert len(built) == 3


# ----- the link: return flows leave from their worker, never from the apply path ---------------


class _Future:
    """A unary call in flight, as grpc's `.future()` returns it: runs at `result()`."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def result(self) -> Any:
        if self.cancelled:
            raise grpc.FutureCancelledError()
        return self._run()


class _MultiCallable:
    def __init__(self, method: Any) -> None:
        self._method = method

    def __call__(self, request: Any, timeout: float) -> Any:
        return self._method(request, timeout)

    def future(self, request: Any, timeout: float) -> _Future:
        return _Future(partial(self._method, request, timeout))


class CountyStub:
    """The county's federation service as the city's link calls it, in process."""

    def __init__(self, county: Node) -> None:
        self.county = county
        self.calls: list[str] = []

    def DeliverGrants(self, request: Any, timeout: float) -> Any:
        self.calls.append("DeliverGrants")
        self.county.store.grants.receive_grants(
            request.parent_code, request.grants_json, request.digest
        )
        return pb.GrantsReceipt(digest=request.digest)

    @property
    def DeliverReturn(self) -> Any:  # the link calls it as a future (cancellable)
        return _MultiCallable(self._deliver_return)

    def _deliver_return(self, request: Any, timeout: float) -> Any:
        self.calls.append("DeliverReturn")
        seq, _ = self.county.store.grants.apply_return(
            request.parent_code,
            request.grant_id,
            request.entity,
            request.after_seq,
            request.last_seq,
            decode_table(request.arrow_ipc),
        )
        return pb.ReturnReceipt(grant_id=request.grant_id, seq=seq)

    def __getattr__(self, name: str) -> Any:  # other downward deliveries: just noted
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return mock.MagicMock()

        return call


def test_return_flows_leave_from_the_worker_never_from_the_apply_path(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    city, county, resource, grant_id = granted(nodes)
    link = ChildLink(
        Child(county.code, "127.0.0.1:9"),
        city.config,
        city.store,
        Security(SecurityMode.PLAINTEXT_DEV, None, city.code),
    )
    stub = CountyStub(county)
    link._stub = stub  # type: ignore[assignment]
    try:
        info = pb.NodeInfo(
            code=county.code,
            grants_digest=county.store.grants.received_digest(city.code),
            grant_requests_digest=county.store.grants.requests_digest(city.code),
            return_checkpoints=[pb.ReturnCheckpoint(grant_id=grant_id, seq=0)],
        )
        link._take_grant_info(info)  # at session start
        link._deliver_downward()  # before every apply
        assert "DeliverReturn" not in stub.calls
        assert county.rows(
            "SELECT count(*) AS n FROM information_schema.tables "
            "WHERE table_name = 'returned_person'"
        ) == [{"n": 0}]

        assert link._returns_round() is False  # the worker's round
        assert len(returned(county)) == 2
        city.ingest(resource, [{**PEOPLE[2], "name": "张三丰"}])  # outside the slice
        stub.calls.clear()
        link._returns_round()
        assert stub.calls == []  # an empty window is not sent …
        link._returns_sent_at[grant_id] -= 61
        link._returns_round()  # … unless a minute passed (or a full window lags)
        assert stub.calls == ["DeliverReturn"]
        assert county.grants.list()[0]["checkpoint"] == city.store.head_seq

        # Many windows' worth: a round sends a few, then says there is more.
        monkeypatch.setattr(links, "RETURN_ROUND_WINDOWS", 2)
        sync = dataclasses.replace(city.config.sync, batch_changes=1)
        link._config = dataclasses.replace(city.config, sync=sync)
        for i in range(5):
            city.ingest(resource, [{**PEOPLE[1], "name": f"赵六{i}"}])
        assert link._returns_round() is True
        while link._returns_round():
            pass
        assert returned(county)[PEOPLE[1]["id_number"]] == "赵六4"
    finally:
        link.stop()
    sent = city.rows(
        "SELECT detail FROM tongyuan.audit_chain WHERE kind = 'return.sent' ORDER BY seq"
    )
    details = [json.loads(r["detail"]) for r in sent]
    assert details[0] | {"grant": grant_id, "child": county.code, "rows": 2} == details[0]
    assert all(d["rows"] or d["departures"] for d in details)  # empty rounds leave none
    # 2 rows, then 赵六's last version (the table holds records, not their history).
    assert sum(d["rows"] for d in details) == 2 + 1


def _county_link(city: Node, county: Node, grant_id: str) -> tuple[ChildLink, CountyStub]:
    """The city's link to the county, driven in process: a session's grant info, and a
    round that brings the county's slice up to date; from then on a window per ingest."""
    link = ChildLink(
        Child(county.code, "127.0.0.1:9"),
        city.config,
        city.store,
        Security(SecurityMode.PLAINTEXT_DEV, None, city.code),
    )
    stub = CountyStub(county)
    link._stub = stub  # type: ignore[assignment]
    link._take_grant_info(
        pb.NodeInfo(
            code=county.code,
            grants_digest=county.store.grants.received_digest(city.code),
            grant_requests_digest=county.store.grants.requests_digest(city.code),
            return_checkpoints=[pb.ReturnCheckpoint(grant_id=grant_id, seq=0)],
        )
    )
    assert link._returns_round() is False
    stub.calls.clear()
    # A window per ingest (each logs 2 changes).
    sync = dataclasses.replace(city.config.sync, batch_changes=2)
    link._config = dataclasses.replace(city.config, sync=sync)
    return link, stub


def _ingest_one(city: Node, resource: str, i: int) -> None:
    """A new record in the county's slice (a window per ingest: each its own record)."""
    person = {"id_number": f"32010419900101{i:04d}", "name": f"新{i}", "division_code": "320104"}
    city.ingest(resource, [person])


def _return_entries(city: Node) -> list[dict[str, Any]]:
    sent = city.rows(
        "SELECT detail FROM tongyuan.audit_chain WHERE kind = 'return.sent' ORDER BY seq"
    )
    return [json.loads(r["detail"]) for r in sent]


def test_a_cut_stops_the_return_round_and_what_left_is_recorded(nodes: dict[str, Node]) -> None:
    city, county, resource, grant_id = granted(nodes)
    link, stub = _county_link(city, county, grant_id)
    for i in range(4):
        _ingest_one(city, resource, i)
    deliver = stub._deliver_return

    def cut_after_first(request: Any, timeout: float) -> Any:
        receipt = deliver(request, timeout)
        link.cut("child: its certificate was revoked")  # lands while a round is on
        return receipt

    stub._deliver_return = cut_after_first  # type: ignore[method-assign]
    try:
        assert link._returns_round() is False
        assert stub.calls.count("DeliverReturn") == 1  # not up to RETURN_ROUND_WINDOWS
        entry = _return_entries(city)[-1]
        assert entry["windows"] == entry["rows"] == 1 and entry["grant"] == grant_id

        # A cut before the call is published: it is cancelled, never delivered.
        link._cut, link._trusted = None, True
        stub._deliver_return = deliver  # type: ignore[method-assign]
        stub.calls.clear()
        window, payload = city.store.grants.next_window(
            city.store.grants.active_for(county.code)[0], 0, 1, MAX_WINDOW_BYTES
        ) or pytest.fail("no window")
        link._stopping.set()
        with pytest.raises(grpc.FutureCancelledError):
            link._deliver_return(window, payload)
        assert stub.calls == [] and link._return_call is None
    finally:
        link.stop()


def test_a_failing_grant_records_what_left_and_logs_once(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    city, county, resource, grant_id = granted(nodes)
    link, stub = _county_link(city, county, grant_id)
    for i in range(3):
        _ingest_one(city, resource, i)
    grants = city.store.grants
    next_window = grants.next_window
    reads = [0]

    def breaks_after_one(*args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        if reads[0] > 1:
            raise duckdb.IOException("disk went away")
        return next_window(*args, **kwargs)

    monkeypatch.setattr(grants, "next_window", breaks_after_one)
    try:
        with caplog.at_level("WARNING", logger=links.__name__):
            assert link._returns_round() is False  # the failure ends the grant's round only
            link._returns_round()
        assert stub.calls.count("DeliverReturn") == 1
        entry = _return_entries(city)[-1]  # the window that left is in the evidence
        assert entry["windows"] == 1 and entry["rows"] == 1
        failed = [r for r in caplog.records if "disk went away" in r.getMessage()]
        assert len(failed) == 1 and failed[0].exc_info  # once, with its traceback
        assert "IOException" in link._grant_problems[grant_id]
    finally:
        link.stop()


def test_nothing_is_noted_or_sent_for_a_grant_revoked_after_its_check(
    nodes: dict[str, Node],
) -> None:
    city, county, _resource, grant_id = granted(nodes)
    grants = city.store.grants
    (grant,) = grants.active_for(county.code)
    window, _ = grants.next_window(grant, 0, 100, MAX_WINDOW_BYTES) or pytest.fail("no window")
    assert window.live
    city.grants.revoke(grant_id, actor="市大数据局")
    assert grants.note_sending(window) is False
    assert city.rows("SELECT count(*) AS n FROM tongyuan.grant_sent") == [{"n": 0}]


def test_a_changed_sharing_rule_sends_the_slice_again_in_its_new_form(
    nodes: dict[str, Node],
) -> None:
    """A catalogue change touches no record, yet changes what may leave: a grade raised
    re-sends the slice in the new form (a window from 0 replaces the county's copy), and
    a resource made not shared empties it, long before the grant ends."""
    city, county = nodes[NANJING], nodes[QINHUAI]
    resource, entry, grant_id = grant_conditional_people(city, county, id_grade="general")
    send_windows(city, county)
    assert returned(county) == {PEOPLE[0]["id_number"]: "王五", PEOPLE[1]["id_number"]: "赵六"}

    def change(**fields: str) -> None:
        edited = {**entry, **{k: v for k, v in fields.items() if k == "sharing"}}
        edited["fields"] = [
            {**f, "sensitivity": fields.get(f["name"], f.get("sensitivity"))}
            if "sensitivity" in f
            else f
            for f in entry["fields"]
        ]
        city.catalog.edit(resource, edited, "people.toml", "tester")
        city.catalog.publish(resource, "tester")

    # Names graded important: no record changed, yet the county's copy is replaced.
    change(name="important")
    send_windows(city, county)
    assert returned(county) == {PEOPLE[0]["id_number"]: "王*", PEOPLE[1]["id_number"]: "赵*"}
    # Nothing changed since: nothing is sent again.
    assert [t.num_rows for t in send_windows(city, county, max_changes=10_000)] == []

    # ID numbers graded core: the county holds pseudonyms, never the numbers.
    change(name="important", id_number="core")
    send_windows(city, county)
    held = returned(county)
    assert sorted(held.values()) == ["王*", "赵*"] and all(k.startswith("ty1:") for k in held)

    # Not shared: the county's slice empties though the grant is still in force.
    change(sharing="not_shared")
    send_windows(city, county)
    assert returned(county) == {}
    assert city.store.grants.in_force(grant_id)


def test_grant_filters_are_pseudonymised_in_audit_entries(nodes: dict[str, Node]) -> None:
    """Audit entries travel up (GetAudit) and into exports: a filter naming a person
    reaches the province, or a reader of the export, only as a pseudonym."""
    id_number = PEOPLE[0]["id_number"]
    city, county, _resource, grant_id = granted(nodes, filter=f"id_number={id_number}")
    city.grants.revoke(grant_id, actor="市大数据局")
    for node in (city, county):
        rows = node.rows("SELECT kind, detail FROM tongyuan.audit_chain ORDER BY seq")
        entries = [(r["kind"], json.loads(r["detail"])) for r in rows]
        assert not [e for e in entries if id_number in json.dumps(e, ensure_ascii=False)]
        key = node.store.outbound.federation_key()
        shown = [d["filter_pseudonym"] for k, d in entries if k.startswith("grant.")
                 and "filter_pseudonym" in d]  # fmt: skip
        assert shown and set(shown) == {f"id_number={pseudonym(id_number, key)}"}
    kinds = {k for k, d in entries if "filter_pseudonym" in d}
    assert kinds == {"grant.requested"}  # the county's own request
    city_kinds = [
        r["kind"]
        for r in city.rows("SELECT kind, detail FROM tongyuan.audit_chain ORDER BY seq")
        if "filter_pseudonym" in json.loads(r["detail"])
    ]
    assert city_kinds == ["grant.requested", "grant.approved", "grant.revoked"]
