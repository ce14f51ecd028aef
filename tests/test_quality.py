"""Data quality on real node processes: the province's rule library reaches a county two
tiers down and changes what the county holds back; a file with known bad rows gives exact
quarantine counts and reasons; scores at the province list each county."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from conftest import Cluster, Node, wait_until
from stdnum.cn import ric

from node.model import base_model_path

BASE_RULES = base_model_path().parent.parent / "quality" / "base-rules.toml"
COLUMNS = ["id_number", "name", "sex", "birth_date", "phone", "address", "division_code"]


def id_number(division: str, born: str, serial: str) -> str:
    body = division + born + serial
    return body + ric.calc_check_digit(body + "0")


def people_file(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for number, name, sex, born in rows:
            writer.writerow([number, name, sex, born, "13912345678", "中山路1号", "320102"])
    return path


def layers(node: Node) -> list[str]:
    shown = json.loads(node.cli("quality", "rules", "show", "--json").stdout)
    return [layer["label"] for layer in shown["layers"]]


def quarantine(node: Node) -> list[dict[str, Any]]:
    return list(json.loads(node.cli("quality", "quarantine", "list", "--json").stdout)["rows"])


def test_the_province_library_reaches_a_county_and_changes_what_it_holds_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    province = cluster.node("320000", "province")
    city = cluster.node("320100", "city")
    for parent in (province, city):
        parent.configure("quality", report_pull_seconds=0.5)
    province.start()
    city.start()
    xuanwu = cluster.node("320102", "xuanwu").start()
    qinhuai = cluster.node("320104", "qinhuai").start()
    province.cli("children", "add", city.code, city.address)
    city.cli("children", "add", xuanwu.code, xuanwu.address)
    city.cli("children", "add", qinhuai.code, qinhuai.address)

    bad_check = id_number("320102", "19800101", "002")
    bad_check = bad_check[:-1] + ("0" if bad_check[-1] != "0" else "1")
    # Before any library: a wrong check digit goes through.
    first = xuanwu.ingest(
        "person",
        people_file(tmp_path / "before.csv", [(bad_check, "李四", "2", "1980-01-01")]),
    )
    assert (first["inserted"], first["quarantined"]) == (1, 0)

    published = province.cli("quality", "rules", "publish", str(BASE_RULES)).stdout
    assert "base 1.0.0 (320000): 16 rules in force here and at every node below" in published
    wait_until(
        lambda: layers(xuanwu) == ["base 1.0.0 (320000)"],
        what="the province's library to reach the county through the city",
    )

    good = [
        id_number("320102", "19900101", "123"),
        id_number("320102", "19850615", "246"),
        id_number("320102", "19700301", "031"),
    ]
    wrong_birth = id_number("320102", "19791231", "012")
    unknown_division = id_number("999999", "19800101", "004")
    also_bad_check = good[1][:-1] + ("0" if good[1][-1] != "0" else "1")
    path = people_file(
        tmp_path / "people.csv",
        [
            (good[0], "张三", "1", "1990-01-01"),
            (also_bad_check, "李五", "2", "1985-06-15"),
            (good[1], "王五", "2", "1985-06-15"),
            (wrong_birth, "赵六", "1", "1979-12-30"),
            (good[2], "钱七", "2", "1970-03-01"),  # sex disagrees: a warning, applied
            (unknown_division, "孙八", "1", "1980-01-01"),
        ],
    )
    result = xuanwu.ingest("person", path)
    assert (result["inserted"], result["quarantined"], result["flagged"]) == (3, 3, 1)
    assert result["held_by_rule"] == [
        ["person.id_number.gb11643 (320000)", 2],
        ["person.birth_date.agrees (320000)", 1],
    ]
    text = xuanwu.cli("ingest", xuanwu.resource("person"), str(path)).stdout
    assert "3 rows held in quarantine (person.id_number.gb11643 (320000): 2" in text
    held = {r["record_key"]: r for r in quarantine(xuanwu)}
    assert set(held) == {also_bad_check, wrong_birth, unknown_division}
    assert held[also_bad_check]["source"] == "people.csv row 2 (line 3)"
    assert held[wrong_birth]["reasons"] == [
        "birth date 1979-12-30 does not agree with the ID number (which says 1979-12-31)"
    ]
    assert held[unknown_division]["reasons"] == ["GB 11643: division code 999999 unknown"]

    # Only what passed travels up; nothing held reaches the province.
    def at_province() -> set[str]:
        rows = province.query("SELECT id_number FROM tongyuan.rows_person WHERE NOT _deleted")
        return {r["id_number"] for r in rows}

    wait_until(lambda: at_province() == {bad_check, *good}, what="the county's rows upstream")

    # Scores at the province list each county, side by side and rolled up.
    qinhuai.ingest(
        "person",
        people_file(
            tmp_path / "qinhuai.csv",
            [(id_number("320104", "19920202", "222"), "周九", "2", "1992-02-02")],
        ),
    )

    def county_rows() -> dict[str, dict[str, str]]:
        report = province.cli("quality", "report", "--csv").stdout
        found = {}
        for row in csv.DictReader(io.StringIO(report)):
            if row["node"] in ("320102", "320104") and row["kind"] == "resource":
                found[row["node"]] = row
        return found

    def both_counted() -> bool:
        found = county_rows()
        counted = {code: row["records"] for code, row in found.items()}
        return counted == {"320102": "4", "320104": "1"}

    # Reports roll up on a timer: wait for the ones pulled after both imports.
    wait_until(both_counted, what="both counties' records in the province's report")
    rows = county_rows()
    assert rows["320102"]["resource"] == xuanwu.resource("person")
    assert float(rows["320102"]["validity"]) < float(rows["320104"]["validity"])
