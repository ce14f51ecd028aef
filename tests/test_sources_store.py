"""One source per attribute (一数一源) in the store, in-process on real DuckDB files:
observations from a resource that names another node as its source, the cross-check at
the tiers above against the authoritative records, and discrepancies delivered down.

Changes travel between stores through the real wire encoding, as a parent pulls them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from stores import NAMES, StoreNode, closing_all

from node.store.outbound import pseudonym
from node.store.sources import delivery_digest, norm_key_sql

GULOU, QINHUAI, NANJING, JIANGSU = "320102", "320104", "320100", "320000"
SOURCE = f"{GULOU}-GA-001"  # 公安局 at 320102: the source of person's attributes
OBSERVER = f"{QINHUAI}-RS-001"  # 人社局 at 320104: keeps copies of them
# The same two people as each side writes their ID numbers.
ZHANG, LI = "320102199001011234", "32010219800101002X"
ZHANG_AS_TYPED = "３２０１０２１９９００１０１１２３４"  # full-width digits
LI_AS_TYPED = "3201 0219\u30008001 01002x"  # spaces, an ideographic space, lower-case x


# ----- normalised keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        (ZHANG_AS_TYPED, ZHANG),
        ("32010219800101002x", LI),
        (LI_AS_TYPED, LI),
        ("\t320102 19900101 1234 ", ZHANG),
        ("３２０１０２１９８００１０１００２ｘ", LI),  # full-width lower-case x too
        ("\u3000" + LI + "\u3000", LI),
        (ZHANG, ZHANG),
        ("320102\u00a0199001011234", ZHANG),  # a no-break space (Excel exports)
        ("320102\u2002199001011234", ZHANG),  # an en space
    ],
)
def test_keys_are_matched_in_a_normalised_form(typed: str, normalised: str) -> None:
    (in_sql,) = duckdb.execute(f"SELECT {norm_key_sql('$1')}", [typed]).fetchone()  # type: ignore[misc]
    assert in_sql == normalised


# ----- nodes ---------------------------------------------------------------------------


class Node(StoreNode):
    """A node as in `stores`, with the discrepancies it holds at hand."""

    def discrepancies(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every discrepancy this node holds, open or not, by (source key, attribute)."""
        found = self.store.sources.discrepancies(include_resolved=True)
        return {(d["source_key"], d["attribute"]): d for d in found}


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    opened = {code: Node(tmp_path, code, name) for code, name in NAMES.items()}
    opened[GULOU].register(SOURCE, ["id_number", "name", "sex"], department="公安局")
    opened[QINHUAI].register(
        OBSERVER,
        ["id_number", "name", "sex"],
        department="人社局",
        source_node=GULOU,
        source_department="公安局",
    )
    yield from closing_all(opened)


def person(id_number: str, name: str, sex: str) -> dict[str, str]:
    return {"id_number": id_number, "name": name, "sex": sex}


def sync(nodes: dict[str, Node]) -> None:
    """The city pulls both counties, then cross-checks what it holds."""
    city = nodes[NANJING]
    city.pull(nodes[GULOU])
    city.pull(nodes[QINHUAI])
    city.store.sources.crosscheck()


# ----- observations --------------------------------------------------------------------


def test_an_observing_import_records_observations_and_never_writes_the_records(
    nodes: dict[str, Node],
) -> None:
    observer = nodes[QINHUAI]
    result = observer.ingest(
        OBSERVER, [person(ZHANG_AS_TYPED, "张三", "2"), person(LI_AS_TYPED, "李四", "")]
    )
    # One observation per non-empty value: Zhang's name and sex, Li's name.
    assert (result.entity, result.inserted) == ("observations", 3)
    assert observer.rows("SELECT count(*) AS n FROM tongyuan.rows_person") == [{"n": 0}]
    sql = (
        "SELECT record_key, norm_key, attribute, value, source_node, source_dept, "
        "origin_node, origin_dept, origin_resource FROM observations "
        "ORDER BY norm_key, attribute"
    )
    lineage = {
        "source_node": GULOU,
        "source_dept": "公安局",
        "origin_node": QINHUAI,
        "origin_dept": "人社局",
        "origin_resource": OBSERVER,
    }
    assert observer.rows(sql) == [
        {"record_key": LI_AS_TYPED, "norm_key": LI, "attribute": "name", "value": "李四"} | lineage,
        {"record_key": ZHANG_AS_TYPED, "norm_key": ZHANG, "attribute": "name", "value": "张三"}
        | lineage,
        {"record_key": ZHANG_AS_TYPED, "norm_key": ZHANG, "attribute": "sex", "value": "2"}
        | lineage,
    ]
    # Re-importing the same file records nothing; observations travel like data.
    again = observer.ingest(
        OBSERVER, [person(ZHANG_AS_TYPED, "张三", "2"), person(LI_AS_TYPED, "李四", "")]
    )
    assert again.changes == 0
    window = observer.store.read_window(0, 100)
    assert window.tables["observations"].num_rows == 3
    assert "person" not in window.tables


