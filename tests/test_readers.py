"""Tests for node.readers: exact text round-trips, encodings, error messages and locations."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from node.errors import InputFileError
from node.readers import SourceFile, read_source_file

HEADER = ["身份证号", "姓名", "区划代码", "备注"]
ROWS: list[list[str | None]] = [
    ["320102199001011234", "张三", "001234", "南京市玄武区"],
    ["11010519491231002X", "李四", "000000", None],
    ["440301200012319999", '王五, 小名"阿五"', "0", "1e5"],
]


def expected_table() -> list[dict[str, str | None]]:
    return [dict(zip(HEADER, row, strict=True)) for row in ROWS]


def csv_text(header: list[str], rows: list[list[str | None]]) -> str:
    def field(value: str | None) -> str:
        if value is None:
            return ""
        if any(c in value for c in ',"\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    lines: list[list[str | None]] = [list(header), *rows]
    return "".join(",".join(field(v) for v in line) + "\n" for line in lines)


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def assert_all_strings(source: SourceFile) -> None:
    assert all(t == pa.string() for t in source.table.schema.types)


def assert_error(path: Path, match: str, *parts: str) -> InputFileError:
    """Read `path`, expecting an InputFileError that names the file and every part given.

    The path is removed before matching, since pytest's tmp_path contains the test's name.
    """
    with pytest.raises(InputFileError) as info:
        read_source_file(path)
    message = str(info.value)
    assert str(path) in message
    rest = message.replace(str(path), "<file>")
    assert re.search(match, rest), rest
    for part in parts:
        assert part in rest, rest
    return info.value


# --- round trips ---------------------------------------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", csv_text(HEADER, ROWS))
    source = read_source_file(path)
    assert source.format == "csv"
    assert source.path == path
    assert_all_strings(source)
    assert source.table.column_names == HEADER
    assert source.table.to_pylist() == expected_table()


def test_csv_keeps_null_markers_as_text_and_empty_as_null(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", 'a,b,c,d\nNA,NULL,,""\n')
    row = read_source_file(path).table.to_pylist()[0]
    assert row == {"a": "NA", "b": "NULL", "c": None, "d": None}


def test_csv_gbk(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gbk.csv", csv_text(HEADER, ROWS), encoding="gbk")
    source = read_source_file(path)
    assert source.table.column_names == HEADER
    assert source.table.to_pylist() == expected_table()


def test_csv_gbk_body_under_ascii_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gbk.csv", "id,name\n001,张三\n002,李四\n", encoding="gbk")
    source = read_source_file(path)
    assert source.table.to_pylist() == [
        {"id": "001", "name": "张三"},
        {"id": "002", "name": "李四"},
    ]
    assert source.locate(1) == "row 2 (line 3)"


def test_csv_bom_and_header_whitespace(tmp_path: Path) -> None:
    text = csv_text([" 身份证号 ", "姓名\t", "区划代码", "备注"], ROWS)
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    source = read_source_file(path)
    assert source.table.column_names == HEADER
    assert source.table.to_pylist() == expected_table()


def test_csv_crlf_and_txt_extension(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.txt", csv_text(HEADER, ROWS).replace("\n", "\r\n"))
    source = read_source_file(path)
    assert source.table.to_pylist() == expected_table()
    assert source.locate(0) == "row 1 (line 2)"


def test_csv_quoted_newline_values(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "nl.csv", 'id,addr\n001,"南京市\n玄武区"\n002,上海\n')
    source = read_source_file(path)
    assert source.table.to_pylist() == [
        {"id": "001", "addr": "南京市\n玄武区"},
        {"id": "002", "addr": "上海"},
    ]
    assert source.locate(1) == "row 2"  # lines no longer map 1:1 to records


def test_csv_header_only(tmp_path: Path) -> None:
    source = read_source_file(write_csv(tmp_path / "h.csv", "a,b\n"))
    assert source.table.num_rows == 0
    assert source.table.column_names == ["a", "b"]
    assert_all_strings(source)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    lines = [json.dumps(dict(zip(HEADER, row, strict=True)), ensure_ascii=False) for row in ROWS]
    path = tmp_path / "people.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = read_source_file(path)
    assert source.format == "jsonl"
    assert_all_strings(source)
    assert source.table.column_names == HEADER
    assert source.table.to_pylist() == expected_table()


def test_jsonl_numbers_keep_their_text(tmp_path: Path) -> None:
    path = tmp_path / "n.ndjson"
    path.write_text(
        '{"id": 320102199001011234, "f": 1.10, "e": 1e5, "b": true, "n": null}\n'
        '{"c": false, " id ": 12345678901234567890123}\n',
        encoding="utf-8",
    )
    table = read_source_file(path).table
    assert table.column_names == ["id", "f", "e", "b", "n", "c"]
    assert table.to_pylist() == [
        {"id": "320102199001011234", "f": "1.10", "e": "1e5", "b": "true", "n": None, "c": None},
        {"id": "12345678901234567890123", "f": None, "e": None, "b": None, "n": None, "c": "false"},
    ]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table({name: [r[i] for r in ROWS] for i, name in enumerate(HEADER)}), path)
    source = read_source_file(path)
    assert source.format == "parquet"
    assert_all_strings(source)
    assert source.table.to_pylist() == expected_table()


def test_parquet_typed_columns_become_exact_text(tmp_path: Path) -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    table = pa.table(
        {
            "id": pa.array([320102199001011234, None], pa.int64()),
            "amount": pa.array([Decimal("1.50"), Decimal("-0.05")], pa.decimal128(10, 2)),
            "ratio": pa.array([0.1, 1 / 3], pa.float64()),
            "born": pa.array([dt.date(1990, 1, 1), dt.date(2000, 12, 31)], pa.date32()),
            "at": pa.array(
                [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 250000)],
                pa.timestamp("us"),
            ),
            "at_tz": pa.array(
                [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=shanghai)] * 2,
                pa.timestamp("s", tz="+08:00"),
            ),
            "ok": pa.array([True, False]),
            "kind": pa.array(["甲", "乙"]).dictionary_encode(),
            " code ": pa.array(["007", "000"], pa.large_string()),
        }
    )
    path = tmp_path / "typed.pq"
    pq.write_table(table, path)
    source = read_source_file(path)
    assert_all_strings(source)
    assert source.table.to_pylist() == [
        {
            "id": "320102199001011234",
            "amount": "1.50",
            "ratio": "0.1",
            "born": "1990-01-01",
            "at": "2024-01-02 03:04:05",
            "at_tz": "2024-01-02 03:04:05+08:00",
            "ok": "true",
            "kind": "甲",
            "code": "007",
        },
        {
            "id": None,
            "amount": "-0.05",
            "ratio": "0.3333333333333333",
            "born": "2000-12-31",
            "at": "2024-01-02 03:04:05.250000",
            "at_tz": "2024-01-02 03:04:05+08:00",
            "ok": "false",
            "kind": "乙",
            "code": "000",
        },
    ]


def write_xlsx(path: Path, rows: Sequence[Sequence[object]], title: str = "人员") -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = title
    for row in rows:
        sheet.append(list(row))
    workbook.create_sheet("其他").append(["ignored"])
    workbook.save(path)
    return path


def test_xlsx_round_trip(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "people.xlsx", [HEADER, *ROWS])
    source = read_source_file(path)
    assert source.format == "xlsx"
    assert source.sheet == "人员"
    assert_all_strings(source)
    assert source.table.to_pylist() == expected_table()


def test_xlsx_cell_types(tmp_path: Path) -> None:
    rows: list[list[object]] = [
        [None, None],  # leading empty row: the header is the first non-empty row
        ["kind", "value"],
        ["int", 42],
        ["integral float", 7.0],
        ["float", 0.1],
        ["date", dt.datetime(1990, 1, 1)],
        ["datetime", dt.datetime(2024, 1, 2, 3, 4, 5)],
        ["bool", True],
        ["empty", None],
    ]
    source = read_source_file(write_xlsx(tmp_path / "types.xlsx", rows))
    assert source.table.column_names == ["kind", "value"]
    values = dict(zip(*source.table.to_pydict().values(), strict=True))
    assert values == {
        "int": "42",
        "integral float": "7",
        "float": "0.1",
        "date": "1990-01-01",
        "datetime": "2024-01-02 03:04:05",
        "bool": "true",
        "empty": None,
    }


def test_xlsx_number_too_long_to_be_exact_is_refused_with_its_cell(tmp_path: Path) -> None:
    # Excel keeps 15 significant digits: an 18-digit ID typed as a number lost its last ones.
    rows: list[list[object]] = [["id_number", "name"], ["320102199001011234", "张三"]]
    rows.append([320102199001011000.0, "李四"])
    with pytest.raises(InputFileError) as error:
        read_source_file(write_xlsx(tmp_path / "ids.xlsx", rows))
    message = str(error.value)
    assert "ids.xlsx" in message and "cell A3" in message and "as text" in message


# --- locate ----------------------------------------------------------------------------------


def test_locate_csv(tmp_path: Path) -> None:
    source = read_source_file(write_csv(tmp_path / "p.csv", csv_text(HEADER, ROWS)))
    assert source.locate(0) == "row 1 (line 2)"
    assert source.locate(2) == "row 3 (line 4)"
    with pytest.raises(IndexError):
        source.locate(3)


def test_locate_csv_with_blank_line_falls_back_to_row(tmp_path: Path) -> None:
    source = read_source_file(write_csv(tmp_path / "p.csv", "a,b\n1,2\n\n3,4\n"))
    assert source.table.num_rows == 2
    assert source.locate(1) == "row 2"


def test_locate_csv_trailing_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    source = read_source_file(write_csv(tmp_path / "p.csv", "a,b\n1,2\n3,4\n\n\n"))
    assert source.locate(1) == "row 2 (line 3)"


def test_locate_jsonl_counts_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n\n{"a": 3}\n', encoding="utf-8")
    source = read_source_file(path)
    assert [source.locate(i) for i in range(3)] == ["line 1", "line 2", "line 4"]


def test_locate_jsonl_consecutive(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n', encoding="utf-8")
    assert read_source_file(path).locate(2) == "line 3"


def test_locate_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"a": ["x", "y", "z"]}), path)
    assert read_source_file(path).locate(2) == "row 3"


def test_locate_xlsx_uses_sheet_rows(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "p.xlsx", [HEADER, ROWS[0], ROWS[1], ROWS[2]], title="Sheet1")
    assert read_source_file(path).locate(2) == "sheet 'Sheet1' row 4"
    gappy = write_xlsx(tmp_path / "g.xlsx", [[], ["a"], ["1"], [], ["2"]], title="S")
    source = read_source_file(gappy)
    assert source.table.to_pylist() == [{"a": "1"}, {"a": "2"}]
    assert [source.locate(i) for i in range(2)] == ["sheet 'S' row 3", "sheet 'S' row 5"]


# --- formats and files -------------------------------------------------------------------------


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "people.dat"
    path.write_text("a\n1\n")
    assert_error(path, "format", "csv", "jsonl", "parquet", "xlsx")


def test_xls_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "old.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0")
    assert_error(path, r"\.xlsx")


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.dat", "a,b\n01,02\n")
    assert read_source_file(path, format="csv").table.to_pylist() == [{"a": "01", "b": "02"}]
    xlsx = write_xlsx(tmp_path / "book.bin", [["a"], ["x"]])
    assert read_source_file(xlsx, format="xlsx").table.to_pylist() == [{"a": "x"}]
    with pytest.raises(InputFileError, match="unknown format 'xml'"):
        read_source_file(path, format="xml")


def test_missing_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "nope.csv", "not found")


def test_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir.csv"
    directory.mkdir()
    assert_error(directory, "not a regular file")


@pytest.mark.parametrize("name", ["e.csv", "e.jsonl", "e.parquet", "e.xlsx"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    assert_error(path, "empty")


def test_blank_csv_has_no_header(tmp_path: Path) -> None:
    assert_error(write_csv(tmp_path / "blank.csv", "\n\n"), "no header")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "secret.csv", "a\n1\n")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod does not stop root, so simulate it
    assert_error(path, "cannot read", "Permission denied")


# --- CSV errors ------------------------------------------------------------------------------


def test_csv_too_many_fields(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", "a,b,c\n1,2,3\n4,5,6\n\n7,8,9,10\n")
    assert_error(path, "expected 3 fields, found 4", "line 5")


def test_csv_too_few_fields(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", "a,b,c\n1,2,3\n4,5\n")
    assert_error(path, "expected 3 fields, found 2", "line 3")


def test_csv_unterminated_quote_changing_field_count(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", 'a,b,c\n1,2,3\n4,"5,6\n7,8,9\n')
    assert_error(path, "line 3", "closing quote")


def test_csv_unterminated_quote_in_last_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", 'a,b,c\n1,2,3\n4,5,"6\n7,8,9\n')
    assert_error(path, "never closed", "line 3")


def test_csv_stray_quote_inside_field_is_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", "a,b\n1,5'6\"\n")
    assert read_source_file(path).table.to_pylist() == [{"a": "1", "b": "5'6\""}]


def test_csv_duplicate_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "dup.csv", "id,name, id\n1,2,3\n")
    assert_error(path, "'id' is used twice", "column 1", "column 3", "line 1")


def test_csv_empty_column_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "empty.csv", "a,b, ,d\n1,2,3,4\n")
    assert_error(path, "column 3 has no name", "line 1")


def test_csv_neither_utf8_nor_gb18030(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n1,2\n3,\x81\xff\n")
    assert_error(path, "neither UTF-8 nor GB18030", "line 3", "offset 10")


def test_csv_damaged_utf8_is_not_read_as_gbk(tmp_path: Path) -> None:
    text = csv_text(HEADER, ROWS * 3)
    path = tmp_path / "damaged.csv"
    path.write_bytes(text.encode() + b"x,\xff,y,z\n")
    assert_error(path, "invalid UTF-8", f"line {len(ROWS) * 3 + 2}")


# --- JSON Lines errors -------------------------------------------------------------------------


def test_jsonl_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n', encoding="utf-8")
    assert_error(path, "invalid JSON", "line 3")


def test_jsonl_nested_value(tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "addr": {"city": "南京"}}\n', encoding="utf-8")
    assert_error(path, "holds an object", "line 2", "'addr'")


def test_jsonl_array_value(tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text(
        '{"id": "1", "tags": null}\n{"tags": true}\n{"tags": [1, 2]}\n', encoding="utf-8"
    )
    assert_error(path, "holds an array", "line 3", "'tags'")


def test_jsonl_line_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "array.json"
    path.write_text('[{"a": 1}]\n', encoding="utf-8")
    assert_error(path, "expected a JSON object", "line 1", "an array")


def test_jsonl_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"a": 1, "a ": 2}\n', encoding="utf-8")
    assert_error(path, "'a' appears twice", "line 1")


def test_jsonl_nan_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_text('{"a": NaN}\n', encoding="utf-8")
    assert_error(path, "NaN", "line 1")


def test_jsonl_only_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    assert_error(path, "no JSON records")


def test_jsonl_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gbk.jsonl"
    path.write_bytes('{"a": "x"}\n{"a": "张三"}\n'.encode("gbk"))
    assert_error(path, "UTF-8", "line 2")


# --- Parquet errors ------------------------------------------------------------------------------


def test_parquet_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet at all")
    assert_error(path, "not a readable Parquet file")


def test_parquet_nested_column(tmp_path: Path) -> None:
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table({"id": ["1"], "tags": [["a", "b"]]}), path)
    assert_error(path, "nested", "'tags'")


def test_parquet_binary_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"blob": pa.array([b"\xff\xfe"], pa.binary())}), path)
    assert_error(path, "not UTF-8", "'blob'")


def test_parquet_duplicate_column_after_strip(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"id": ["1"], " id": ["2"]}), path)
    assert_error(path, "'id' is used twice")


# --- Excel errors --------------------------------------------------------------------------------


def test_xlsx_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.xlsx"
    path.write_bytes(b"PK\x03\x04 definitely not a workbook")
    assert_error(path, "not a readable .xlsx workbook")


def test_xlsx_empty_header_cell(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "h.xlsx", [["a", "b", None, "d"], [1, 2, 3, 4]], title="S")
    assert_error(path, "column C has no name", "sheet 'S' row 1")


def test_xlsx_value_outside_header(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "w.xlsx", [["a", "b"], [1, 2], [3, 4, 5]], title="S")
    assert_error(path, "no name", "sheet 'S' cell C3")


def test_xlsx_empty_sheet(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx", [], title="S")
    assert_error(path, "sheet 'S' is empty")


# --- size ----------------------------------------------------------------------------------------


def test_large_csv_row_count(tmp_path: Path) -> None:
    n = 200_000
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("身份证号,姓名,区划代码\n")
        out.writelines(f"3201021990{i:08d},张{i % 97},{i % 1000:06d}\n" for i in range(n))
    source = read_source_file(path)
    assert source.table.num_rows == n
    assert source.table.column("身份证号")[n - 1].as_py() == f"3201021990{n - 1:08d}"
    assert source.table.column("区划代码")[0].as_py() == "000000"
    assert source.locate(n - 1) == f"row {n} (line {n + 1})"


def test_xlsx_names_the_sheet_it_read_and_the_ones_it_did_not(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    first.title = "人员"
    first.append(["id_number", "name"])
    first.append(["320102199001011234", "张三"])
    second = book.create_sheet("说明")
    second.append(["this sheet explains the columns"])
    path = tmp_path / "two.xlsx"
    book.save(path)
    source = read_source_file(path)
    assert source.sheet == "人员" and source.other_sheets == ("说明",)
    assert source.table.num_rows == 1
