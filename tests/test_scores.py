"""Quality scores in-process on real DuckDB files: the measures of one resource with known
gaps, timeliness against the update frequency, the weights, a resource without data, the
roll-up of the counties' reports at the city and the province, the parent's check of a
pulled report, the rows of the table and the CLI's CSV and JSON.

Reports travel between stores as a link carries them: `document()` at the child,
`check_report_document` and `save_child_report` at the parent.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from stores import NAMES, StoreNode, closing_all

from node.divisions import tier_of
from node.errors import UserError
from node.quality.operations import QualityService
from node.quality.report import (
    WEIGHTS,
    QualityReporter,
    check_report_document,
    flatten,
    overall,
    timeliness,
)
from node.quality.report_commands import report_command, report_csv
from node.store.scores import normalised_key_sql
from node.store.sources import norm_key_sql

XUANWU, QINHUAI, NANJING, JIANGSU = "320102", "320104", "320100", "320000"
FIELDS = ["id_number", "name", "sex", "phone"]
# The same person twice: the check character typed in lower and in upper case.
LOWER_X, UPPER_X = "11010519491231002x", "11010519491231002X"
LI, WANG = "320102199001011234", "320102198001010012"


class Node(StoreNode):
    """A node as in `stores`, with its quality reporter (never caching) at hand."""

    def __init__(self, base: Path, code: str, name: str) -> None:
        super().__init__(base, code, name)
        self.reporter = QualityReporter(self.config, self.store, max_age=0)

    def children(self, *codes: str) -> None:
        self.store.catalog.record_children((c, c, tier_of(c).value) for c in codes)

    def pull_report(self, child: Node) -> None:
        """What a link does with the child's `GetQuality` answer."""
        text, digest = child.reporter.document()
        if digest != self.store.scores.child_report_digest(child.code):
            self.store.scores.save_child_report(
                child.code, check_report_document(text, child.code), digest
            )

    def measures(self) -> dict[str, dict[str, Any]]:
        return {m["code"]: m for m in self.store.scores.resource_measures()}

    def last_change(self, resource: str) -> datetime:
        entry = self.catalog.tables.own_entry(resource)
        assert entry is not None and entry.last_change_at is not None
        return entry.last_change_at.replace(tzinfo=UTC)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    opened = {code: Node(tmp_path, code, name) for code, name in NAMES.items()}
    yield from closing_all(opened)


def person(id_number: str, name: str, sex: str = "", phone: str = "") -> dict[str, str]:
    return {"id_number": id_number, "name": name, "sex": sex, "phone": phone}


GA = f"{XUANWU}-GA-001"


def gappy_resource(node: Node) -> None:
    """Four records of 公安局 at 玄武区 with three blank cells (of twelve), one key twice
    in its normalised form, one held row, one warning, one open discrepancy."""
    node.register(GA, FIELDS)
    node.ingest(
        GA,
        [
            person(LOWER_X, "张三", "2", "13900000001"),
            person(UPPER_X, "张三", "2"),  # blank phone
            person(LI, "李四"),  # blank sex and phone
            person(WANG, "王五", "1", "13900000004"),
        ],
    )
    # 人社局 at the same node keeps copies of 公安局's names and has 李四 as 李思.
    node.register(
        f"{XUANWU}-RS-001",
        ["id_number", "name"],
        department="人社局",
        source_node=XUANWU,
        source_department="公安局",
    )
    node.ingest(f"{XUANWU}-RS-001", [person(LI, "李思"), person(WANG, "王五")])
    node.store.sources.crosscheck()
    store = node.store
    with store.db.write() as cur:
        (wang_seq,) = cur.execute(  # type: ignore[misc]
            "SELECT origin_seq FROM tongyuan.rows_person WHERE id_number = ?", [WANG]
        ).fetchone()
        now = datetime.now(UTC)
        flags = [
            # A warning on 王五's current version counts …
            ("person", XUANWU, WANG, wang_seq, "phone.pattern", "looks odd", now),
            # … one on a version 李四 no longer has does not.
            ("person", XUANWU, LI, 1, "name.length", "short", now),
        ]
        cur.executemany("INSERT INTO tongyuan.quality_flags VALUES (?, ?, ?, ?, ?, ?, ?)", flags)
        held = [
            ("q1", GA, "held"),  # counts
            ("q2", GA, "released"),  # settled: does not
            ("q3", f"{XUANWU}-GA-002", "held"),  # another resource's
        ]
        for qid, resource, state in held:
            cur.execute(
                "INSERT INTO tongyuan.quarantine VALUES (?, 'person', ?, ?, '公安局', NULL, ?, "
                "NULL, 'b1', 'people.csv row 9', ['id_number'], '{}', ['r'], ['why'], ?, ?, "
                "NULL, NULL)",
                [qid, "320102200001010000", XUANWU, resource, now, state],
            )


