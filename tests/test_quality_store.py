"""The rule library in the store, in-process on real DuckDB files: rule files refused with
file and line, rows held in quarantine with rule and reason instead of lost, warnings
flagged, release and drop, a parent holding back a child's bad rows, and libraries
passed down in layers.

Changes travel between stores through the real wire encoding, as a parent pulls them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from stdnum.cn import ric
from stores import StoreNode, closing_all

from node.demo_data import fake_legal_entities, uscc_check_char
from node.errors import UserError
from node.model import load_base_model
from node.model.files import ModelFileError
from node.quality.files import check_library_json, load_rules
from node.quality.operations import QualityService
from node.quality.report import QualityReporter
from node.store import IngestResult
from node.store.quality import NEVER_SEQ
from node.wire import decode_batch, encode_window

XUANWU, NANJING, JIANGSU = "320102", "320100", "320000"
BASE_RULES = Path(__file__).resolve().parent.parent / "config" / "base-rules.toml"
FIELDS = ["id_number", "name", "sex", "birth_date"]


def id_number(division: str, born: str, serial: str) -> str:
    """A valid GB 11643 number (stdnum computes the check digit)."""
    body = division + born + serial
    return body + ric.calc_check_digit(body + "0")


def wrong_check(number: str) -> str:
    return number[:-1] + ("0" if number[-1] != "0" else "1")


class Node(StoreNode):
    """A node as in `stores` (named by its code) whose 公安局 publishes one resource of
    people, with its quality service at hand."""

    def __init__(self, base: Path, code: str) -> None:
        super().__init__(base, code, code)
        self.quality = QualityService(
            self.config, self.store, QualityReporter(self.config, self.store)
        )
        self.resource = f"{code}-GA-001"
        self.register(self.resource, FIELDS, name="户籍人口")

    def ingest_own(self, rows: list[dict[str, str]], *, snapshot: bool = False) -> IngestResult:
        """Import rows into this node's resource; they sit at "line <i + 2>" of the file."""
        return self.ingest(self.resource, rows, snapshot=snapshot, position="line")

    def deliver_rules(self, child: Node) -> None:
        """The parent's library reaches the child, as a link delivers it."""
        digest, library = self.store.quality.downward_library()
        child.store.quality.receive_library(self.code, library, digest)

    def people(self) -> dict[str, dict[str, Any]]:
        rows = self.rows(
            "SELECT id_number, name, sex, birth_date, origin_node FROM tongyuan.rows_person "
            "WHERE NOT _deleted"
        )
        return {r["id_number"]: r for r in rows}

    def held(self) -> list[dict[str, Any]]:
        return self.quality.quarantine_list()["rows"]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    opened = {code: Node(tmp_path, code) for code in (XUANWU, NANJING, JIANGSU)}
    yield from closing_all(opened)


def person(number: str, name: str, sex: str, born: str) -> dict[str, str]:
    return {"id_number": number, "name": name, "sex": sex, "birth_date": born}


GOOD_1 = id_number(XUANWU, "19900101", "123")
GOOD_2 = id_number(XUANWU, "19850615", "246")
GOOD_3 = id_number(XUANWU, "19700301", "031")  # 17th digit 3: male
BAD_CHECK = wrong_check(id_number(XUANWU, "19800101", "002"))
BAD_BIRTH = id_number(XUANWU, "19791231", "012")
BAD_DIVISION = id_number("999999", "19800101", "004")

# ----- rule files ----------------------------------------------------------------------


