"""Read department data files (CSV, JSON Lines, Parquet, Excel) into all-string Arrow tables.

Types are checked later in SQL, so every reader keeps each value as the exact text the file
holds: ID numbers such as "320102199001011234" and codes with leading zeros must survive
byte for byte, which rules out any type inference here. Every problem a user can fix is raised
as an InputFileError that names the file and, where known, the line, row or column.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from node.errors import InputFileError

__all__ = ["FORMATS", "SourceFile", "read_source_file"]

FORMATS = ("csv", "jsonl", "parquet", "xlsx")

# File extensions and explicit format names, both mapped to the reader that handles them.
_FORMAT_NAMES = {
    "csv": "csv",
    "txt": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
    "xlsx": "xlsx",
}

_UTF8_BOM = codecs.BOM_UTF8
# Bytes of the file searched for the CSV header row.
_HEADER_SCAN_BYTES = 1 << 20
# Extra bytes that multi-byte UTF-8 characters must contribute before the first invalid byte for
# a CSV to count as damaged UTF-8 rather than GBK text (about ten Chinese characters).
_UTF8_EVIDENCE_BYTES = 20
# Floats at or above this size are not rendered as integer digits (Excel never stores IDs there).
_MAX_INTEGRAL_FLOAT = 1e21


@dataclass(frozen=True)
class SourceFile:
    """A data file read into a table of strings, plus where each record sits in the file."""

    path: Path
    format: str
    table: pa.Table
    # xlsx: the worksheet that was read (always the first one), and the ones that were not.
    sheet: str | None = None
    other_sheets: tuple[str, ...] = ()
    # Line (text files) or sheet row (xlsx) of record 0, when records sit on consecutive lines.
    first_position: int | None = None
    # Line or sheet row of every record, when skipped blank lines break the consecutive run.
    positions: pa.Array | None = field(default=None, repr=False, compare=False)

    def locate(self, index: int) -> str:
        """Say where 0-based record `index` is, in the terms the user sees when opening the file."""
        if not 0 <= index < self.table.num_rows:
            raise IndexError(f"record {index} is outside {self.path} ({self.table.num_rows} rows)")
        position = self._position(index)
        if self.format == "xlsx":
            return f"sheet '{self.sheet}' row {position}"
        if self.format == "jsonl":
            return f"line {position}"
        if self.format == "csv" and position is not None:
            return f"row {index + 1} (line {position})"
        return f"row {index + 1}"

    def _position(self, index: int) -> int | None:
        """Physical line or sheet row of a record, or None when it cannot be known cheaply."""
        if self.positions is not None:
            return int(self.positions[index].as_py())
        if self.first_position is not None:
            return self.first_position + index
        return None


def read_source_file(path: Path | str, format: str | None = None) -> SourceFile:
    """Read a data file as an all-string table; `format` overrides the file extension."""
    path = Path(path)
    fmt = _resolve_format(path, format)
    _check_is_data_file(path)
    return _READERS[fmt](path)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _resolve_format(path: Path, format: str | None) -> str:
    """Pick the reader from the explicit format or the extension, refusing anything unknown."""
    supported = ", ".join(FORMATS)
    if format is not None:
        fmt = _FORMAT_NAMES.get(format.strip().lower().lstrip("."))
        if fmt is None:
            raise InputFileError(f"{path}: unknown format '{format}'; supported: {supported}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    fmt = _FORMAT_NAMES.get(suffix)
    if fmt is None:
        hint = "; save the workbook as .xlsx" if suffix == "xls" else ""
        raise InputFileError(
            f"{path}: cannot tell the file format from the extension '{path.suffix}'; "
            f"supported: {supported} (.csv .txt .jsonl .ndjson .json .parquet .pq .xlsx){hint}"
        )
    return fmt


def _check_is_data_file(path: Path) -> None:
    """Fail early, with the path, on the mistakes that have nothing to do with the format."""
    if not path.exists():
        raise InputFileError(f"{path}: file not found")
    if not path.is_file():
        raise InputFileError(f"{path}: not a regular file (is it a directory?)")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: file is empty (0 bytes)")


def _read_bytes(path: Path) -> bytes:
    """Read the whole file; permission and I/O errors become InputFileErrors."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read file ({e.strerror or e})") from e