# ----- the measures of one resource ------------------------------------------------------


def test_a_resource_with_known_gaps_has_exact_scores(nodes: dict[str, Node]) -> None:
    county = nodes[XUANWU]
    gappy_resource(county)
    measures = county.measures()
    # Only the resource that writes records is scored; 人社局's copies are observations.
    assert list(measures) == [GA]
    m = measures[GA]
    assert m["records"] == 4 and m["attributes"] == 3
    assert (m["filled_cells"], m["cells"]) == (9, 12)
    assert m["completeness"] == pytest.approx(9 / 12)
    assert (m["held"], m["flagged"], m["questionable"]) == (1, 1, 2)
    assert m["validity"] == pytest.approx(1 - 2 / 5)
    assert m["distinct_keys"] == 3
    assert m["uniqueness"] == pytest.approx(3 / 4)
    assert m["discrepant"] == 1
    assert m["consistency"] == pytest.approx(3 / 4)
    assert m["update_frequency"] == "daily"
    assert m["published_on"] == datetime.now(UTC).date()

    resource = county.reporter.build(now=county.last_change(GA))["resources"][0]
    scores = resource["scores"]
    assert scores["timeliness"] == 1.0
    expected = 0.25 * 0.75 + 0.30 * 0.6 + 0.15 * 0.75 + 0.15 * 0.75 + 0.15 * 1.0
    assert scores["overall"] == pytest.approx(expected, abs=1e-4)
    assert resource["counts"] == {
        "empty_cells": 3,
        "questionable": 2,
        "duplicate_keys": 1,
        "discrepant": 1,
    }
    assert resource["held"] == 1 and resource["freshness"] == "fresh"


def test_a_resolved_discrepancy_and_a_deleted_record_no_longer_count(
    nodes: dict[str, Node],
) -> None:
    county = nodes[XUANWU]
    gappy_resource(county)
    # 人社局 corrects its copy: the next cross-check closes the discrepancy.
    county.ingest(f"{XUANWU}-RS-001", [person(LI, "李四")])
    county.store.sources.crosscheck()
    m = county.measures()[GA]
    assert (m["discrepant"], m["consistency"]) == (0, 1.0)


def test_measures_follow_every_change_they_depend_on(nodes: dict[str, Node]) -> None:
    """The counts are kept while nothing they depend on changed, and only then."""
    county = nodes[XUANWU]
    gappy_resource(county)
    assert county.measures()[GA]["flagged"] == 1
    store = county.store
    with store.db.write() as cur:
        cur.execute("DELETE FROM tongyuan.quality_flags")
    assert county.measures()[GA]["flagged"] == 0
    with store.db.write() as cur:
        cur.execute("UPDATE tongyuan.quarantine SET state = 'dropped' WHERE id = 'q1'")
    assert county.measures()[GA]["held"] == 0
    county.ingest(GA, [person(LI, "李四", "1", "13900000003")])
    m = county.measures()[GA]
    assert (m["filled_cells"], m["records"]) == (11, 4)