def rules_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text('name = "jiangsu"\nversion = "1.0.0"\n\n' + body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("[[rules]\nid = 'x'\n", 4, "not valid TOML"),
        (
            '[[rules]]\nid = "p.nick"\nentity = "person"\nattribute = "nickname"\n'
            'check = "required"\n',
            7,
            "person has no attribute 'nickname'",
        ),
        (
            '[[rules]]\nid = "p.phone"\nentity = "person"\nattribute = "phone"\n'
            'check = "pattern"\npattern = "1[3-9"\n',
            9,
            "does not compile",
        ),
        (
            '[[rules]]\nid = "p.sex"\nentity = "person"\nattribute = "sex"\n'
            'check = "code_list"\nvalues = []\n',
            9,
            "values is an empty code list",
        ),
        (
            '[[rules]]\nid = "p.born"\nentity = "person"\nattribute = "birth_date"\n'
            'check = "range"\nmin = "yesterday"\n',
            9,
            'min must be a date "YYYY-MM-DD" or "today"',
        ),
        (
            '[[rules]]\nid = "l.uscc"\nentity = "legal_entity"\nattribute = "uscc"\n'
            'check = "identifier"\nscheme = "GB 11643"\n',
            9,
            "declared GB 32100",
        ),
        (
            '[[rules]]\nid = "x"\nentity = "house"\nattribute = "floors"\n'
            'check = "required"\nseverity = "fatal"\n',
            9,
            "severity must be blocking or warning",
        ),
        (
            '[[rules]]\nid = "x"\nentity = "person"\nattribute = "name"\ncheck = "required"\n'
            '\n[[rules]]\nid = "x"\nentity = "person"\nattribute = "sex"\ncheck = "required"\n',
            11,
            "rule id 'x' is used twice (first at line 5)",
        ),
    ],
)
def test_a_bad_rule_file_is_refused_with_file_and_line_and_nothing_changes(
    nodes: dict[str, Node], tmp_path: Path, body: str, line: int, message: str
) -> None:
    county = nodes[XUANWU]
    path = rules_file(tmp_path, body)
    with pytest.raises(ModelFileError) as caught:
        county.quality.rules_publish(path=str(path), actor="tester")
    assert f"{path}:{line}: " in str(caught.value) and message in str(caught.value)
    assert county.quality.rules_show()["layers"] == []


def test_every_kind_of_check_says_what_is_wrong(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        "\n".join(
            f'[[rules]]\nid = "{i}"\nentity = "{e}"\nattribute = "{a}"\ncheck = "{c}"\n{extra}\n'
            for i, e, a, c, extra in [
                ("req", "person", "phone", "required", ""),
                ("typ", "person", "address", "type", 'as = "integer"'),
                ("pat", "person", "phone", "pattern", 'pattern = "1[0-9]{10}"'),
                ("len", "person", "name", "length", "min = 2\nmax = 3"),
                ("codes", "person", "sex", "code_list", 'values = ["1", "2"]'),
                ("born", "person", "birth_date", "range", 'min = "1900-01-01"\nmax = "today"'),
                ("sex", "person", "sex", "id_sex", 'id_attribute = "id_number"'),
                ("rep", "legal_entity", "legal_rep_id_number", "reference",
                 'relation = "legal_representative"'),
            ]
        ),
    )  # fmt: skip
    layer = load_rules(path, load_base_model(), XUANWU, local=False)
    assert [r.check for r in layer.rules] == [
        "required", "type", "pattern", "length", "code_list", "range", "id_sex", "reference"
    ]  # fmt: skip
    with pytest.raises(ModelFileError, match="has no rules"):
        load_rules(rules_file(tmp_path, ""), load_base_model(), XUANWU, local=True)


# ----- quarantine on import --------------------------------------------------------------


def test_an_import_holds_bad_rows_with_rule_and_reason_and_applies_the_rest(
    nodes: dict[str, Node],
) -> None:
    county = nodes[XUANWU]
    county.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    rows = [
        person(GOOD_1, "张三", "1", "1990-01-01"),
        person(BAD_CHECK, "李四", "2", "1980-01-01"),
        person(GOOD_2, "王五", "2", "1985-06-15"),
        person(BAD_BIRTH, "赵六", "1", "1979-12-30"),
        person(GOOD_3, "钱七", "2", "1970-03-01"),  # sex disagrees with the ID: a warning
        person(BAD_DIVISION, "孙八", "1", "1980-01-01"),
    ]
    result = county.ingest_own(rows)
    assert (result.inserted, result.quarantined, result.flagged) == (3, 3, 1)
    assert result.held_by_rule == (
        ("person.id_number.gb11643 (320102)", 2),
        ("person.birth_date.agrees (320102)", 1),
    )
    held = {r["record_key"]: r for r in county.held()}
    assert set(held) == {BAD_CHECK, BAD_BIRTH, BAD_DIVISION}
    assert held[BAD_CHECK]["source"] == "people.csv line 3"
    expected = ric.calc_check_digit(BAD_CHECK[:-1] + "0")
    assert held[BAD_CHECK]["reasons"] == [f"GB 11643: check digit {expected} expected"]
    assert held[BAD_BIRTH]["reasons"] == [
        "birth date 1979-12-30 does not agree with the ID number (which says 1979-12-31)"
    ]
    assert held[BAD_DIVISION]["reasons"] == ["GB 11643: division code 999999 unknown"]
    assert held[BAD_DIVISION]["row"] == {
        "id_number": BAD_DIVISION, "name": "孙八", "sex": "1", "birth_date": "1980-01-01"
    }  # fmt: skip
    assert (held[BAD_DIVISION]["origin_node"], held[BAD_DIVISION]["origin_dept"]) == (
        XUANWU,
        "公安局",
    )
    # Held rows are not in the store; the warned row is, with its flag.
    assert set(county.people()) == {GOOD_1, GOOD_2, GOOD_3}
    flags = county.store.query("SELECT record_key, rule FROM tongyuan.quality_flags").to_pylist()
    assert flags == [{"record_key": GOOD_3, "rule": "person.sex.agrees (320102)"}]

    # A snapshot of the same file does not delete the records whose rows wait in quarantine.
    again = county.ingest_own(rows, snapshot=True)
    assert (again.deleted, again.quarantined) == (0, 3)


