"""Feedback items in the store, in-process on real DuckDB files: objections raised above
a county about its records, delivered down to it, answered there and corrected, with the
state each tier derives from what it holds; overdue items; what goes down to which child;
and the refusals (a non-owner answering, an unknown resource or record) that write
nothing.

Changes travel between stores through the real wire encoding, as a parent pulls them;
feedback sets go down as the link delivers them (downward_set → replace_received).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from stores import NAMES, StoreNode, closing_all

from node.errors import UserError
from node.quality.feedback import FeedbackService
from node.sources.operations import SourcesService
from node.store import IngestResult
from node.store.feedback import FEEDBACK_SCHEMA
from node.store.sources import delivery_digest

XUANWU, QINHUAI, NANJING, JIANGSU = "320102", "320104", "320100", "320000"
ZHANG, LI, WANG = "320102199001011234", "32010219800101002X", "320104198505050011"


def names(rows: dict[str, str]) -> list[dict[str, str]]:
    """{id_number: name} as the rows of a file with those two columns."""
    return [{"id_number": key, "name": name} for key, name in rows.items()]


class Node(StoreNode):
    """A node as in `stores` whose 公安局 publishes one resource of people (ID number and
    name), with its feedback service at hand."""

    def __init__(self, base: Path, code: str, name: str) -> None:
        super().__init__(base, code, name)
        self.feedback = FeedbackService(self.config, self.store)
        self.resource = f"{code}-GA-001"
        self.register(self.resource, ["id_number", "name"], name="户籍人口信息")

    def ingest_own(self, rows: dict[str, str], *, snapshot: bool = False) -> IngestResult:
        """Import {id_number: name} into this node's resource, as `tongyuan ingest` does."""
        return self.ingest(self.resource, names(rows), snapshot=snapshot)

    def deliver(self, child: Node) -> pa.Table:
        """Send the child its feedback set, as the link does (the wire's schema)."""
        digest, table = self.store.feedback.downward_set(child.code)
        child.store.feedback.replace_received(self.code, table.cast(FEEDBACK_SCHEMA), digest)
        return table

    def observe(self, source: Node, rows: dict[str, str]) -> IngestResult:
        """Import {id_number: name} into this node's 人社局 copy of `source`'s people (its
        resource names `source`'s 公安局 as the authoritative source), as an observer."""
        code = f"{self.code}-RS-001"
        if self.catalog.tables.own_entry(code) is None:
            self.register(
                code,
                ["id_number", "name"],
                department="人社局",
                name="参保人员信息",
                source_node=source.code,
                source_department="公安局",
            )
        return self.ingest(code, names(rows))

    def deliver_discrepancies(self, child: Node) -> None:
        digest, table = self.store.sources.downward_set(child.code)
        child.store.sources.replace_received(self.code, table, digest)

    def states(self) -> dict[str, str]:
        return {i["id"]: i["state"] for i in self.feedback.list(include_closed=True)}

    def item(self, item_id: str) -> dict[str, Any]:
        found = [i for i in self.feedback.list(include_closed=True) if i["id"] == item_id]
        assert len(found) == 1
        return found[0]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    opened = {code: Node(tmp_path, code, name) for code, name in NAMES.items()}
    yield from closing_all(opened)


def sync_up(nodes: dict[str, Node]) -> None:
    nodes[NANJING].pull(nodes[XUANWU])
    nodes[NANJING].pull(nodes[QINHUAI])
    nodes[JIANGSU].pull(nodes[NANJING])


def deliver_down(nodes: dict[str, Node]) -> None:
    nodes[JIANGSU].deliver(nodes[NANJING])
    nodes[NANJING].deliver(nodes[XUANWU])
    nodes[NANJING].deliver(nodes[QINHUAI])


TIERS = (JIANGSU, NANJING, XUANWU)


# ----- the lifecycle -------------------------------------------------------------------