def test_validity_counts_what_the_rule_library_holds_back_and_flags(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    """The same measures with the real screening of an import: a blocking rule holds a row
    in quarantine, a warning rule flags one that is written."""
    county = nodes[XUANWU]
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'name = "test"\nversion = "1.0.0"\n\n'
        '[[rules]]\nid = "person.name.length"\nentity = "person"\nattribute = "name"\n'
        'check = "length"\nmin = 2\n\n'
        '[[rules]]\nid = "person.sex.agrees"\nentity = "person"\nattribute = "sex"\n'
        'check = "id_sex"\nid_attribute = "id_number"\nseverity = "warning"\n',
        encoding="utf-8",
    )
    QualityService(county.config, county.store, county.reporter).rules_local(
        path=str(rules), actor="tester"
    )
    county.register(GA, FIELDS)
    county.ingest(
        GA,
        [
            person(LI, "李四", "1", "13900000003"),
            person(WANG, "王五", "2", "13900000004"),  # the ID number says male: a warning
            person(UPPER_X, "张", "2", "13900000001"),  # a one-character name: held
        ],
    )
    m = county.measures()[GA]
    assert (m["records"], m["held"], m["flagged"]) == (2, 1, 1)
    assert m["validity"] == pytest.approx(1 - 2 / 3)


def test_a_resource_without_records_has_no_data_rather_than_a_score(
    nodes: dict[str, Node],
) -> None:
    county = nodes[XUANWU]
    county.register(GA, FIELDS)
    m = county.measures()[GA]
    assert m["records"] == 0
    for name in ("completeness", "validity", "uniqueness", "consistency"):
        assert m[name] is None, name
    doc = county.reporter.report()
    scores = doc["resources"][0]["scores"]
    # Published today and never changed: fresh by its publication, but nothing to judge.
    assert scores["timeliness"] == 1.0
    assert scores["overall"] is None
    assert doc["rollup"]["scores"] == dict.fromkeys(scores)
    assert doc["rollup"]["records"] == 0


def test_held_rows_alone_still_lower_validity(nodes: dict[str, Node]) -> None:
    county = nodes[XUANWU]
    county.register(GA, FIELDS)
    with county.store.db.write() as cur:
        cur.execute(
            "INSERT INTO tongyuan.quarantine VALUES ('q1', 'person', ?, ?, '公安局', NULL, ?, "
            "NULL, 'b1', 'people.csv row 2', ['id_number'], '{}', ['r'], ['why'], now(), "
            "'held', NULL, NULL)",
            [LI, XUANWU, GA],
        )
    m = county.measures()[GA]
    assert (m["records"], m["held"], m["validity"], m["completeness"]) == (0, 1, 0.0, None)


def test_fast_key_normalisation_agrees_with_the_cross_checks() -> None:
    keys = [
        LOWER_X,
        UPPER_X,
        "３２０１０２１９９００１０１１２３４",
        "3201 0219\u30008001 01002x",
        "\t320102 19900101 1234 ",
        "320102\u00a0199001011234",
        "house-A/12_b",
        "房屋-1号",
        "",
    ]
    sql = f"SELECT {norm_key_sql('k')} = {normalised_key_sql('k')} FROM unnest($1) t(k)"
    assert all(row[0] for row in duckdb.execute(sql, [keys]).fetchall())


# ----- timeliness and weights ---------------------------------------------------------------


def test_timeliness_is_full_for_one_period_then_decays() -> None:
    changed = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    at = {hours: changed + timedelta(hours=hours) for hours in (0, 24, 36, 48, 96)}
    assert timeliness("daily", changed, None, at[0]) == 1.0
    assert timeliness("daily", changed, None, at[24]) == 1.0
    assert timeliness("daily", changed, None, at[36]) == pytest.approx(24 / 36)
    assert timeliness("daily", changed, None, at[48]) == pytest.approx(0.5)
    assert timeliness("daily", changed, None, at[96]) == pytest.approx(0.25)
    assert timeliness("weekly", changed, None, at[96]) == 1.0
    # Never changed: counted from the publication date (midnight UTC).
    published = date(2025, 3, 1)
    assert timeliness("daily", None, published, changed + timedelta(days=3)) == pytest.approx(
        24 / (3 * 24 + 8)
    )
    assert timeliness("daily", None, None, changed) == 0.0
    assert timeliness("fortnightly", changed, None, changed) is None