def _clean_names(
    path: Path, raw: Sequence[str], where: str, label: Callable[[int], str]
) -> list[str]:
    """Strip header names and reject empty or repeated ones, which no later step could map."""
    names = [_clean_name(name) for name in raw]
    location = f"{path} {where}" if where else str(path)
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if not name:
            raise InputFileError(f"{location}: {label(number)} has no name")
        if name in seen:
            raise InputFileError(
                f"{location}: column name '{name}' is used twice "
                f"({label(seen[name])} and {label(number)})"
            )
        seen[name] = number
    return names


def _clean_name(name: str) -> str:
    """Strip surrounding whitespace and a stray UTF-8 BOM some tools leave in the first name."""
    return name.strip().lstrip("\ufeff").strip()


def _column_number(number: int) -> str:
    return f"column {number}"


def _column_letter(number: int) -> str:
    return f"column {get_column_letter(number)}"


def _positions(lines: Sequence[int]) -> tuple[int | None, pa.Array | None]:
    """Store record positions compactly: just the first one when they are consecutive."""
    if not lines:
        return None, None
    if lines[-1] - lines[0] == len(lines) - 1:
        return lines[0], None
    return None, pa.array(lines, type=pa.int64())


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


# ---------------------------------------------------------------------------------------------
# CSV


class _NotUtf8(Exception):
    """Internal signal: the CSV bytes are not UTF-8, so the GB18030 fallback should run."""


def _read_csv(path: Path) -> SourceFile:
    """Read a CSV as UTF-8, falling back to GB18030 (Chinese government exports are often GBK)."""
    data = _read_bytes(path)
    try:
        return _parse_csv(path, data)
    except _NotUtf8:
        return _parse_csv(path, _gb18030_as_utf8(path, data))


def _parse_csv(path: Path, data: bytes) -> SourceFile:
    """Parse UTF-8 CSV bytes with the header read in Python and the body read by Arrow."""
    header, header_lines = _csv_header(path, data)
    names = _clean_names(path, header, f"line {header_lines}", _column_number)
    table = _arrow_csv(path, data, len(names), header_lines)
    _check_quotes_closed(path, data)
    first = header_lines + 1 if _one_line_per_record(data, header_lines, table.num_rows) else None
    return SourceFile(path, "csv", table.rename_columns(names), first_position=first)


def _csv_header(path: Path, data: bytes) -> tuple[list[str], int]:
    """Return the header fields and the number of physical lines up to and including them.

    Arrow is told every column name up front so it infers no types; that needs the header first.
    """
    chunk = data[:_HEADER_SCAN_BYTES]
    whole = len(chunk) == len(data)
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(chunk, final=whole)
    except UnicodeDecodeError as e:
        raise _NotUtf8 from e
    if not whole:  # drop the partial last line so the csv module does not see a cut row
        text = text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for row in reader:
            if row:
                return row, reader.line_num
    except csv.Error as e:
        raise InputFileError(f"{path} line {reader.line_num}: cannot read header row ({e})") from e
    if not whole:
        raise InputFileError(f"{path}: no header row within the first {_HEADER_SCAN_BYTES} bytes")
    raise InputFileError(f"{path}: file is empty (no header row)")


def _arrow_csv(path: Path, data: bytes, n_columns: int, skip_lines: int) -> pa.Table:
    """Read the CSV body with every column typed as string, so nothing is inferred or rounded."""
    names = [f"c{i}" for i in range(n_columns)]
    try:
        return pa_csv.read_csv(
            pa.BufferReader(data),
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=skip_lines),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        if "UTF8" in str(e):
            raise _NotUtf8 from e
        raise _csv_shape_error(path, data, n_columns, e) from e