def test_an_objection_goes_down_is_acknowledged_and_a_correction_closes_it_everywhere(
    nodes: dict[str, Node],
) -> None:
    county, province = nodes[XUANWU], nodes[JIANGSU]
    first = county.ingest_own({ZHANG: "张三", LI: "李四"})
    assert first.first_seq is not None
    sync_up(nodes)

    # At the province, Li Si's key typed with a lower-case x still finds the record.
    item = province.feedback.raise_objection(
        county.resource, LI.lower(), "姓名与婚姻登记不符", actor="省大数据局王五"
    )
    assert item == item | {
        "kind": "objection",
        "entity": "person",
        "resource": county.resource,
        "record_key": LI,
        "owner_node": XUANWU,
        "owner_dept": "公安局",
        "record_seq": first.first_seq + 1,  # Li Si's version (second row of the file)
        "reason": "姓名与婚姻登记不符",
        "raised_node": JIANGSU,
        "raised_by": "省大数据局王五",
        "received_from": None,
        "state": "open",
        "closed": False,
        "overdue": False,
        "responses": [],
        "at_owner": False,
        "travels_to": XUANWU,
    }
    assert datetime.fromisoformat(item["raised_at"]).tzinfo is not None
    assert county.feedback.list() == [], "nothing reached the county yet"

    deliver_down(nodes)
    assert nodes[QINHUAI].feedback.list() == [], "only the owner's branch receives it"
    at_county = county.item(item["id"])
    assert at_county["received_from"] == NANJING
    assert (at_county["state"], at_county["at_owner"], at_county["travels_to"]) == (
        "open",
        True,
        None,
    )
    assert nodes[NANJING].item(item["id"])["received_from"] == JIANGSU

    # The county acknowledges; its answer travels up like data.
    answer = county.feedback.respond(item["id"], "acknowledged", "核实中", actor="玄武公安张警官")
    assert answer["state"] == "acknowledged"
    assert answer["response"]["node"] == XUANWU
    for code in TIERS:
        assert nodes[code].item(item["id"])["state"] == (
            "acknowledged" if code == XUANWU else "open"
        )
    sync_up(nodes)
    for code in TIERS:
        seen = nodes[code].item(item["id"])
        assert seen["state"] == "acknowledged"
        assert [(r["state"], r["actor"], r["node"], r["note"]) for r in seen["responses"]] == [
            ("acknowledged", "玄武公安张警官", XUANWU, "核实中")
        ]
    assert province.store.feedback.counts(72) == {
        "open": 0,
        "acknowledged": 1,
        "closed": 0,
        "overdue": 0,
    }

    # The county corrects the record by importing it again: closed at every tier.
    fixed = county.ingest_own({ZHANG: "张三", LI: "李思"})
    assert fixed.updated == 1
    assert county.item(item["id"])["state"] == "corrected"
    assert province.item(item["id"])["state"] == "acknowledged", "not arrived yet"
    sync_up(nodes)
    for code in TIERS:
        seen = nodes[code].item(item["id"])
        assert (seen["state"], seen["closed"], seen["corrected_by_delete"]) == (
            "corrected",
            True,
            False,
        )
        assert seen["corrected_seq"] == fixed.first_seq
        assert seen["corrected_at"] is not None
        assert nodes[code].feedback.list() == [], "closed items are listed with --all only"
        assert nodes[code].feedback.list(state="corrected")[0]["id"] == item["id"]
    assert province.store.feedback.counts(72) == {
        "open": 0,
        "acknowledged": 0,
        "closed": 1,
        "overdue": 0,
    }

    # A closed item cannot be answered.
    with pytest.raises(UserError, match=f"{item['id']} is already corrected"):
        county.feedback.respond(item["id"], "rejected", "", actor="x")


def test_confirmed_correct_and_rejected_close_items_and_a_delete_corrects(
    nodes: dict[str, Node],
) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    county.ingest_own({ZHANG: "张三", LI: "李四"})
    sync_up(nodes)
    on_zhang = city.feedback.raise_objection(county.resource, ZHANG, "疑似重复", actor="a")
    on_li = city.feedback.raise_objection(county.resource, LI, "姓名有误", actor="a")
    city.deliver(county)

    county.feedback.respond(on_zhang["id"], "confirmed-correct", "核实无误", actor="张警官")
    rejected = county.feedback.respond(on_li["id"], "rejected", "依据不足", actor="张警官")
    assert (rejected["state"], rejected["closed"]) == ("rejected", True)
    sync_up(nodes)
    assert city.states() == {on_zhang["id"]: "confirmed-correct", on_li["id"]: "rejected"}
    assert city.store.feedback.counts(72)["closed"] == 2
    with pytest.raises(UserError, match="already confirmed-correct"):
        county.feedback.respond(on_zhang["id"], "acknowledged", "", actor="x")

    # A new objection on Li Si's record; the county deletes the record: corrected too.
    again = city.feedback.raise_objection(county.resource, LI, "已迁出", actor="a")
    county.ingest_own({ZHANG: "张三"}, snapshot=True)
    sync_up(nodes)
    seen = city.item(again["id"])
    assert (seen["state"], seen["corrected_by_delete"]) == ("corrected", True)
    assert city.item(on_li["id"])["state"] == "corrected", "a newer version beats an answer"