def test_the_report_decays_timeliness_with_the_clock(nodes: dict[str, Node]) -> None:
    county = nodes[XUANWU]
    gappy_resource(county)
    changed = county.last_change(GA)
    clock = iter([changed + timedelta(days=2), changed + timedelta(days=4)])
    reporter = QualityReporter(county.config, county.store, clock=lambda: next(clock), max_age=0)
    first, second = reporter.report(), reporter.report()
    assert first["resources"][0]["scores"]["timeliness"] == 0.5
    assert first["resources"][0]["freshness"] == "late"
    assert second["resources"][0]["scores"]["timeliness"] == 0.25
    assert second["resources"][0]["freshness"] == "stale"
    assert reporter.latest() == second


def test_overall_is_the_weighted_mean_of_the_scores_present() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    full = dict.fromkeys(WEIGHTS, 1.0)
    assert overall(full) == pytest.approx(1.0)
    assert overall({**full, "validity": 0.0}) == pytest.approx(0.70)
    assert overall({**full, "completeness": 0.5, "timeliness": 0.0}) == pytest.approx(
        1 - 0.25 * 0.5 - 0.15
    )
    # Without a timeliness (unknown frequency) the other weights are renormalised.
    without = {**full, "timeliness": None, "validity": 0.5}
    assert overall(without) == pytest.approx((0.25 + 0.15 + 0.15 + 0.30 * 0.5) / 0.85)
    assert overall({**dict.fromkeys(WEIGHTS), "timeliness": 1.0}) is None


def test_the_report_states_its_weights_and_its_digest_ignores_the_time(
    nodes: dict[str, Node],
) -> None:
    county = nodes[XUANWU]
    gappy_resource(county)
    changed = county.last_change(GA)
    clock = iter([changed, changed + timedelta(seconds=5), changed + timedelta(days=3)])
    reporter = QualityReporter(county.config, county.store, clock=lambda: next(clock), max_age=0)
    text1, digest1 = reporter.document()
    text2, digest2 = reporter.document()
    assert json.loads(text1)["weights"] == WEIGHTS
    assert json.loads(text1)["generated_at"] != json.loads(text2)["generated_at"]
    assert digest1 == digest2
    _, digest3 = reporter.document()  # three days later: timeliness fell
    assert digest3 != digest1


def test_documents_are_cached_for_a_moment(nodes: dict[str, Node]) -> None:
    county = nodes[XUANWU]
    county.register(GA, FIELDS)
    reporter = QualityReporter(county.config, county.store, max_age=60)
    assert reporter.latest() is None
    text, digest = reporter.document()
    county.ingest(GA, [person(LI, "李四", "1", "13900000003")])
    assert reporter.document() == (text, digest)
    assert reporter.report()["resources"][0]["records"] == 1
    assert reporter.document()[1] != digest


# ----- county → city → province ---------------------------------------------------------------


def two_counties(nodes: dict[str, Node]) -> None:
    """玄武区: the gappy resource (4 records); 秦淮区: 6 clean records and a resource of
    organisations still empty; the city holds a small resource of its own; the province
    pulls the city."""
    gappy_resource(nodes[XUANWU])
    qinhuai = nodes[QINHUAI]
    qinhuai.register(f"{QINHUAI}-GA-001", FIELDS)
    qinhuai.register(
        f"{QINHUAI}-MZ-001", ["uscc", "name"], department="民政局", entity="legal_entity"
    )
    qinhuai.ingest(
        f"{QINHUAI}-GA-001",
        [person(f"32010419900101{i:04d}", f"人{i}", "1", f"1390000{i:04d}") for i in range(6)],
    )
    city = nodes[NANJING]
    city.register(f"{NANJING}-GA-001", ["id_number", "name"])
    city.ingest(f"{NANJING}-GA-001", [person("320100199001010000", "市民")])
    city.children(XUANWU, QINHUAI)
    city.pull_report(nodes[XUANWU])
    city.pull_report(nodes[QINHUAI])
    province = nodes[JIANGSU]
    province.children(NANJING)
    province.pull_report(city)