class _CsvScanError(Exception):
    """Internal: Python's csv module gave up on the record starting at `line`."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _csv_rows(text: str) -> Iterator[tuple[int, int, list[str]]]:
    """Yield (first line, last line, fields) per record; slow, only used to explain errors."""
    reader = csv.reader(io.StringIO(text, newline=""))
    previous = 0
    try:
        for row in reader:
            yield previous + 1, reader.line_num, row
            previous = reader.line_num
    except csv.Error as e:
        raise _CsvScanError(previous + 1, str(e)) from e


def _csv_shape_error(path: Path, data: bytes, n_columns: int, error: Exception) -> InputFileError:
    """Turn Arrow's parse error into one naming the line; Arrow itself cannot say it reliably."""
    text = data.decode("utf-8-sig", errors="replace")
    try:
        records = (r for r in _csv_rows(text) if r[2])
        next(records, None)  # the header
        for first, last, row in records:
            if len(row) != n_columns:
                message = f"{path} line {first}: expected {n_columns} fields, found {len(row)}"
                if last > first:
                    message += f" (the record runs on to line {last}; is a closing quote missing?)"
                return InputFileError(message)
    except _CsvScanError as e:
        return InputFileError(f"{path} line {e.line}: cannot parse CSV ({e.reason})")
    detail = str(error).removeprefix("CSV parse error: ")
    return InputFileError(f"{path}: cannot parse CSV ({detail})")


def _check_quotes_closed(path: Path, data: bytes) -> None:
    """Reject a quoted field left open at the end of the file, which Arrow silently accepts.

    An open quote swallows the rest of the file into one value. Closed quoted fields contribute
    an even number of quote characters, so only an odd count is worth the slow check. The check
    appends a sentinel line: it comes back as its own record only if no quote was left open.
    """
    if data.count(b'"') % 2 == 0:
        return
    sentinel = "\x00end-of-file\x00"
    text = data.decode("utf-8-sig", errors="replace") + "\n" + sentinel
    last: tuple[int, list[str]] = (0, [])
    try:
        for first, _, row in _csv_rows(text):
            last = (first, row)
    except _CsvScanError as e:  # the open field outgrew the csv module's size limit
        raise InputFileError(
            f"{path} line {e.line}: a quoted field opened here is never closed ({e.reason})"
        ) from e
    if last[1] != [sentinel]:
        raise InputFileError(f"{path} line {last[0]}: a quoted field opened here is never closed")


def _gb18030_as_utf8(path: Path, data: bytes) -> bytes:
    """Re-encode a GB18030/GBK CSV as UTF-8, unless it is really UTF-8 with damaged bytes.

    A file whose first invalid byte follows plenty of valid multi-byte UTF-8 (or a UTF-8 BOM) is
    damaged UTF-8; decoding it as GB18030 would silently turn every Chinese character into
    garbage, so it is reported instead.
    """
    bad = _first_invalid_utf8(data)
    if bad is None:  # Arrow complained about UTF-8 yet the bytes decode: report Arrow's view
        raise InputFileError(f"{path}: contains text that is not valid UTF-8")
    valid = data[:bad]
    multibyte_extra = len(valid) - len(valid.decode("utf-8"))
    if data.startswith(_UTF8_BOM) or multibyte_extra >= _UTF8_EVIDENCE_BYTES:
        raise InputFileError(
            f"{path} line {_line_at(data, bad)}: invalid UTF-8 byte 0x{data[bad]:02x} "
            f"at byte offset {bad}; the file is damaged or mixes encodings"
        )
    try:
        return data.decode("gb18030").encode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(
            f"{path} line {_line_at(data, e.start)}: bytes at offset {e.start} are neither "
            "UTF-8 nor GB18030/GBK text; save the file as UTF-8"
        ) from e