# ----- the cross-check -----------------------------------------------------------------


def test_the_crosscheck_opens_closes_reopens_and_withdraws_discrepancies(
    nodes: dict[str, Node],
) -> None:
    source, observer, city = nodes[GULOU], nodes[QINHUAI], nodes[NANJING]
    source.ingest(SOURCE, [person(ZHANG, "张三", "1"), person(LI, "李四", "2")])
    observer.ingest(
        OBSERVER, [person(ZHANG_AS_TYPED, "张三", "2"), person(LI_AS_TYPED, "李思", "2")]
    )
    sync(nodes)
    found = city.discrepancies()
    # Keys written differently still match; only the values that differ are kept.
    assert set(found) == {(ZHANG, "sex"), (LI, "name")}
    zhang = found[(ZHANG, "sex")]
    assert zhang == zhang | {
        "entity": "person",
        "record_key": ZHANG_AS_TYPED,
        "authoritative_value": "1",
        "observed_value": "2",
        "source_node": GULOU,
        "source_dept": "公安局",
        "source_resource": SOURCE,
        "observer_node": QINHUAI,
        "observer_dept": "人社局",
        "observer_resource": OBSERVER,
        "found_by": NANJING,
        "state": "open",
        "resolution": None,
    }
    assert found[(LI, "name")]["state"] == "open"
    assert found[(LI, "name")]["record_key"] == LI_AS_TYPED
    assert city.store.sources.counts() == {"open": 2, "resolved": 0, "observations": 4}
    assert city.store.sources.crosscheck() == 0, "nothing changed since the last run"

    # The source corrects Zhang's sex: the discrepancy closes as agreed.
    source.ingest(SOURCE, [person(ZHANG, "张三", "2"), person(LI, "李四", "2")])
    sync(nodes)
    zhang = city.discrepancies()[(ZHANG, "sex")]
    assert (zhang["state"], zhang["resolution"]) == ("resolved", "agreed")
    assert zhang["authoritative_value"] == "2"
    assert zhang["resolved_at"] is not None

    # A new disagreement on the same value opens it again.
    source.ingest(SOURCE, [person(ZHANG, "张三", "9"), person(LI, "李四", "2")])
    sync(nodes)
    zhang = city.discrepancies()[(ZHANG, "sex")]
    assert (zhang["state"], zhang["resolution"], zhang["resolved_at"]) == ("open", None, None)
    assert (zhang["authoritative_value"], zhang["observed_value"]) == ("9", "2")

    # The observer's next complete set no longer holds Li: its copy is withdrawn.
    snapshot = observer.ingest(OBSERVER, [person(ZHANG_AS_TYPED, "张三", "2")], snapshot=True)
    assert snapshot.deleted == 2  # Li's name and sex
    sync(nodes)
    li = city.discrepancies()[(LI, "name")]
    assert (li["state"], li["resolution"]) == ("resolved", "withdrawn")
    assert city.discrepancies()[(ZHANG, "sex")]["state"] == "open"
    assert city.store.sources.counts() == {"open": 1, "resolved": 1, "observations": 2}

    # The source deletes Zhang's record: nothing is left to disagree with.
    source.ingest(SOURCE, [person(LI, "李四", "2")], snapshot=True)
    sync(nodes)
    zhang = city.discrepancies()[(ZHANG, "sex")]
    assert (zhang["state"], zhang["resolution"]) == ("resolved", "record deleted")


# ----- downward delivery ---------------------------------------------------------------