def test_the_province_lists_each_county_side_by_side_and_rolled_up(
    nodes: dict[str, Node],
) -> None:
    two_counties(nodes)
    doc = nodes[JIANGSU].reporter.report()
    assert (doc["code"], doc["tier"], doc["resources"], doc["pending"]) == (
        JIANGSU,
        "province",
        [],
        [],
    )
    (city,) = doc["children"]
    assert city["code"] == NANJING
    assert [c["code"] for c in city["children"]] == [XUANWU, QINHUAI]
    xuanwu, qinhuai = city["children"]
    assert [r["code"] for r in xuanwu["resources"]] == [GA]
    assert [r["code"] for r in qinhuai["resources"]] == [f"{QINHUAI}-GA-001", f"{QINHUAI}-MZ-001"]
    assert qinhuai["rollup"]["scores"]["completeness"] == 1.0

    # The city's line rolls up its own resource and both counties', weighted by records.
    rolled = city["rollup"]
    assert (rolled["nodes"], rolled["resources"], rolled["records"], rolled["held"]) == (
        3,
        4,
        11,
        1,
    )
    weights = {GA: 4, f"{QINHUAI}-GA-001": 6, f"{NANJING}-GA-001": 1}
    scores = {r["code"]: r["scores"] for r in city["resources"] + xuanwu["resources"]}
    scores |= {r["code"]: r["scores"] for r in qinhuai["resources"]}
    for name in ("completeness", "uniqueness", "consistency", "timeliness"):
        mean = sum(weights[c] * scores[c][name] for c in weights) / 11
        assert rolled["scores"][name] == pytest.approx(mean, abs=1e-4), name
    # Validity weighs the held row too: 4 + 1 at 玄武区.
    validity = (5 * scores[GA]["validity"] + 6 + 1) / 12
    assert rolled["scores"]["validity"] == pytest.approx(validity, abs=1e-4)
    assert rolled["scores"]["overall"] == pytest.approx(overall(rolled["scores"]), abs=1e-4)
    # The province's line covers the same records (it has none of its own).
    assert doc["rollup"]["records"] == 11
    assert doc["rollup"]["scores"] == rolled["scores"]


def test_a_child_not_yet_reported_is_pending(nodes: dict[str, Node]) -> None:
    city = nodes[NANJING]
    city.children(XUANWU, QINHUAI)
    nodes[XUANWU].register(GA, FIELDS)
    city.pull_report(nodes[XUANWU])
    doc = city.reporter.report()
    assert [c["code"] for c in doc["children"]] == [XUANWU]
    assert doc["pending"] == [{"code": QINHUAI, "name": "秦淮区"}]
    # A child removed from the tree is forgotten with its report.
    city.store.scores.forget_child(XUANWU)
    assert city.store.scores.child_report_digest(XUANWU) == ""
    assert city.store.scores.child_reports() == {}


def test_an_unchanged_report_is_not_stored_again(nodes: dict[str, Node]) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    county.register(GA, FIELDS)
    city.children(XUANWU)
    city.pull_report(county)
    digest = city.store.scores.child_report_digest(XUANWU)
    assert digest == county.reporter.document()[1]
    county.ingest(GA, [person(LI, "李四")])
    city.pull_report(county)
    assert city.store.scores.child_report_digest(XUANWU) != digest
    assert city.store.scores.child_reports()[XUANWU]["resources"][0]["records"] == 1


def test_flatten_lists_nodes_in_tree_order(nodes: dict[str, Node]) -> None:
    two_counties(nodes)
    rows = flatten(nodes[JIANGSU].reporter.report())
    lines = [(r["node"], r["kind"], r["resource"], r["depth"]) for r in rows]
    assert lines == [
        (JIANGSU, "rollup", "", 0),
        (NANJING, "rollup", "", 1),
        (NANJING, "resource", f"{NANJING}-GA-001", 1),
        (XUANWU, "rollup", "", 2),
        (XUANWU, "resource", GA, 2),
        (QINHUAI, "rollup", "", 2),
        (QINHUAI, "resource", f"{QINHUAI}-GA-001", 2),
        (QINHUAI, "resource", f"{QINHUAI}-MZ-001", 2),
    ]
    empty = rows[-1]
    assert empty["records"] == 0 and empty["overall"] is None
    assert rows[0]["resources"] == 4 and rows[0]["nodes"] == 4