def _first_invalid_utf8(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return None


def _one_line_per_record(data: bytes, header_lines: int, n_rows: int) -> bool:
    """True when record i is on line header_lines + 1 + i (no blank lines, no quoted newlines)."""
    end = len(data)
    while end and data[end - 1] in b"\r\n":
        end -= 1
    lines = data.count(b"\n", 0, end) + 1 if end else 0
    return lines == header_lines + n_rows


# ---------------------------------------------------------------------------------------------
# JSON Lines


class _JsonObjectError(ValueError):
    """Internal: a JSON object that parses but cannot be imported (a key given twice)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build an object, refusing repeated keys that json would otherwise silently merge."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _JsonObjectError(f"key '{key}' appears twice")
            seen.add(key)
    return record


def _reject_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


# parse_int/parse_float hand over numbers as the digits written, so nothing is rounded.
_JSON_DECODER = json.JSONDecoder(
    parse_int=str,
    parse_float=str,
    parse_constant=_reject_json_constant,
    object_pairs_hook=_json_object,
)


def _read_jsonl(path: Path) -> SourceFile:
    """Read one JSON object per line; Python parses, since Arrow's JSON reader rounds numbers."""
    text = _decode_jsonl(path, _read_bytes(path))
    records, lines = _json_records(path, text)
    names = _json_columns(path, records, lines)
    columns = [_json_column(path, name, records, lines) for name in names]
    first, positions = _positions(lines)
    table = pa.table(columns, names=names)
    return SourceFile(path, "jsonl", table, first_position=first, positions=positions)


def _decode_jsonl(path: Path, data: bytes) -> str:
    """Decode as UTF-8 (the JSON standard's encoding), naming the line of any bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(
            f"{path} line {_line_at(data, e.start)}: not valid UTF-8 (byte offset {e.start}); "
            "JSON Lines files must be UTF-8"
        ) from e


def _json_records(path: Path, text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Parse every non-blank line into an object, remembering its physical line number."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    decode = _JSON_DECODER.decode
    # split("\n"), not splitlines(): U+2028 and friends may legally appear inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line or line.isspace():
            continue
        try:
            value = decode(line)
        except _JsonObjectError as e:
            raise InputFileError(f"{path} line {number}: {e}") from e
        except ValueError as e:
            raise InputFileError(f"{path} line {number}: invalid JSON ({_json_error(e)})") from e
        if type(value) is not dict:
            raise InputFileError(
                f"{path} line {number}: expected a JSON object {{...}}, found "
                f"{_json_kind(value)} (JSON Lines files hold one object per line)"
            )
        records.append(value)
        lines.append(number)
    if not records:
        raise InputFileError(f"{path}: no JSON records (the file has only blank lines)")
    return records, lines


def _json_error(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at column {error.colno}"
    return str(error)


def _json_kind(value: object) -> str:
    """Name a parsed JSON value's kind as JSON calls it (numbers arrive as str here)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return "a string or number"


def _json_columns(path: Path, records: list[dict[str, Any]], lines: list[int]) -> list[str]:
    """Return the union of keys in first-seen order, stripping names (renaming keys in place)."""
    keys: dict[str, Any] = {}
    for record in records:
        keys.update(record)  # only the keys matter; update keeps first-seen order
    if not keys:
        raise InputFileError(f"{path}: no record has any keys, so there are no columns")
    names: dict[str, None] = {}
    for key in keys:
        name = _clean_name(key)
        if not name:
            line = next(lines[i] for i, r in enumerate(records) if key in r)
            raise InputFileError(f"{path} line {line}: a key is empty, so its column has no name")
        if name != key:
            _rename_json_key(path, records, lines, key, name)
        names[name] = None
    return list(names)


def _rename_json_key(
    path: Path, records: list[dict[str, Any]], lines: list[int], key: str, name: str
) -> None:
    """Rename a padded key such as ' id ' to 'id' in every record, refusing clashes."""
    for record, line in zip(records, lines, strict=True):
        if key in record:
            if name in record:
                raise InputFileError(f"{path} line {line}: key '{name}' appears twice")
            record[name] = record.pop(key)


def _json_column(
    path: Path, name: str, records: list[dict[str, Any]], lines: list[int]
) -> pa.Array:
    """Build one string column; Arrow handles the all-text case, Python explains the rest."""
    values = [record.get(name) for record in records]
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. text mixed with true/false
        array = None
    if array is not None and (
        pa.types.is_string(array.type)
        or pa.types.is_null(array.type)
        or pa.types.is_boolean(array.type)
    ):
        return array.cast(pa.string())
    texts = [_json_text(path, line, name, v) for line, v in zip(lines, values, strict=True)]
    return pa.array(texts, type=pa.string())


def _json_text(path: Path, line: int, key: str, value: object) -> str | None:
    """Render a scalar as text; numbers already arrive as their JSON text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    raise InputFileError(
        f"{path} line {line}: key '{key}' holds {_json_kind(value)}; only text, numbers, "
        "true/false and null can be imported"
    )


# ---------------------------------------------------------------------------------------------
# Parquet


def _read_parquet(path: Path) -> SourceFile:
    """Read a Parquet file and render every column as text with vectorised casts."""
    try:
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as e:
        raise InputFileError(f"{path}: not a readable Parquet file ({e})") from e
    table = _drop_pandas_index(table)
    names = _clean_names(path, table.column_names, "", _column_number)
    columns = [
        _parquet_text(path, name, column) for name, column in zip(names, table.columns, strict=True)
    ]
    table = pa.table(columns, names=names)
    return SourceFile(path, "parquet", table)


def _drop_pandas_index(table: pa.Table) -> pa.Table:
    """Drop index columns pandas stores as '__index_level_0__': they are not department data."""
    metadata = table.schema.pandas_metadata or {}
    index_columns = [c for c in metadata.get("index_columns", []) if isinstance(c, str)]
    return table.drop_columns([c for c in index_columns if c in table.column_names])


def _parquet_text(path: Path, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cast one column to exact text: ints and decimals as written, floats in shortest form."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _parquet_text(path, name, column.cast(kind.value_type))
    if pa.types.is_nested(kind):
        raise InputFileError(
            f"{path}: column '{name}' holds nested values ({kind}); "
            "only flat columns can be imported"
        )
    if pa.types.is_duration(kind) or pa.types.is_interval(kind):
        raise InputFileError(f"{path}: column '{name}' has unsupported type {kind}")
    try:
        text = pc.cast(column, pa.string())
    except pa.ArrowInvalid as e:
        raise InputFileError(f"{path}: column '{name}' holds bytes that are not UTF-8 text") from e
    except pa.ArrowNotImplementedError as e:
        raise InputFileError(f"{path}: column '{name}' has unsupported type {kind}") from e
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind):
        return _tidy_time_text(text)
    return text


def _tidy_time_text(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Drop all-zero fractions Arrow prints per unit ('.000000') and write offsets as '+08:00'."""
    text = pc.replace_substring_regex(text, r"\.0+($|[+-]|Z)", r"\1")
    return pc.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2")


# ---------------------------------------------------------------------------------------------
# Excel


def _read_xlsx(path: Path) -> SourceFile:
    """Read the first worksheet: first non-empty row is the header, empty rows are skipped."""
    sheet, rows, others = _xlsx_rows(path)
    if not rows:
        raise InputFileError(f"{path}: sheet '{sheet}' is empty (no header row)")
    (header_row, header), *body = rows
    width = max((i + 1 for i, cell in enumerate(header) if cell is not None), default=0)
    where = f"sheet '{sheet}' row {header_row}"
    names = _clean_names(path, [cell or "" for cell in header[:width]], where, _column_letter)
    columns: list[list[str | None]] = [[] for _ in names]
    for row_number, row in body:
        _check_row_width(path, sheet, row_number, row, width)
        for i, column in enumerate(columns):
            column.append(row[i] if i < len(row) else None)
    first, positions = _positions([row_number for row_number, _ in body])
    table = pa.table([pa.array(c, type=pa.string()) for c in columns], names=names)
    return SourceFile(
        path,
        "xlsx",
        table,
        sheet=sheet,
        other_sheets=others,
        first_position=first,
        positions=positions,
    )


def get_column_letter(number: int) -> str:
    """Excel's column letters (1 → A, 27 → AA)."""
    letters = ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _xlsx_rows(path: Path) -> tuple[str, list[tuple[int, list[str | None]]], tuple[str, ...]]:
    """The first sheet's name, its non-empty rows as text with real row numbers, and the
    names of the sheets not read."""
    # Imported here: it costs every command a tenth of a second, and few read Excel.
    import openpyxl

    try:
        with path.open("rb") as handle:  # a handle, so openpyxl does not insist on the extension
            workbook = openpyxl.load_workbook(handle, read_only=True, data_only=True)
            try:
                if not workbook.worksheets:
                    raise InputFileError(f"{path}: the workbook has no worksheets")
                sheet = workbook.worksheets[0]
                sheet.reset_dimensions()  # stored dimensions can be wrong and would truncate
                rows = []
                for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
                    _check_exact_numbers(path, str(sheet.title), number, values)
                    cells = [_cell_text(v) for v in values]
                    if any(c is not None for c in cells):
                        rows.append((number, cells))
                others = tuple(str(ws.title) for ws in workbook.worksheets[1:])
                return str(sheet.title), rows, others
            finally:
                workbook.close()
    except InputFileError:
        raise
    except OSError as e:
        raise InputFileError(f"{path}: cannot read file ({e.strerror or e})") from e
    except Exception as e:  # openpyxl raises many unrelated types for damaged workbooks
        raise InputFileError(f"{path}: not a readable .xlsx workbook ({e})") from e


# Excel keeps 15 significant digits: a longer number typed into a numeric cell (an
# 18-digit ID number, say) has already lost its last digits.
_EXCEL_EXACT_LIMIT = 10**15


def _check_exact_numbers(path: Path, sheet: str, row_number: int, values: Sequence[object]) -> None:
    for i, value in enumerate(values):
        if isinstance(value, float) and abs(value) >= _EXCEL_EXACT_LIMIT:
            cell = f"{get_column_letter(i + 1)}{row_number}"
            raise InputFileError(
                f"{path} sheet '{sheet}' cell {cell}: the number {value:.15g} has more digits "
                "than Excel stores exactly (15), so its last digits are lost; format the "
                "column as text and enter the values again"
            )


def _check_row_width(
    path: Path, sheet: str, row_number: int, row: Sequence[str | None], width: int
) -> None:
    """Refuse values to the right of the header: they belong to a column without a name."""
    for i in range(width, len(row)):
        if row[i] is not None:
            cell = f"{get_column_letter(i + 1)}{row_number}"
            raise InputFileError(
                f"{path} sheet '{sheet}' cell {cell}: has a value but column "
                f"{get_column_letter(i + 1)} has no name in the header row"
            )


def _cell_text(value: object) -> str | None:
    """Render a cell as the text a user sees; integral floats lose Excel's implicit '.0'."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time() and value.tzinfo is None:
            return value.date().isoformat()  # date cells come back as midnight datetimes
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _float_text(value: float) -> str:
    """Integral floats as digits (Excel stores long numbers as floats), others as repr.

    The digits come from the shortest repr, so 3.20102199001011e17 reads "320102199001011000"
    as Excel shows it, not the binary value's "320102199001011008".
    """
    if value.is_integer() and abs(value) < _MAX_INTEGRAL_FLOAT:
        return format(Decimal(repr(value)).to_integral_value(), "f")
    return repr(value)


_READERS: dict[str, Callable[[Path], SourceFile]] = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "xlsx": _read_xlsx,
}