def test_release_re_validates_and_drop_gives_up(nodes: dict[str, Node], tmp_path: Path) -> None:
    county = nodes[XUANWU]
    local = rules_file(
        tmp_path,
        '[[rules]]\nid = "name.short"\nentity = "person"\nattribute = "name"\n'
        'check = "length"\nmax = 2\n',
    )
    county.quality.rules_local(path=str(local), actor="tester")
    county.ingest_own(
        [
            person(GOOD_1, "张三", "1", "1990-01-01"),
            person(GOOD_2, "欧阳娜娜", "2", "1985-06-15"),
            person(GOOD_3, "司马相如", "1", "1970-03-01"),
        ]
    )
    held = county.held()
    assert [(r["record_key"], r["rules"]) for r in held] == [
        (GOOD_2, ["name.short (local)"]),
        (GOOD_3, ["name.short (local)"]),
    ]
    # Still failing: nothing is applied and the rows stay held once (not twice).
    answer = county.quality.quarantine_release(everything=True, actor="tester")
    assert answer == {"released": 0, "still_held": 2, "rows": 2}
    assert len(county.held()) == 2 and set(county.people()) == {GOOD_1}
    # The local rule goes: a release applies them now.
    county.quality.rules_local(remove=True, actor="tester")
    answer = county.quality.quarantine_release(ids=[held[0]["id"]], actor="auditor")
    assert answer == {"released": 1, "still_held": 0, "rows": 1}
    assert set(county.people()) == {GOOD_1, GOOD_2}
    assert county.people()[GOOD_2]["name"] == "欧阳娜娜"
    dropped = county.quality.quarantine_drop(ids=[held[1]["id"]], actor="auditor")
    assert dropped == {"dropped": 1}
    assert county.held() == [] and set(county.people()) == {GOOD_1, GOOD_2}
    states = {
        r["record_key"]: (r["state"], r["settled_by"])
        for r in county.quality.quarantine_list(state="all")["rows"]
    }
    assert states == {GOOD_2: ("released", "auditor"), GOOD_3: ("dropped", "auditor")}
    with pytest.raises(Exception, match="already dropped"):
        county.quality.quarantine_release(ids=[held[1]["id"]], actor="auditor")


# ----- a parent holds back a child's bad rows ----------------------------------------------


def test_a_parent_holds_a_childs_bad_rows_and_a_correction_supersedes_them(
    nodes: dict[str, Node],
) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    # The county has no rules yet; the city does.
    county.ingest_own(
        [person(GOOD_1, "张三", "1", "1990-01-01"), person(BAD_CHECK, "李四", "2", "1980-01-01")]
    )
    city.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    city.pull(county)
    assert set(city.people()) == {GOOD_1}
    (held,) = city.held()
    assert (held["received_from"], held["origin_node"], held["source"]) == (
        XUANWU,
        XUANWU,
        f"child {XUANWU}",
    )
    (version,) = county.store.query(
        f"SELECT origin_seq FROM tongyuan.rows_person WHERE id_number = '{BAD_CHECK}'"
    ).to_pylist()
    assert held["row"]["name"] == "李四" and held["origin_seq"] == version["origin_seq"]
    # The held row becomes a feedback item for its owner.
    items = city.store.query(
        "SELECT kind, owner_node, owner_dept, record_key, record_seq, reason FROM tongyuan.feedback"
    ).to_pylist()
    assert items == [
        {
            "kind": "rule",
            "owner_node": XUANWU,
            "owner_dept": "公安局",
            "record_key": BAD_CHECK,
            "record_seq": version["origin_seq"],
            "reason": f"person.id_number.gb11643 (320100): {held['reasons'][0]}",
        }
    ]
    # The county deletes the bad record (a correction): the held version is superseded.
    county.ingest_own([person(GOOD_1, "张三", "1", "1990-01-01")], snapshot=True)
    city.pull(county)
    assert city.held() == []
    (settled,) = city.quality.quarantine_list(state="all")["rows"]
    assert settled["state"] == "superseded"