# ----- the parent's check of a pulled report -------------------------------------------------


def county_report(nodes: dict[str, Node]) -> dict[str, Any]:
    nodes[XUANWU].register(GA, FIELDS)
    nodes[XUANWU].ingest(GA, [person(LI, "李四")])
    return dict(json.loads(nodes[XUANWU].reporter.document()[0]))


def test_a_pulled_report_is_checked_before_it_is_kept(nodes: dict[str, Node]) -> None:
    doc = county_report(nodes)
    kept = check_report_document(json.dumps(doc), XUANWU)
    assert json.loads(kept) == doc

    def refused(changed: Any, child: str = XUANWU) -> str:
        text = changed if isinstance(changed, str) else json.dumps(changed)
        with pytest.raises(UserError) as caught:
            check_report_document(text, child)
        return str(caught.value)

    assert "not JSON" in refused("{")
    assert "expected a JSON object" in refused([doc])
    assert "report of node '320102', not 320104" in refused(doc, QINHUAI)
    bad_score = json.loads(json.dumps(doc))
    bad_score["resources"][0]["scores"]["validity"] = 1.5
    assert "number from 0 to 1" in refused(bad_score)
    foreign = json.loads(json.dumps(doc))
    foreign["resources"][0]["code"] = f"{QINHUAI}-GA-001"
    assert "outside this node's prefix" in refused(foreign)
    # A county's report holding another county's, or a city's holding one of another city.
    sneaky = {**doc, "children": [{**doc, "code": QINHUAI}]}
    assert "not below 320102" in refused(sneaky)
    city_doc = {**doc, "code": NANJING, "tier": "city", "resources": []}
    elsewhere = {**doc, "code": "320205", "resources": []}
    assert "320205, which is not below 320100" in refused(
        {**city_doc, "children": [elsewhere]}, NANJING
    )
    assert "pending child" in refused({**doc, "pending": ["320104"]})
    assert "format" in refused({**doc, "format": 99})
    assert "tier" in refused({**doc, "tier": "province"})


# ----- the command -----------------------------------------------------------------------------


def test_the_command_prints_csv_json_and_a_table(nodes: dict[str, Node]) -> None:
    two_counties(nodes)
    province = nodes[JIANGSU]
    expected = flatten(province.reporter.report())
    province.store.close()  # the command opens the store itself, as on a stopped node
    runner = CliRunner()
    obj = {"dir": province.directory}

    result = runner.invoke(report_command, ["--csv"], obj=obj)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["node"], r["kind"], r["resource"]) for r in rows] == [
        (r["node"], r["kind"], r["resource"]) for r in expected
    ]
    qinhuai_empty = rows[-1]
    assert qinhuai_empty["records"] == "0" and qinhuai_empty["overall"] == ""
    assert float(rows[0]["completeness"]) == pytest.approx(expected[0]["completeness"])

    result = runner.invoke(report_command, ["--json"], obj=obj)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [c["code"] for c in doc["children"][0]["children"]] == [XUANWU, QINHUAI]

    result = runner.invoke(report_command, [], obj=obj, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in ("江苏省", "南京市", "玄武区", "秦淮区", GA, "no data", "overall"):
        assert text in result.output, text

    assert runner.invoke(report_command, ["--csv", "--json"], obj=obj).exit_code != 0


def test_csv_of_a_report_without_children() -> None:
    doc = {
        "code": XUANWU,
        "name": "玄武区",
        "tier": "county",
        "resources": [],
        "children": [],
        "pending": [],
    }
    lines = report_csv(doc).splitlines()
    assert lines[0].startswith("node,node_name,tier,kind,resource,resource_name,records,")
    assert lines[1].startswith(f"{XUANWU},玄武区,county,rollup,,,0,")
