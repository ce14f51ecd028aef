"""Ingest at a node that is not serving and at one that is: effective changes only,
snapshot deletes, and bad input that names file, row and column and changes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Cluster, Node

HEADER = ["id_number", "name", "sex", "birth_date", "phone", "address", "division_code"]
PEOPLE = [
    ["320102199001011234", "张三", "1", "1990-01-01", "13800000001", "南京市玄武区1号", "320102"],
    ["320102198505052345", "李四", "2", "1985-05-05", "13800000002", "南京市玄武区2号", "320102"],
    ["32010220000229345X", "王五", "1", "2000-02-29", "13800000003", "南京市玄武区3号", "320102"],
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def people(node: Node) -> list[dict[str, object]]:
    return node.query("SELECT * FROM person ORDER BY id_number")


def head(node: Node) -> int:
    return int(node.status()["head_seq"])


@pytest.fixture
def county(cluster: Cluster) -> Node:
    return cluster.node("320102", "county")


def test_ingest_records_each_effective_change_once(county: Node, tmp_path: Path) -> None:
    county.resource("person")
    base = head(county)  # the resource's publication is in the log too
    first = county.ingest("person", write_csv(tmp_path / "people.csv", PEOPLE))
    assert (first["inserted"], first["updated"], first["deleted"]) == (3, 0, 0)
    # Three records, and the resource's catalogue entry stamped with its last change.
    assert head(county) == base + 3 + 1

    again = county.ingest("person", tmp_path / "people.csv")
    assert again["changes"] == 0 and again["unchanged"] == 3
    assert head(county) == base + 4, "re-importing an unchanged file must not produce changes"

    changed = [row[:] for row in PEOPLE]
    changed[1][4] = "13900000002"
    update = county.ingest("person", write_csv(tmp_path / "v2.csv", changed))
    assert (update["inserted"], update["updated"], update["deleted"]) == (0, 1, 0)
    assert head(county) == base + 6
    rows = people(county)
    assert [r["phone"] for r in rows if r["name"] == "李四"] == ["13900000002"]
    assert all(r["origin_node"] == "320102" for r in rows)
    assert len({r["origin_batch"] for r in rows}) == 2


def test_snapshot_import_deletes_missing_rows_plain_import_does_not(
    county: Node, tmp_path: Path
) -> None:
    county.ingest("person", write_csv(tmp_path / "all.csv", PEOPLE))
    partial = write_csv(tmp_path / "partial.csv", PEOPLE[:2])
    assert county.ingest("person", partial)["deleted"] == 0
    assert len(people(county)) == 3
    snap = county.ingest("person", partial, "--snapshot")
    assert snap["deleted"] == 1 and snap["changes"] == 1
    assert [r["name"] for r in people(county)] == ["李四", "张三"]
    # The deleted record can come back.
    back = county.ingest("person", tmp_path / "all.csv")
    assert back["inserted"] == 1
    assert len(people(county)) == 3


def test_every_supported_format(county: Node, tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(dict(zip(HEADER, row, strict=True)), ensure_ascii=False)
            for row in PEOPLE[:1]
        ),
        encoding="utf-8",
    )
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({h: [PEOPLE[1][i]] for i, h in enumerate(HEADER)}), parquet)
    xlsx = tmp_path / "p.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER)
    sheet.append(PEOPLE[2])
    book.save(xlsx)
    for path in (jsonl, parquet, xlsx):
        assert county.ingest("person", path)["inserted"] == 1, path.name
    assert {r["name"] for r in people(county)} == {"张三", "李四", "王五"}


def _assert_rejected(node: Node, args: list[str], *fragments: str) -> str:
    before = head(node)
    result = node.cli(*args, check=False)
    assert result.returncode != 0, result.stdout
    message = result.stderr
    assert "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert head(node) == before, "a rejected import must change nothing"
    return message


def test_bad_input_names_file_row_column_and_changes_nothing(county: Node, tmp_path: Path) -> None:
    county.ingest("person", write_csv(tmp_path / "good.csv", PEOPLE))
    bad_date = [row[:] for row in PEOPLE]
    bad_date[1][3] = "1985-13-45"
    _assert_rejected(
        county,
        ["ingest", county.resource("person"), str(write_csv(tmp_path / "bad_date.csv", bad_date))],
        "bad_date.csv",
        "row 2",
        "birth_date",
        "1985-13-45",
    )
    dup = [*PEOPLE, [PEOPLE[0][0], "张三二", "1", "1990-01-01", "", "", "320102"]]
    _assert_rejected(
        county,
        ["ingest", county.resource("person"), str(write_csv(tmp_path / "dup.csv", dup))],
        "dup.csv",
        "duplicate key",
        "id_number",
        "row 1",
        "row 4",
    )
    empty_key = [["", "无名", "1", "1990-01-01", "", "", "320102"]]
    _assert_rejected(
        county,
        ["ingest", county.resource("person"), str(write_csv(tmp_path / "nokey.csv", empty_key))],
        "nokey.csv",
        "row 1",
        "id_number",
    )
    _assert_rejected(
        county,
        [
            "ingest",
            county.resource("person"),
            str(write_csv(tmp_path / "cols.csv", PEOPLE, [*HEADER[:-1], "county"])),
        ],
        "cols.csv",
        "'county'",
    )
    # Values the model forbids: a sex outside GB/T 2261.1, a division code GB/T 2260 lacks,
    # an empty required name.
    unfit = [row[:] for row in PEOPLE]
    unfit[0][2] = "男"
    unfit[1][6] = "329999"
    unfit[2][1] = ""
    message = _assert_rejected(
        county,
        ["ingest", county.resource("person"), str(write_csv(tmp_path / "unfit.csv", unfit))],
        "unfit.csv",
        "row 1 (line 2), column sex: '男' is not a code of GB/T 2261.1 (0, 1, 2, 9)",
        "row 2 (line 3), column division_code: '329999' is not a code of GB/T 2260 (model",
        "row 3 (line 4), column name: a value is required",
    )
    assert "model base 1.0.0" in message
    malformed = tmp_path / "broken.csv"
    malformed.write_text(
        ",".join(HEADER) + "\n" + ",".join(PEOPLE[0]) + ",extra,fields\n", encoding="utf-8"
    )
    _assert_rejected(
        county, ["ingest", county.resource("person"), str(malformed)], "broken.csv", "line 2"
    )
    _assert_rejected(
        county, ["ingest", "vehicles", str(tmp_path / "good.csv")], "unknown resource", "vehicles"
    )
    _assert_rejected(
        county, ["ingest", county.resource("person"), str(tmp_path / "missing.csv")], "missing.csv"
    )
    # The good data is untouched by all of the above.
    assert {r["phone"] for r in people(county)} == {r[4] for r in PEOPLE}


def test_cli_commands_work_against_a_serving_node(county: Node, tmp_path: Path) -> None:
    county.start()
    result = county.ingest("person", write_csv(tmp_path / "people.csv", PEOPLE))
    assert result["inserted"] == 3
    status = county.status()
    assert status["serving"] is True
    assert status["code"] == "320102" and status["tier"] == "county"
    assert status["rows"]["person"] == 3
    rows = county.query("SELECT name, origin_node, origin_seq FROM person ORDER BY origin_seq")
    assert [r["origin_seq"] for r in rows] == [2, 3, 4]  # 1 published the resource
    refused = county.cli("query", "DELETE FROM person", check=False)
    assert refused.returncode != 0 and "read-only" in refused.stderr
    assert len(people(county)) == 3
    assert county.stop() == 0
    # After a clean stop the store opens directly again.
    assert county.status()["serving"] is False
    assert len(people(county)) == 3


def test_init_validates_the_division_code_and_refuses_to_overwrite(
    cluster: Cluster, tmp_path: Path
) -> None:
    from conftest import run_cli

    bad = run_cli(tmp_path / "x", "init", "--code", "999999", check=False)
    assert bad.returncode != 0 and "999999" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x" / "tongyuan.toml").exists()
    short = run_cli(tmp_path / "y", "init", "--code", "3201", check=False)
    assert short.returncode != 0 and "3201" in short.stderr
    ipv6 = run_cli(tmp_path / "z", "init", "--code", "320102", "--listen", "::1:7400", check=False)
    assert ipv6.returncode == 1 and "[::1]:7400" in ipv6.stderr
    assert not (tmp_path / "z" / "tongyuan.toml").exists()
    city = cluster.node("320100", "city")
    assert city.status()["tier"] == "city"
    again = city.cli("init", "--code", "320100", check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    province = cluster.node("320000", "province")
    assert province.status()["tier"] == "province"


def _register(node: Node, code: str, department: str, fields: list[str]) -> str:
    node.cli(
        "catalog", "add", "--code", code, "--name", f"{department} person", "--summary", "s",
        "--department", department, "--entity", "person", "--fields", ",".join(fields),
        "--frequency", "daily", "--sharing", "unconditional", "--publish",
    )  # fmt: skip
    return code


def test_snapshot_covers_only_its_resource_and_refuses_an_empty_file(
    county: Node, tmp_path: Path
) -> None:
    # One source per attribute: 民政局 is the source of phone and address, 公安局 of the rest.
    police_fields = ["id_number", "name", "sex", "birth_date", "division_code"]
    civil_fields = ["id_number", "phone", "address"]
    police = _register(county, "320102-GA-001", "公安局", police_fields)
    civil = _register(county, "320102-MZ-001", "民政局", civil_fields)

    def rows(people_rows: list[list[str]], fields: list[str]) -> list[list[str]]:
        return [[row[HEADER.index(f)] for f in fields] for row in people_rows]

    def police_file(name: str, people_rows: list[list[str]]) -> Path:
        return write_csv(tmp_path / name, rows(people_rows, police_fields), police_fields)

    county.ingest(police, police_file("police.csv", PEOPLE[:2]))
    civil_file = write_csv(tmp_path / "civil.csv", rows(PEOPLE[2:], civil_fields), civil_fields)
    county.ingest(civil, civil_file)
    snap = county.ingest(police, police_file("p1.csv", PEOPLE[:1]), "--snapshot")
    assert snap["deleted"] == 1
    kept = {r["id_number"] for r in people(county)}
    assert kept == {PEOPLE[0][0], PEOPLE[2][0]}, "民政局's record must stay"
    empty = police_file("empty.csv", [])
    _assert_rejected(
        county, ["ingest", police, str(empty), "--snapshot"], "empty.csv", "--allow-empty"
    )
    allowed = county.ingest(police, empty, "--snapshot", "--allow-empty")
    assert allowed["deleted"] == 1
    assert [r["id_number"] for r in people(county)] == [PEOPLE[2][0]]


def test_query_is_read_only_and_prints_values_as_written(county: Node, tmp_path: Path) -> None:
    rows = [[*PEOPLE[0][:1], "[/b]张[bold]三", *PEOPLE[0][2:]]]
    county.ingest("person", write_csv(tmp_path / "odd.csv", rows))
    shown = county.cli("query", "SELECT name FROM person")
    assert "[/b]张[bold]三" in shown.stdout
    outside = tmp_path / "leak.csv"
    for sql in (
        f"COPY person TO '{outside}'",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{outside}'",
        "SET threads = 1",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT 1; DELETE FROM person",
    ):
        result = county.cli("query", sql, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, sql
    assert not outside.exists()
    assert len(people(county)) == 1


def test_values_that_would_be_rounded_or_unreadable_are_refused(
    county: Node, tmp_path: Path
) -> None:
    header = [
        "uscc",
        "name",
        "legal_rep_id_number",
        "registered_on",
        "registered_capital",
        "address",
        "division_code",
    ]
    good = ["91320102MA1XXXXX0A", "某公司", PEOPLE[0][0], "2020-01-01", "1000.50", "地址", "320102"]
    county.ingest("legal_entity", write_csv(tmp_path / "ok.csv", [good], header))
    rounded = [*good[:4], "1000.123", *good[5:]]
    _assert_rejected(
        county,
        [
            "ingest",
            county.resource("legal_entity"),
            str(write_csv(tmp_path / "cap.csv", [rounded], header)),
        ],
        "cap.csv",
        "row 1",
        "registered_capital",
        "1000.123",
        "2 after the decimal point",
    )
    year_zero = [*good[:3], "0000-01-01", *good[4:]]
    _assert_rejected(
        county,
        [
            "ingest",
            county.resource("legal_entity"),
            str(write_csv(tmp_path / "y0.csv", [year_zero], header)),
        ],
        "y0.csv",
        "registered_on",
        "0000-01-01",
    )
    assert county.query("SELECT registered_capital FROM legal_entity") == [
        {"registered_capital": "1000.50"}
    ]


def test_a_config_whose_code_no_longer_matches_the_store_is_refused(county: Node) -> None:
    resource = county.resource("person")
    config = county.directory / "tongyuan.toml"
    config.write_text(config.read_text(encoding="utf-8").replace('"320102"', '"320104"', 1))
    result = county.cli("ingest", resource, "nowhere.csv", check=False)
    assert result.returncode == 1 and "belongs to node 320102" in result.stderr
    assert "Traceback" not in result.stderr