# ----- libraries in layers ----------------------------------------------------------------


def test_libraries_pass_down_in_layers_and_local_rules_stay(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    county, city, province = nodes[XUANWU], nodes[NANJING], nodes[JIANGSU]
    province.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    city_rules = rules_file(
        tmp_path,
        '[[rules]]\nid = "phone.required"\nentity = "person"\nattribute = "phone"\n'
        'check = "required"\nseverity = "warning"\n',
    )
    city.quality.rules_local(path=str(city_rules), actor="tester")
    province.deliver_rules(city)
    city.deliver_rules(county)
    shown = county.quality.rules_show()
    assert [layer["label"] for layer in shown["layers"]] == ["base 1.0.0 (320000)"]
    assert [layer["label"] for layer in city.quality.rules_show()["layers"]] == [
        "base 1.0.0 (320000)",
        "jiangsu 1.0.0 (local)",
    ]
    # Importing without the phone column: that rule would not apply anyway.
    result = county.ingest_own([person(BAD_CHECK, "李四", "2", "1980-01-01")])
    assert result.held_by_rule == (("person.id_number.gb11643 (320000)", 1),)
    # The same file again with a changed version of the library: the digest moves on.
    before = county.store.quality.received_digest(NANJING)
    city.quality.rules_publish(path=str(city_rules), actor="tester")
    city.deliver_rules(county)
    assert county.store.quality.received_digest(NANJING) != before
    labels = [layer["label"] for layer in county.quality.rules_show()["layers"]]
    assert labels == ["base 1.0.0 (320000)", "jiangsu 1.0.0 (320100)"]
    # Republishing other rules under the same version is refused.
    changed = rules_file(
        tmp_path,
        '[[rules]]\nid = "phone.required"\nentity = "person"\nattribute = "phone"\n'
        'check = "required"\n',
    )
    with pytest.raises(Exception, match="raise the version"):
        city.quality.rules_publish(path=str(changed), actor="tester")


# ----- what the review of the first version found ------------------------------------------


def test_a_held_row_mid_batch_loses_nothing_two_tiers_up(nodes: dict[str, Node]) -> None:
    """Rows held at the city leave gaps in its sequence numbers, never overlaps: what
    follows (another entity, a later batch) reaches the province whole."""
    county, city, province = nodes[XUANWU], nodes[NANJING], nodes[JIANGSU]
    city.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    county.ingest_own(
        [
            person(BAD_CHECK, "李四", "2", "1980-01-01"),
            person(GOOD_1, "张三", "1", "1990-01-01"),
            person(GOOD_2, "王五", "2", "1985-06-15"),
        ]
    )
    city.pull(county)
    province.pull(city)
    county.store.ingest(
        county.store.entities["house"],
        pa.table({"unit_code": ["320102001001GB00001F00010001"], "floors": ["6"]}),
        file_label="houses.csv",
        locate=lambda i: f"line {i + 2}",
        origin_node=XUANWU,
        department="住建局",
        snapshot=False,
        columns=["unit_code", "floors"],
    )
    county.ingest_own([person(GOOD_3, "钱七", "1", "1970-03-01")])
    city.pull(county)
    province.pull(city)
    assert set(province.people()) == {GOOD_1, GOOD_2, GOOD_3}
    houses = province.store.query("SELECT count(*) AS n FROM tongyuan.rows_house").to_pylist()
    assert houses == [{"n": 1}]
    seqs = city.store.query(
        "SELECT _seq FROM tongyuan.rows_person UNION ALL SELECT _seq FROM tongyuan.rows_house"
    ).to_pylist()
    assert len({r["_seq"] for r in seqs}) == len(seqs), "no sequence number is used twice"


def test_a_row_delivered_again_is_held_once_and_versions_of_one_record_are_not_duplicates(
    nodes: dict[str, Node],
) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    unique = BASE_RULES.read_text(encoding="utf-8").replace(
        'version = "1.0.0"', 'version = "1.1.0"'
    )
    unique += (
        '\n[[rules]]\nid = "person.name.unique"\nentity = "person"\nattribute = "name"\n'
        'check = "unique"\n'
    )
    custom = county.config.directory / "rules.toml"
    custom.write_text(unique, encoding="utf-8")
    city.quality.rules_publish(path=str(custom), actor="tester")
    county.ingest_own(
        [person(BAD_CHECK, "李四", "2", "1980-01-01"), person(GOOD_1, "张三", "1", "1990-01-01")]
    )
    first = county.store.read_window(0, 10_000)
    county.ingest_own(
        [person(GOOD_1, "张三", "1", "1990-01-01"), person(GOOD_2, "王五", "2", "1985-06-15")]
    )
    second = county.store.read_window(first.last_seq, 10_000)
    entities = city.store.log_entities
    batches = [decode_batch(encode_window(w), entities, XUANWU) for w in (first, second)]
    city.store.apply_batches(XUANWU, NANJING, batches[:1])
    # Re-delivered together with the next window: nothing held twice.
    city.store.apply_batches(XUANWU, NANJING, batches)
    held = city.held()
    assert [(r["record_key"], r["rules"]) for r in held] == [
        (BAD_CHECK, ["person.id_number.gb11643 (320100)"])
    ]
    # Two versions of GOOD_1 in one group are one record, not a duplicate name.
    assert set(city.people()) == {GOOD_1, GOOD_2}


def test_reference_rules_run_and_flag_an_unknown_person(nodes: dict[str, Node]) -> None:
    county = nodes[XUANWU]
    county.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    county.ingest_own([person(GOOD_1, "张三", "1", "1990-01-01")])
    known, unknown = GOOD_1, GOOD_2
    credit = [fake_legal_entities(XUANWU, 2).column("uscc").to_pylist()[i][:17] for i in (0, 1)]
    result = county.store.ingest(
        county.store.entities["legal_entity"],
        pa.table(
            {
                "uscc": [_credit_code(credit[0]), _credit_code(credit[1])],
                "name": ["甲公司", "乙公司"],
                "legal_rep_id_number": [known, unknown],
            }
        ),
        file_label="companies.csv",
        locate=lambda i: f"line {i + 2}",
        origin_node=XUANWU,
        department="市场监管局",
        snapshot=False,
        columns=["uscc", "name", "legal_rep_id_number"],
    )
    assert (result.inserted, result.quarantined, result.flagged) == (2, 0, 1)
    flags = county.store.query("SELECT rule, reason FROM tongyuan.quality_flags").to_pylist()
    assert flags == [
        {
            "rule": "legal_entity.legal_rep.known (320102)",
            "reason": f"{unknown} is not a known person",
        }
    ]


def _credit_code(body17: str) -> str:
    return body17 + uscc_check_char(body17)


def test_another_departments_import_leaves_a_held_row_waiting(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    county = nodes[XUANWU]
    county.quality.rules_local(
        path=str(
            rules_file(
                tmp_path,
                '[[rules]]\nid = "name.short"\nentity = "person"\nattribute = "name"\n'
                'check = "length"\nmax = 2\n',
            )
        ),
        actor="tester",
    )
    county.ingest_own([person(GOOD_1, "欧阳娜娜", "1", "1990-01-01")])
    county.catalog.add(
        [
            {
                "code": f"{XUANWU}-MZ-001",
                "name": "联系电话",
                "summary": "电话",
                "department": "民政局",
                "entity": "person",
                "update_frequency": "daily",
                "sharing": "unconditional",
                "fields": ["id_number", "phone"],
            }
        ],
        "phones.toml",
        "tester",
        publish=True,
    )
    county.store.ingest(
        county.store.entities["person"],
        pa.table({"id_number": [GOOD_1], "phone": ["13912345678"]}),
        file_label="phones.csv",
        locate=lambda i: f"line {i + 2}",
        origin_node=XUANWU,
        department="民政局",
        snapshot=False,
        resource=f"{XUANWU}-MZ-001",
        columns=["id_number", "phone"],
    )
    assert [r["record_key"] for r in county.held()] == [GOOD_1]


def test_a_delivered_rule_that_does_not_fit_this_model_waits(nodes: dict[str, Node]) -> None:
    """A parent's library was checked against the parent's model: here a rule that does
    not fit (a numeric range on a text attribute) waits instead of failing imports."""
    county, city = nodes[XUANWU], nodes[NANJING]
    layer = {
        "node": NANJING,
        "name": "nanjing",
        "version": "1.0.0",
        "description": "",
        "local": False,
        "rules": [
            {"id": "odd", "entity": "person", "attribute": "name", "check": "range", "min": 5},
            {"id": "ok", "entity": "person", "attribute": "name", "check": "required"},
        ],
    }

    def deliver(text: str) -> None:
        try:
            digest = check_library_json(text, "test").digest()
        except UserError:
            digest = "unparsed"
        county.store.quality.receive_library(NANJING, text, digest)

    library = json.dumps({"layers": [layer]}, sort_keys=True, ensure_ascii=False)
    deliver(library)
    rules = {r["id"]: r for r in county.quality.rules_show()["rules"]}
    assert rules["ok"]["applies"] and not rules["odd"]["applies"]
    assert "a range needs a number or date attribute" in rules["odd"]["waiting_because"]
    assert county.ingest_own([person(GOOD_1, "张三", "1", "1990-01-01")]).inserted == 1
    # Infinite bounds, a layer claiming to be the county's own, a non-JSON body: refused.
    for bad, message in [
        (library.replace('"min": 5', '"min": Infinity'), "min must be a number"),
        (library.replace(f'"node": "{NANJING}"', f'"node": "{XUANWU}"'), "not 320100 or above"),
        ("[1, 2", "not a rule library"),
    ]:
        with pytest.raises(UserError, match=message):
            deliver(bad)
    assert city.store.quality.must_screen("", NEVER_SEQ, 0) is False  # no library at the city
    # A rule waits here: the city must not count on this county having screened its rows.
    assert county.store.quality.received_since(NANJING) == NEVER_SEQ


def test_a_parent_screens_only_what_its_child_has_not(nodes: dict[str, Node]) -> None:
    """A parent skips the rules its child applied, for the rows the child logged after
    taking them; rows from before (a backlog imported offline) are screened here."""
    county, city = nodes[XUANWU], nodes[NANJING]
    county.ingest_own([person(BAD_CHECK, "李四", "2", "1980-01-01")])  # no library yet
    city.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    digest, _ = city.store.quality.downward_library()
    quality = city.store.quality
    assert quality.must_screen("", NEVER_SEQ, 0) and quality.must_screen("other", 0, 0)
    city.deliver_rules(county)
    since = county.store.quality.received_since(NANJING)
    assert county.store.quality.received_digest(NANJING) == digest
    assert since == county.store.head_seq
    assert quality.must_screen(digest, since, 0), "the backlog before the library"
    assert not quality.must_screen(digest, since, since)
    # The link passes exactly that: the backlog is held at the city.
    link = city.store.link(XUANWU)
    after = link.checkpoint if link is not None else 0
    window = county.store.read_window(after, 10_000)
    batch = decode_batch(encode_window(window), city.store.log_entities, XUANWU)
    city.store.apply_batches(
        XUANWU, NANJING, [batch], screen=quality.must_screen(digest, since, batch.after_seq)
    )
    assert [r["record_key"] for r in city.held()] == [BAD_CHECK]


def test_a_newer_held_version_replaces_the_older_one(nodes: dict[str, Node]) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    city.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    county.ingest_own([person(BAD_CHECK, "李四", "2", "1980-01-01")])
    city.pull(county)
    county.ingest_own([person(BAD_CHECK, "李四四", "2", "1980-01-01")])
    city.pull(county)
    states = sorted(
        (r["row"]["name"], r["state"]) for r in city.quality.quarantine_list(state="all")["rows"]
    )
    assert states == [("李四", "superseded"), ("李四四", "held")]


def test_a_childs_held_row_is_released_as_its_batch_would_have_been(
    nodes: dict[str, Node],
) -> None:
    county, city = nodes[XUANWU], nodes[NANJING]
    city.quality.rules_publish(path=str(BASE_RULES), actor="tester")
    county.ingest_own([person(BAD_CHECK, "李四", "2", "1980-01-01")])
    city.pull(county)
    (held,) = city.held()
    answer = city.quality.quarantine_release(ids=[held["id"]], actor="auditor")
    assert answer == {"released": 0, "still_held": 1, "rows": 1}
    assert city.people() == {}
    city.store.quality.remove_own_layer("published")
    answer = city.quality.quarantine_release(everything=True, actor="auditor")
    assert answer == {"released": 1, "still_held": 0, "rows": 1}
    (applied,) = city.store.query(
        "SELECT id_number, name, origin_node, origin_seq, origin_dept FROM tongyuan.rows_person"
    ).to_pylist()
    assert applied == {
        "id_number": BAD_CHECK,
        "name": "李四",
        "origin_node": XUANWU,
        "origin_seq": held["origin_seq"],
        "origin_dept": "公安局",
    }
