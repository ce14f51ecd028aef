"""Realistic generated people and legal entities for demos, tests and benchmarks.

Identifiers carry correct check characters (GB 11643 ID numbers, GB 32100 unified social credit
codes) so that the validation a node does on real data passes on demo data too. ``fake_people``
and ``fake_legal_entities`` use Faker per row (thousands of rows); ``bench_people`` is vectorised
with numpy for millions of rows. Output is deterministic for a seed (and a Faker version).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from faker import Faker
from faker.providers.person.zh_CN import Provider as _ZhPerson

from node.divisions import full_name, lookup_division
from node.errors import UserError

__all__ = [
    "ENTITY_SCHEMA",
    "PEOPLE_SCHEMA",
    "bench_people",
    "fake_legal_entities",
    "fake_people",
    "id_check_char",
    "uscc_check_char",
]

PEOPLE_SCHEMA = pa.schema(
    [
        ("id_number", pa.string()),
        ("name", pa.string()),
        ("sex", pa.string()),
        ("birth_date", pa.date32()),
        ("phone", pa.string()),
        ("address", pa.string()),
        ("division_code", pa.string()),
    ]
)

ENTITY_SCHEMA = pa.schema(
    [
        ("uscc", pa.string()),
        ("name", pa.string()),
        ("legal_rep_id_number", pa.string()),
        ("registered_on", pa.date32()),
        ("registered_capital", pa.decimal128(18, 2)),
        ("address", pa.string()),
        ("division_code", pa.string()),
    ]
)

# --- check characters -------------------------------------------------------------------------

_USCC_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_ID_CHECK = "10X98765432"  # indexed by weighted sum mod 11
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)  # GB 11714 organisation code

# Common street names; Faker zh_CN builds odd ones from surnames (王路, 冷路).
# fmt: off
_STREETS = [
    "中山路", "人民路", "解放路", "建设路", "和平路", "新华路", "胜利路", "文化路",
    "长江路", "黄河路", "北京路", "南京路", "青年路", "工农路", "光明路", "朝阳路",
    "幸福路", "东风路", "红旗路", "健康路", "花园路", "学府路", "友谊路", "团结路",
    "环城路", "滨江路", "湖滨路", "府前街", "西大街", "东大街", "南大街", "北大街",
    "后街", "新街口", "中华路", "龙蟠路", "珠江路", "汉中路", "北门桥", "广州路",
]
# fmt: on

BIRTH_FIRST = dt.date(1940, 1, 1)
BIRTH_LAST = dt.date(2010, 12, 31)
_BIRTH_DAYS = (BIRTH_LAST - BIRTH_FIRST).days + 1
_SEQUENCES = 1000  # three sequence digits per (division, birth date)


def uscc_check_char(first17: str) -> str:
    """GB 32100 check character of a unified social credit code, from its first 17 characters."""
    if len(first17) != 17 or any(c not in _USCC_CHARSET for c in first17):
        raise UserError(f"{first17!r} is not 17 characters of the credit-code set {_USCC_CHARSET}")
    total = sum(_USCC_CHARSET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_CHARSET[(31 - total % 31) % 31]


def id_check_char(first17: str) -> str:
    """GB 11643 check character of a citizen ID number, from its first 17 digits."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise UserError(f"{first17!r} is not 17 ASCII digits (the ID number without its check)")
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _org_check_char(body8: str) -> str:
    """GB 11714 check character, so the embedded organisation code is itself plausible."""
    total = sum(int(c, 36) * w for c, w in zip(body8, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


def _id_number(division_code: str, birth: dt.date, sequence: int) -> str:
    first17 = f"{division_code}{birth:%Y%m%d}{sequence:03d}"
    return first17 + id_check_char(first17)


def _check_count(count: int, capacity: int, division_code: str) -> None:
    if count < 0:
        raise UserError(f"row count must not be negative, got {count}")
    if count > capacity:
        raise UserError(
            f"cannot generate {count} unique rows for division {division_code}: "
            f"at most {capacity} are possible"
        )


# --- Faker-based generators (per row; for demos) ----------------------------------------------


def fake_people(division_code: str, count: int, seed: int = 0) -> pa.Table:
    """People registered in one division, with valid and unique ID numbers (PEOPLE_SCHEMA)."""
    lookup_division(division_code)
    _check_count(count, _BIRTH_DAYS * _SEQUENCES, division_code)
    rng = random.Random(seed)
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    prefix = full_name(division_code)
    seen: set[tuple[int, int]] = set()
    ids: list[str] = []
    names: list[str] = []
    sexes: list[str] = []
    births: list[dt.date] = []
    phones: list[str] = []
    addresses: list[str] = []
    while len(ids) < count:
        day, seq = rng.randrange(_BIRTH_DAYS), rng.randrange(_SEQUENCES)
        if (day, seq) in seen:
            continue
        seen.add((day, seq))
        birth = BIRTH_FIRST + dt.timedelta(days=day)
        male = seq % 2 == 1  # GB 11643: odd sequence for men
        ids.append(_id_number(division_code, birth, seq))
        given = fake.first_name_male() if male else fake.first_name_female()
        names.append(fake.last_name() + given)
        sexes.append("1" if male else "2")
        births.append(birth)
        phones.append(fake.phone_number())
        addresses.append(f"{prefix}{fake.random_element(_STREETS)}{fake.random_int(1, 999)}号")
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(names, pa.string()),
            pa.array(sexes, pa.string()),
            pa.array(births, pa.date32()),
            pa.array(phones, pa.string()),
            pa.array(addresses, pa.string()),
            pa.array([division_code] * count, pa.string()),
        ],
        schema=PEOPLE_SCHEMA,
    )


