"""Generated demo data must pass the same checks real data does (stdnum is the referee)."""

from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from stdnum.cn import ric, uscc

from node.demo_data import (
    ENTITY_SCHEMA,
    PEOPLE_SCHEMA,
    bench_people,
    fake_legal_entities,
    fake_people,
    id_check_char,
    uscc_check_char,
)
from node.errors import UserError

USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def id_checksum_ok(number: str) -> bool:
    """stdnum's checksum, without its "was this county code in use in the birth year" rule:
    320102 dates from 1983, yet people born earlier hold 320102 IDs after re-registration."""
    return (
        len(number) == 18 and number[:17].isdigit() and ric.calc_check_digit(number) == number[17]
    )


def test_uscc_check_char_agrees_with_stdnum() -> None:
    rng = random.Random(1)
    for _ in range(3000):
        first17 = "".join(rng.choice(USCC_CHARSET) for _ in range(17))
        assert uscc_check_char(first17) == uscc.calc_check_digit(first17 + "0")
    assert uscc_check_char("91110000600037341") == "L"  # stdnum's documented example


def test_id_check_char_agrees_with_stdnum() -> None:
    rng = random.Random(2)
    for _ in range(3000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        assert id_check_char(first17) == ric.calc_check_digit(first17 + "0")
    assert id_check_char("36042619910101007") == "1"  # stdnum's documented example


@pytest.mark.parametrize("bad", ["1234", "3201021990010100X", "12345678901234567890"])
def test_id_check_char_rejects_malformed_input(bad: str) -> None:
    with pytest.raises(UserError):
        id_check_char(bad)


def test_uscc_check_char_rejects_letters_outside_the_charset() -> None:
    with pytest.raises(UserError):
        uscc_check_char("9132010260329669I")  # I is not used in credit codes


def assert_people_consistent(table: pa.Table, division_code: str) -> None:
    assert table.schema == PEOPLE_SCHEMA
    ids = table.column("id_number")
    assert pc.count_distinct(ids).as_py() == table.num_rows
    for row in table.to_pylist():
        number = row["id_number"]
        assert id_checksum_ok(number), number
        assert number.startswith(division_code)
        assert ric.get_birth_date(number) == row["birth_date"]
        assert dt.date(1940, 1, 1) <= row["birth_date"] <= dt.date(2010, 12, 31)
        assert row["sex"] == ("1" if int(number[16]) % 2 == 1 else "2")
        assert len(row["phone"]) == 11 and row["phone"].isdigit() and row["phone"][0] == "1"
        assert row["division_code"] == division_code
        assert row["name"] and row["address"]


def test_fake_people_are_valid_and_unique() -> None:
    table = fake_people("320102", 2000, seed=7)
    assert table.num_rows == 2000
    assert_people_consistent(table, "320102")
    # Born after the code came into use (1983), stdnum's full validation passes too.
    recent = [r["id_number"] for r in table.to_pylist() if r["birth_date"].year >= 1983]
    assert recent and all(ric.is_valid(n) for n in recent)
    assert all(a.startswith("江苏省南京市玄武区") for a in table.column("address").to_pylist())
    assert set(table.column("sex").to_pylist()) == {"1", "2"}


def test_fake_people_is_deterministic_per_seed() -> None:
    assert fake_people("110101", 50, seed=3).equals(fake_people("110101", 50, seed=3))
    assert not fake_people("110101", 50, seed=3).equals(fake_people("110101", 50, seed=4))


def test_fake_people_rejects_unknown_division() -> None:
    with pytest.raises(UserError, match="'999999'"):
        fake_people("999999", 10)


def test_fake_legal_entities_with_representatives() -> None:
    people = fake_people("320102", 300, seed=1)
    table = fake_legal_entities("320102", 500, seed=1, representatives=people)
    assert table.schema == ENTITY_SCHEMA
    assert table.num_rows == 500
    codes = table.column("uscc").to_pylist()
    assert len(set(codes)) == len(codes)
    assert all(uscc.is_valid(c) for c in codes)
    assert all(c[:2] == "91" and c[2:8] == "320102" for c in codes)
    known = set(people.column("id_number").to_pylist())
    assert set(table.column("legal_rep_id_number").to_pylist()) <= known
    births = {r["id_number"]: r["birth_date"] for r in people.to_pylist()}
    for row in table.to_pylist():
        assert dt.date(1990, 1, 1) <= row["registered_on"] <= dt.date(2024, 12, 31)
        assert row["registered_on"] >= births[row["legal_rep_id_number"]]
        assert row["registered_capital"] > 0
        assert row["division_code"] == "320102"


def test_fake_legal_entities_generate_valid_representatives() -> None:
    table = fake_legal_entities("110101", 200, seed=2)
    assert all(uscc.is_valid(c) for c in table.column("uscc").to_pylist())
    reps = table.column("legal_rep_id_number").to_pylist()
    assert all(id_checksum_ok(r) and r.startswith("110101") for r in reps)


def test_fake_legal_entities_needs_id_numbers_in_representatives() -> None:
    with pytest.raises(UserError, match="id_number"):
        fake_legal_entities("320102", 5, representatives=pa.table({"x": [1]}))


def test_bench_people_valid_unique_and_consistent() -> None:
    table = bench_people(200_000, seed=5)
    assert table.schema == PEOPLE_SCHEMA
    assert table.num_rows == 200_000
    ids = table.column("id_number").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(id_checksum_ok(n) for n in ids)
    # Cross-check the vectorised columns against the ID on a sample (to_pylist of all is slow).
    assert_people_consistent(table.slice(0, 5000), "320102")
    sexes = table.column("sex").to_pylist()
    assert all(s == ("1" if int(n[16]) % 2 else "2") for n, s in zip(ids, sexes, strict=True))
    births = table.column("birth_date").to_pylist()
    assert all(ric.get_birth_date(n) == b for n, b in zip(ids[:20000], births, strict=False))
    phones = table.column("phone")
    assert pc.all(pc.match_substring_regex(phones, r"^1[358]\d{9}$")).as_py()
    addresses = table.column("address")
    assert pc.all(pc.starts_with(addresses, "江苏省南京市玄武区")).as_py()
    assert pc.count_distinct(table.column("name")).as_py() > 10_000


def test_bench_people_is_deterministic_and_takes_other_divisions() -> None:
    assert bench_people(1000, seed=9).equals(bench_people(1000, seed=9))
    table = bench_people(1000, "110101", seed=9)
    assert pc.all(pc.starts_with(table.column("id_number"), "110101")).as_py()
    assert bench_people(0).num_rows == 0


def test_bench_people_rejects_impossible_counts() -> None:
    with pytest.raises(UserError, match="negative"):
        bench_people(-1)
    with pytest.raises(UserError, match="unique"):
        bench_people(10**9)