def test_open_items_older_than_the_limit_are_overdue(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    county.ingest_own({ZHANG: "张三", LI: "李四"})
    sync_up(nodes)
    waiting = city.feedback.raise_objection(county.resource, ZHANG, "r", actor="a")
    answered = city.feedback.raise_objection(county.resource, LI, "r", actor="a")
    city.deliver(county)
    county.feedback.respond(answered["id"], "rejected", "", actor="b")
    sync_up(nodes)
    assert city.feedback.list(overdue=True) == []

    # Three days and an hour later (the default limit is 72 hours).
    monkeypatch.setenv("TONGYUAN_CLOCK_SKEW_SECONDS", str(73 * 3600))
    overdue = city.feedback.list(overdue=True)
    assert [(i["id"], i["overdue"], i["overdue_hours"]) for i in overdue] == [
        (waiting["id"], True, 72.0)
    ]
    assert city.store.feedback.counts(72) == {
        "open": 1,
        "acknowledged": 0,
        "closed": 1,
        "overdue": 1,
    }
    # Acknowledged is still not closed: still overdue.
    city.deliver(county)
    county.feedback.respond(waiting["id"], "acknowledged", "", actor="b")
    sync_up(nodes)
    assert [i["state"] for i in city.feedback.list(overdue=True)] == ["acknowledged"]
    assert city.store.feedback.counts(100)["overdue"] == 0


# ----- downward delivery ---------------------------------------------------------------


def test_items_go_down_only_to_the_owners_branch_and_a_delivery_replaces_the_last(
    nodes: dict[str, Node],
) -> None:
    xuanwu, qinhuai, city, province = (nodes[c] for c in (XUANWU, QINHUAI, NANJING, JIANGSU))
    zhang = xuanwu.ingest_own({ZHANG: "张三"})
    qinhuai.ingest_own({WANG: "王五"})
    sync_up(nodes)
    on_xuanwu = province.feedback.raise_objection(xuanwu.resource, ZHANG, "r1", actor="p")
    on_qinhuai = province.feedback.raise_objection(qinhuai.resource, WANG, "r2", actor="p")
    # A blocking rule failed at the city on a row of Xuanwu's (raised from the apply path).
    generation = city.store.feedback.generation
    rule_item = {
        "id": "rule-1",
        "kind": "rule",
        "entity": "person",
        "resource": None,
        "record_key": ZHANG,
        "owner_node": XUANWU,
        "owner_dept": "公安局",
        "record_seq": zhang.first_seq,  # the version the city received
        "reason": "出生日期晚于登记日期",
        "raised_node": NANJING,
        "raised_by": "rule person.birth_date",
        "raised_at": datetime.now(UTC),
    }
    with city.store.db.write() as cur:
        table = pa.Table.from_pylist([rule_item], schema=FEEDBACK_SCHEMA)
        assert city.store.feedback.raise_in(cur, table) == 1
        assert city.store.feedback.raise_in(cur, table) == 0, "raised once"
    assert city.store.feedback.generation > generation

    digest, to_city = province.store.feedback.downward_set(NANJING)
    assert digest == delivery_digest(to_city)
    assert sorted(to_city.column("id").to_pylist()) == sorted([on_xuanwu["id"], on_qinhuai["id"]])
    assert to_city.schema == FEEDBACK_SCHEMA
    assert province.store.feedback.downward_set("320200")[1].num_rows == 0, "无锡 owns none"
    assert province.store.feedback.downward_set(XUANWU)[1].num_rows == 1

    generation = city.store.feedback.generation
    province.deliver(city)
    assert city.store.feedback.received_digest(JIANGSU) == digest
    assert city.store.feedback.generation > generation
    # The city passes on what it raised and what it received, each to its owner's branch.
    to_xuanwu = city.deliver(xuanwu)
    assert sorted(to_xuanwu.column("id").to_pylist()) == sorted(["rule-1", on_xuanwu["id"]])
    assert city.deliver(qinhuai).column("id").to_pylist() == [on_qinhuai["id"]]
    assert xuanwu.item("rule-1")["state"] == "open"
    # A delivery replaces the last one; an empty one clears what the parent delivered.
    empty = to_xuanwu.slice(0, 0)
    xuanwu.store.feedback.replace_received(NANJING, empty, delivery_digest(empty))
    assert xuanwu.feedback.list(include_closed=True) == []
    assert xuanwu.store.feedback.received_digest(NANJING) == delivery_digest(empty)
    # The city's own items stay when the province's set changes.
    city.store.feedback.replace_received(JIANGSU, empty, delivery_digest(empty))
    assert [i["id"] for i in city.feedback.list()] == ["rule-1"]


def test_an_item_about_an_entity_this_node_lacks_stays_open(nodes: dict[str, Node]) -> None:
    city = nodes[NANJING]
    ghost = pa.Table.from_pylist(
        [
            {
                "id": "g1",
                "kind": "rule",
                "entity": "vessel",
                "resource": None,
                "record_key": "K1",
                "owner_node": XUANWU,
                "owner_dept": None,
                "record_seq": 3,
                "reason": "r",
                "raised_node": JIANGSU,
                "raised_by": "rule",
                "raised_at": datetime.now(UTC),
            }
        ],
        schema=FEEDBACK_SCHEMA,
    )
    city.store.feedback.replace_received(JIANGSU, ghost, delivery_digest(ghost))
    assert city.states() == {"g1": "open"}
    assert city.store.feedback.counts(72)["open"] == 1


# ----- refusals ------------------------------------------------------------------------


def test_only_the_owner_answers_and_bad_objections_write_nothing(
    nodes: dict[str, Node],
) -> None:
    county, city, province = nodes[XUANWU], nodes[NANJING], nodes[JIANGSU]
    county.ingest_own({ZHANG: "张三"})
    sync_up(nodes)
    item = province.feedback.raise_objection(county.resource, ZHANG, "r", actor="p")
    province.deliver(city)
    head = city.store.head_seq
    for node in (province, city):
        with pytest.raises(UserError) as refused:
            node.feedback.respond(item["id"], "confirmed-correct", "", actor="x")
        assert f"record of node {XUANWU} (公安局): answer it there" in str(refused.value)
    assert city.store.head_seq == head, "nothing written"
    with pytest.raises(UserError, match="no feedback item 'nope' at node 320102"):
        county.feedback.respond("nope", "acknowledged", "", actor="x")
    with pytest.raises(UserError, match="'corrected' is not one of"):
        county.feedback.respond(item["id"], "corrected", "", actor="x")

    before = province.feedback.list(include_closed=True)
    generation = province.store.feedback.generation
    bad = [
        (("320199-GA-001", ZHANG, "r"), "resource '320199-GA-001' is not in the catalogue"),
        (
            (county.resource, "320102199912319999", "r"),
            f"person '320102199912319999' is not a record of resource {county.resource} "
            f"(node {XUANWU}) held at node {JIANGSU}",
        ),
        ((county.resource, ZHANG, "  "), "give a --reason"),
        ((county.resource, ZHANG, "again"), f"already open: item {item['id']}"),
    ]
    for (resource, key, reason), message in bad:
        with pytest.raises(UserError) as refused:
            province.feedback.raise_objection(resource, key, reason, actor="p")
        assert message in str(refused.value)
        assert "\n" not in str(refused.value)
    assert province.feedback.list(include_closed=True) == before
    assert province.store.feedback.generation == generation


# ----- discrepancies are feedback items too ----------------------------------------------


def test_a_discrepancy_is_an_item_owned_by_the_source_and_answered_as_a_discrepancy(
    nodes: dict[str, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, observer, city = nodes[XUANWU], nodes[QINHUAI], nodes[NANJING]
    source.ingest_own({ZHANG: "张三", LI: "李四"})
    observer.observe(source, {ZHANG: "张山", LI: "李四"})
    sync_up(nodes)

    # The city's cross-check (run by `feedback list` too) finds Zhang's name disagreeing.
    (item,) = city.feedback.list()
    (found,) = city.store.sources.discrepancies()
    assert item == item | {
        "id": found["id"],
        "kind": "discrepancy",
        "entity": "person",
        "resource": source.resource,
        "record_key": ZHANG,
        "owner_node": XUANWU,
        "owner_dept": "公安局",
        "reason": "name: source says '张三', 320104 人社局 observed '张山'",
        "raised_node": NANJING,
        "raised_by": "cross-check",
        "raised_at": found["found_at"].astimezone(UTC).isoformat(),
        "received_from": None,
        "state": "open",
        "closed": False,
        "overdue": False,
        "responses": [],
        "at_owner": False,
        "travels_to": XUANWU,
    }
    assert item["discrepancy"]["observed_value"] == "张山"
    # Counted once: on the discrepancies' own line, not among the rule items and objections.
    assert city.store.feedback.counts(72) == {
        "open": 0,
        "acknowledged": 0,
        "closed": 0,
        "overdue": 0,
    }
    assert city.feedback.counts()["open"] == 0
    assert city.store.sources.counts()["open"] == 1
    assert city.feedback.pending(50) == [], "the status page lists discrepancies apart"
    monkeypatch.setenv("TONGYUAN_CLOCK_SKEW_SECONDS", str(73 * 3600))
    assert [i["id"] for i in city.feedback.list(overdue=True)] == [item["id"]]
    monkeypatch.delenv("TONGYUAN_CLOCK_SKEW_SECONDS")

    # It reaches the source like any discrepancy; there it is the source's to resolve.
    city.deliver_discrepancies(source)
    at_source = source.item(item["id"])
    assert (at_source["kind"], at_source["at_owner"], at_source["received_from"]) == (
        "discrepancy",
        True,
        NANJING,
    )
    head = source.store.head_seq
    for node in (source, city):
        for answer in ("acknowledged", "confirmed-correct", "rejected"):
            with pytest.raises(UserError) as refused:
                node.feedback.respond(item["id"], answer, "", actor="x")
            message = str(refused.value)
            assert f"answer it with `tongyuan discrepancies resolve {item['id']}`" in message
            assert "person.name" in message
    assert source.store.head_seq == head, "no answer was logged"
    assert source.store.feedback.items() == []

    # Answered as a discrepancy: the source confirms its value (kept at the source).
    sources = SourcesService(source.config, source.store, source.catalog)
    sources.resolve(item["id"], confirm=True, note="户籍为准", actor="张警官")
    confirmed = source.item(item["id"])
    assert (confirmed["state"], confirmed["closed"]) == ("confirmed-correct", True)
    assert [(r["actor"], r["node"], r["note"]) for r in confirmed["responses"]] == [
        ("张警官", XUANWU, "户籍为准")
    ]
    assert source.feedback.list() == []
    assert city.item(item["id"])["state"] == "open", "the confirmation stays at the source"

    # The source takes the observed name after all: the cross-check above closes it.
    source.ingest_own({ZHANG: "张山", LI: "李四"})
    sync_up(nodes)
    corrected = city.item(item["id"])
    assert (corrected["state"], corrected["closed"], corrected["corrected_by_delete"]) == (
        "corrected",
        True,
        False,
    )
    assert corrected["corrected_at"] is not None
    assert corrected["discrepancy"]["resolution"] == "agreed"
    assert city.feedback.list() == []
    assert [i["id"] for i in city.feedback.list(state="corrected")] == [item["id"]]


def test_an_objection_to_a_record_owned_outside_the_subtree_is_refused(
    nodes: dict[str, Node],
) -> None:
    source, observer = nodes[XUANWU], nodes[QINHUAI]
    source.ingest_own({ZHANG: "张三"})
    # 秦淮's copy of 玄武's people: the records' owner is 玄武, beside 秦淮, not below it.
    observer.observe(source, {ZHANG: "张三"})
    generation = observer.store.feedback.generation
    with pytest.raises(UserError) as refused:
        observer.feedback.raise_objection(f"{QINHUAI}-RS-001", ZHANG, "姓名有误", actor="p")
    message = str(refused.value)
    assert f"is a record of node {XUANWU}, which is neither node {QINHUAI} nor below it" in (
        message
    )
    assert f"raise it at a node above {QINHUAI} whose subtree includes {XUANWU}" in message
    assert f"such as {NANJING}" in message
    assert observer.feedback.list(include_closed=True) == []
    assert observer.store.feedback.generation == generation


def test_the_status_page_reads_at_most_the_oldest_open_items(nodes: dict[str, Node]) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    county.ingest_own({ZHANG: "张三", LI: "李四", "320102200001011111": "赵六"})
    sync_up(nodes)
    raised = [
        city.feedback.raise_objection(county.resource, key, f"r{n}", actor="a")
        for n, key in enumerate((ZHANG, LI, "320102200001011111"))
    ]
    city.deliver(county)
    county.feedback.respond(raised[0]["id"], "rejected", "", actor="b")
    county.feedback.respond(raised[1]["id"], "acknowledged", "", actor="b")
    sync_up(nodes)
    # The oldest not closed first: the rejected one is filtered out by the store.
    items = city.store.feedback.items(include_closed=False, limit=1)
    assert [(i["id"], i["state"]) for i in items] == [(raised[1]["id"], "acknowledged")]
    assert [i["id"] for i in city.feedback.pending(5)] == [r["id"] for r in raised[1:]]
    assert city.feedback.pending(0) == []
    assert len(city.store.feedback.items(limit=2)) == 2, "closed ones too without the filter"
    assert [i["id"] for i in city.feedback.pending(5)] == [i["id"] for i in city.feedback.list()]