def _birth_of(id_number: str) -> dt.date | None:
    try:
        return dt.date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError:
        return None


_CAPITALS_WAN = (3, 10, 30, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000)  # 万元


def fake_legal_entities(
    division_code: str,
    count: int,
    seed: int = 0,
    representatives: pa.Table | None = None,
) -> pa.Table:
    """Companies registered in one division with valid, unique credit codes (ENTITY_SCHEMA).

    Pass ``representatives`` (e.g. from ``fake_people``) so that legal representatives are people
    that exist in the demo data and joins between the two tables find matches.
    """
    lookup_division(division_code)
    _check_count(count, 10**8, division_code)
    rep_ids: list[str] | None = None
    if representatives is not None:
        if "id_number" not in representatives.column_names:
            raise UserError("representatives table has no 'id_number' column")
        rep_ids = [str(v) for v in representatives.column("id_number").to_pylist() if v]
        if not rep_ids:
            raise UserError("representatives table has no id_number values to pick from")
        adult_by_2024 = dt.date(2006, 12, 31)
        adults = [r for r in rep_ids if (b := _birth_of(r)) is None or b <= adult_by_2024]
        rep_ids = adults or rep_ids  # prefer people old enough to represent a company
    rng = random.Random(seed)
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    prefix = full_name(division_code)
    first_day, last_day = dt.date(1990, 1, 1), dt.date(2024, 12, 31)
    seen: set[str] = set()
    usccs: list[str] = []
    names: list[str] = []
    reps: list[str] = []
    registered: list[dt.date] = []
    capitals: list[Decimal] = []
    addresses: list[str] = []
    while len(usccs) < count:
        body = f"{rng.randrange(10**8):08d}"
        first17 = f"91{division_code}{body}{_org_check_char(body)}"  # 9 工商, 1 企业
        uscc = first17 + uscc_check_char(first17)
        if uscc in seen:
            continue
        seen.add(uscc)
        if rep_ids is not None:
            rep = rng.choice(rep_ids)
            birth = _birth_of(rep)
        else:
            birth = BIRTH_FIRST + dt.timedelta(
                days=rng.randrange((dt.date(1995, 1, 1) - BIRTH_FIRST).days)
            )
            rep = _id_number(division_code, birth, rng.randrange(_SEQUENCES))
        # Registered once the representative is an adult, where the date range allows.
        start = first_day
        if birth is not None:
            adult = dt.date(birth.year + 18, birth.month, 28 if birth.day > 28 else birth.day)
            start = min(max(first_day, adult), last_day)
        usccs.append(uscc)
        names.append(fake.company())
        reps.append(rep)
        registered.append(start + dt.timedelta(days=rng.randint(0, (last_day - start).days)))
        wan = rng.choice(_CAPITALS_WAN) if rng.random() < 0.8 else rng.randint(1, 20000)
        capitals.append(Decimal(wan * 10000).quantize(Decimal("0.01")))
        addresses.append(f"{prefix}{fake.random_element(_STREETS)}{fake.random_int(1, 999)}号")
    return pa.Table.from_arrays(
        [
            pa.array(usccs, pa.string()),
            pa.array(names, pa.string()),
            pa.array(reps, pa.string()),
            pa.array(registered, pa.date32()),
            pa.array(capitals, pa.decimal128(18, 2)),
            pa.array(addresses, pa.string()),
            pa.array([division_code] * count, pa.string()),
        ],
        schema=ENTITY_SCHEMA,
    )