def test_discrepancies_go_down_only_to_their_source_and_replace_what_came_before(
    nodes: dict[str, Node],
) -> None:
    source, observer, city, province = (nodes[c] for c in (GULOU, QINHUAI, NANJING, JIANGSU))
    source.ingest(SOURCE, [person(ZHANG, "张三", "1"), person(LI, "李四", "2")])
    observer.ingest(
        OBSERVER, [person(ZHANG_AS_TYPED, "张三", "2"), person(LI_AS_TYPED, "李思", "2")]
    )
    sync(nodes)
    province.pull(city)
    province.store.sources.crosscheck()

    def keys(table: pa.Table) -> set[tuple[str, str]]:
        return {(r["source_key"], r["attribute"]) for r in table.to_pylist()}

    both = {(ZHANG, "sex"), (LI, "name")}
    digest, to_source = city.store.sources.downward_set(GULOU)
    assert keys(to_source) == both
    assert digest == delivery_digest(to_source)
    # 320104 only observed: nothing is about its records.
    _, to_observer = city.store.sources.downward_set(QINHUAI)
    assert to_observer.num_rows == 0
    # The province finds the same and sends them to the city the source is in, not to 无锡.
    _, to_city = province.store.sources.downward_set(NANJING)
    assert keys(to_city) == both
    assert {r["found_by"] for r in to_city.to_pylist()} == {JIANGSU}
    assert province.store.sources.downward_set("320200")[1].num_rows == 0

    # The source receives its set; the digest says whether the next delivery is new.
    source.store.sources.replace_received(NANJING, to_source, digest)
    assert source.store.sources.received_digest(NANJING) == digest
    received = source.discrepancies()
    assert set(received) == both
    assert [d["found_at_nodes"] for d in received.values()] == [[NANJING], [NANJING]]
    assert source.store.sources.counts()["open"] == 2
    # The source corrects Zhang: the city's next set (Zhang agreed) replaces the first.
    source.ingest(SOURCE, [person(ZHANG, "张三", "2"), person(LI, "李四", "2")])
    sync(nodes)
    digest2, second = city.store.sources.downward_set(GULOU)
    assert digest2 != digest and digest2 == delivery_digest(second)
    source.store.sources.replace_received(NANJING, second, digest2)
    assert source.store.sources.received_digest(NANJING) == digest2
    received = source.discrepancies()
    assert len(source.store.sources.discrepancies(include_resolved=True)) == 2
    assert received[(ZHANG, "sex")]["resolution"] == "agreed"
    assert received[(LI, "name")]["state"] == "open"
    # An empty set clears what the city delivered.
    empty = second.slice(0, 0)
    source.store.sources.replace_received(NANJING, empty, delivery_digest(empty))
    assert source.discrepancies() == {}


def test_a_parents_own_observation_reaches_the_source_as_its_grading_lets_it_leave(
    nodes: dict[str, Node],
) -> None:
    """The city observes 玄武区's people itself under a conditional resource (ID number
    core, name important): a discrepancy it finds carries its own observation down as
    that observation would leave the city, never in clear."""
    source, city = nodes[GULOU], nodes[NANJING]
    observing = {
        "code": f"{NANJING}-MZ-001",
        "name": "民政局人口信息",
        "summary": "人口",
        "department": "民政局",
        "entity": "person",
        "update_frequency": "daily",
        "sharing": "conditional",
        "sharing_conditions": "仅限政务部门履职使用",
        "source_node": GULOU,
        "source_department": "公安局",
        "fields": [
            {"name": "id_number", "sensitivity": "core"},
            {"name": "name", "sensitivity": "important"},
        ],
    }
    city.catalog.add([observing], "people.toml", "tester", publish=True)
    source.ingest(SOURCE, [person(ZHANG, "张三", "1")])
    city.ingest(observing["code"], [{"id_number": ZHANG, "name": "张三丰"}])
    city.pull(source)
    city.store.sources.crosscheck()
    (held,) = city.store.sources.discrepancies()
    assert (held["observer_node"], held["observed_value"]) == (NANJING, "张三丰")

    digest, table = city.store.sources.downward_set(GULOU)
    (sent,) = table.to_pylist()
    key = city.store.outbound.federation_key()
    assert sent["observed_value"] == "张**"
    assert sent["record_key"] == pseudonym(ZHANG, key)
    assert sent["id"] == pseudonym(held["id"], key)
    assert (sent["source_key"], sent["authoritative_value"]) == (ZHANG, "张三")  # the source's
    assert "张三丰" not in str(sent) and digest == delivery_digest(table)
    # The source takes it as any set.
    source.store.sources.replace_received(NANJING, table, digest)
    assert source.discrepancies()[(ZHANG, "name")]["observed_value"] == "张**"