# --- vectorised generator (for benchmarks) ----------------------------------------------------

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]

_CHUNK = 1 << 20  # rows per record batch; bounds temporary memory


class _Vocab:
    """Small list of strings as a padded UTF-8 byte matrix, so rows can be gathered by index."""

    def __init__(self, words: Sequence[str]) -> None:
        encoded = [w.encode("utf-8") for w in words]
        width = max([1, *(len(e) for e in encoded)])
        self.bytes: _U8 = np.zeros((len(encoded), width), dtype=np.uint8)
        self.lengths: _I64 = np.array([len(e) for e in encoded], dtype=np.int64)
        for i, e in enumerate(encoded):
            self.bytes[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)


def _join(parts: Sequence[tuple[_Vocab, npt.NDArray[np.intp] | None]]) -> pa.StringArray:
    """Concatenate one vocabulary entry per part for every row into a pyarrow string array.

    An index of None means the part's single entry on every row (a constant prefix).
    """
    n = next(len(idx) for _, idx in parts if idx is not None)
    width = sum(vocab.bytes.shape[1] for vocab, _ in parts)
    padded = np.empty((n, width), dtype=np.uint8)
    keep = np.empty((n, width), dtype=np.bool_)
    total: _I64 = np.zeros(n, dtype=np.int64)
    col = 0
    for vocab, idx in parts:
        w = vocab.bytes.shape[1]
        if idx is None:
            padded[:, col : col + w] = vocab.bytes[0]
            keep[:, col : col + w] = np.arange(w) < vocab.lengths[0]
            total += vocab.lengths[0]
        else:
            lengths = vocab.lengths[idx]
            padded[:, col : col + w] = vocab.bytes[idx]
            np.less(np.arange(w)[None, :], lengths[:, None], out=keep[:, col : col + w])
            total += lengths
        col += w
    data = padded[keep]  # row-major: each row's bytes in order, padding dropped
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(total, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _fixed(ascii_rows: _U8) -> pa.StringArray:
    """Rows of equal-width ASCII bytes (n, width) as a string array, without Python strings."""
    n, width = ascii_rows.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    data = np.ascontiguousarray(ascii_rows)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _digits(values: npt.NDArray[np.int64], width: int) -> _U8:
    """Decimal digits of non-negative integers as a (n, width) matrix, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers[None, :]) % 10).astype(np.uint8)


def _unique_keys(rng: np.random.Generator, count: int, space: int) -> _I64:
    """``count`` distinct integers from [0, space) in random order.

    Marks draws in a bitmap of the space (26 MB for ID numbers) instead of sorting or hashing
    millions of keys.
    """
    if count * 2 > space:
        return rng.permutation(space)[:count].astype(np.int64)
    taken = np.zeros(space, dtype=np.bool_)
    found = 0
    while found < count:
        need = count - found
        taken[rng.integers(0, space, size=need + need // 8 + 16)] = True
        found = int(np.count_nonzero(taken))
    keys: _I64 = np.flatnonzero(taken).astype(np.int64)
    return rng.permutation(keys)[:count]


def bench_people(count: int, division_code: str = "320102", seed: int = 0) -> pa.Table:
    """Same schema as ``fake_people`` for millions of rows: numpy only, no per-row Python.

    Each (birth date, sequence) pair is used once, so ID numbers are unique; check characters
    come from per-digit weighted sums, precomputed for every date and every sequence.
    """
    lookup_division(division_code)
    _check_count(count, _BIRTH_DAYS * _SEQUENCES, division_code)
    rng = np.random.default_rng(seed)
    keys = _unique_keys(rng, count, _BIRTH_DAYS * _SEQUENCES)

    # ID number parts: division (constant), YYYYMMDD per birth day, sequence per 0..999.
    weights = np.array(_ID_WEIGHTS, dtype=np.int64)
    code_ascii = np.frombuffer(division_code.encode("ascii"), dtype=np.uint8)
    code_sum = int((code_ascii.astype(np.int64) - ord("0")) @ weights[:6])
    dates = np.datetime64(BIRTH_FIRST, "D") + np.arange(_BIRTH_DAYS).astype("timedelta64[D]")
    month_start = dates.astype("datetime64[M]")
    ymd = (
        (dates.astype("datetime64[Y]").astype(np.int64) + 1970) * 10000
        + (month_start.astype(np.int64) % 12 + 1) * 100
        + (dates - month_start).astype(np.int64)
        + 1
    )
    date_digits = _digits(ymd, 8)
    date_ascii = date_digits + ord("0")
    date_sum = date_digits.astype(np.int64) @ weights[6:14]
    seq_digits = _digits(np.arange(_SEQUENCES, dtype=np.int64), 3)
    seq_ascii = seq_digits + ord("0")
    seq_sum = seq_digits.astype(np.int64) @ weights[14:17]
    check_chars = np.frombuffer(_ID_CHECK.encode("ascii"), dtype=np.uint8)
    epoch_day = (BIRTH_FIRST - dt.date(1970, 1, 1)).days

    surname_freq = _ZhPerson.last_names  # surname -> frequency (%)
    surnames = _Vocab(list(surname_freq))
    surname_p = np.array(list(surname_freq.values()), dtype=np.float64)
    surname_p /= surname_p.sum()
    male_given = list(_ZhPerson.first_names_male)
    female_given = list(_ZhPerson.first_names_female)
    given = _Vocab(male_given + female_given)
    male_singles = [w for w in male_given if len(w) == 1]
    female_singles = [w for w in female_given if len(w) == 1]
    second = _Vocab(["", *male_singles, *female_singles])  # optional second character
    prefix = _Vocab([full_name(division_code)])
    streets = _Vocab(_STREETS)
    numbers = _Vocab([f"{i}号" for i in range(1, 1000)])
    buildings = _Vocab([f"{i}栋" for i in range(1, 31)])
    rooms = _Vocab([f"{f}{r:02d}室" for f in range(1, 34) for r in range(1, 7)])
    mobile_second = np.frombuffer(b"358", dtype=np.uint8)

    batches: list[pa.RecordBatch] = []
    for start in range(0, count, _CHUNK):
        k = keys[start : start + _CHUNK]
        n = len(k)
        days = k // _SEQUENCES
        seq = k % _SEQUENCES
        male = seq % 2 == 1  # GB 11643: odd sequence for men

        id_ascii = np.empty((n, 18), dtype=np.uint8)
        id_ascii[:, :6] = code_ascii
        id_ascii[:, 6:14] = date_ascii[days]
        id_ascii[:, 14:17] = seq_ascii[seq]
        id_ascii[:, 17] = check_chars[(code_sum + date_sum[days] + seq_sum[seq]) % 11]
        birth = (days + epoch_day).astype(np.int32)

        given_idx = np.where(
            male,
            rng.integers(0, len(male_given), n),
            len(male_given) + rng.integers(0, len(female_given), n),
        )
        second_idx = np.where(
            male,
            1 + rng.integers(0, len(male_singles), n),
            1 + len(male_singles) + rng.integers(0, len(female_singles), n),
        )
        # A second character only after a one-character given name, for 40% of those.
        second_idx[(given.lengths[given_idx] > 3) | (rng.random(n) >= 0.4)] = 0
        name = _join(
            [
                (surnames, rng.choice(len(surname_p), size=n, p=surname_p)),
                (given, given_idx),
                (second, second_idx),
            ]
        )

        phone = np.empty((n, 11), dtype=np.uint8)
        phone[:, 0] = ord("1")
        phone[:, 1] = mobile_second[rng.integers(0, 3, n)]
        phone[:, 2:] = rng.integers(ord("0"), ord("9") + 1, (n, 9), dtype=np.uint8)

        address = _join(
            [
                (prefix, None),
                (streets, rng.integers(0, len(_STREETS), n)),
                (numbers, rng.integers(0, 999, n)),
                (buildings, rng.integers(0, 30, n)),
                (rooms, rng.integers(0, 33 * 6, n)),
            ]
        )
        sex = np.where(male, ord("1"), ord("2")).astype(np.uint8)[:, None]
        batches.append(
            pa.RecordBatch.from_arrays(
                [
                    _fixed(id_ascii),
                    name,
                    _fixed(sex),
                    pa.Array.from_buffers(pa.date32(), n, [None, pa.py_buffer(birth)]),
                    _fixed(phone),
                    address,
                    _fixed(np.tile(code_ascii, (n, 1))),
                ],
                schema=PEOPLE_SCHEMA,
            )
        )
    return pa.Table.from_batches(batches, schema=PEOPLE_SCHEMA)
