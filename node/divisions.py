"""GB/T 2260 administrative division codes (county, city, province).

Nodes are identified by the division they serve, so codes must be checked against a real list
and related to each other (a county's data rolls up to its city and province). The list is the
one bundled with python-stdnum (``stdnum/cn/loc.dat``), which records historic names with year
ranges, e.g. ``[1983-2013]白下区``; a code without an open-ended name is retired.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from stdnum import numdb

from node.errors import UserError

__all__ = [
    "Division",
    "Tier",
    "ancestors",
    "county_codes_under",
    "full_name",
    "is_within",
    "lookup_division",
    "tier_of",
]


class Tier(enum.StrEnum):
    """Administrative level of a division; decides which node serves it (a str: "county"...)."""

    COUNTY = "county"
    CITY = "city"
    PROVINCE = "province"


@dataclass(frozen=True)
class Division:
    """One division code as the list knows it; retired codes are kept so callers can decide."""

    code: str
    name: str
    tier: Tier
    province: str  # province name, e.g. 江苏省
    retired: bool  # True if the list marks the code as no longer in use


@dataclass(frozen=True)
class _Entry:
    name: str
    retired: bool


@dataclass(frozen=True)
class _Table:
    provinces: Mapping[str, str]  # 2-digit prefix -> current province name
    entries: Mapping[str, _Entry]  # 6-digit code -> entry, for every code the list names


# One name period: "[1983-2013]白下区", "[2015-]密云区", "[-2010]崇文区" or just "东城区".
_PERIOD = re.compile(r"^(?:\[(?P<start>\d{4})?-(?P<end>\d{4})?\])?(?P<name>.+)$")

# Names that only say "the districts / counties / directly administered units of <parent>";
# shown with the parent's name in front so that they mean something on their own.
_GENERIC_NAMES = frozenset({"市辖区", "县"})


def _is_generic(name: str) -> bool:
    return name in _GENERIC_NAMES or "直辖" in name


def _parse_names(raw: str) -> _Entry:
    """Pick the current name (open-ended period) or, for a retired code, the latest one."""
    best: tuple[int, str] | None = None
    for part in raw.split(","):
        m = _PERIOD.match(part.strip())
        if m is None:  # pragma: no cover - the bundled list always matches
            continue
        end = m.group("end")
        if end is None:
            return _Entry(name=m.group("name"), retired=False)
        if best is None or int(end) >= best[0]:
            best = (int(end), m.group("name"))
    if best is None:  # pragma: no cover - every entry has at least one name
        return _Entry(name=raw, retired=True)
    return _Entry(name=best[1], retired=True)


def _walk(prefixes: list[Any], prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (code prefix, properties) for every node of stdnum's numdb tree."""
    for length, low, high, props, children in prefixes:
        for value in range(int(low), int(high) + 1):
            code = prefix + str(value).zfill(length)
            yield code, props
            yield from _walk(children, code)


@functools.lru_cache(maxsize=1)
def _table() -> _Table:
    """Parse the bundled list once: about 7,000 lines that never change at run time."""
    db = numdb.get("cn/loc")
    provinces: dict[str, str] = {}
    entries: dict[str, _Entry] = {}
    for code, props in _walk(db.prefixes, ""):
        if len(code) == 2 and "province" in props:
            provinces[code] = props["province"]
        elif len(code) == 6 and "county" in props:
            entries[code] = _parse_names(props["county"])
    # Prefer the XX0000 entry's current name: the province line of Hong Kong and Macao is
    # written in traditional characters, the XX0000 entry in simplified ones.
    for prefix in provinces:
        entry = entries.get(prefix + "0000")
        if entry is not None and not entry.retired:
            provinces[prefix] = entry.name
    return _Table(provinces=MappingProxyType(provinces), entries=MappingProxyType(entries))


def _check_format(code: object) -> str:
    if not isinstance(code, str) or len(code) != 6 or not (code.isascii() and code.isdigit()):
        raise UserError(
            f"division code {code!r} is not 6 ASCII digits (GB/T 2260 codes look like '320102')"
        )
    return code


def tier_of(code: str) -> Tier:
    """Tier by the code's shape alone (XX0000 province, XXXX00 city, else county)."""
    _check_format(code)
    if code.endswith("0000"):
        return Tier.PROVINCE
    if code.endswith("00"):
        return Tier.CITY
    return Tier.COUNTY


def _counties_in(prefix: str) -> list[tuple[str, _Entry]]:
    return [
        (c, e)
        for c, e in _table().entries.items()
        if c.startswith(prefix) and tier_of(c) is Tier.COUNTY
    ]


@functools.lru_cache(maxsize=4096)
def lookup_division(code: str) -> Division:
    """Resolve a code against the list so that a typo is caught where it is typed.

    City and province codes are accepted when the list names them or, for a city, when the list
    has a county under it. Retired codes resolve with ``retired=True``.
    """
    _check_format(code)
    table = _table()
    tier = tier_of(code)
    province = table.provinces.get(code[:2])
    if province is None:
        raise UserError(
            f"division code '{code}' is not a known GB/T 2260 code: "
            f"no province starts with '{code[:2]}'"
        )
    entry = table.entries.get(code)
    if entry is not None:
        name = entry.name
        if _is_generic(name):
            parent = code[:4] + "00" if tier is Tier.COUNTY else code[:2] + "0000"
            name = (lookup_division(parent).name if parent in table.entries else province) + name
        return Division(code, name, tier, province, entry.retired)
    if tier is Tier.PROVINCE:
        return Division(code, province, tier, province, retired=False)
    if tier is Tier.CITY:
        counties = _counties_in(code[:4])
        if counties:
            retired = all(e.retired for _, e in counties)
            return Division(code, f"{province} {code[:4]}", tier, province, retired)
    raise UserError(f"division code '{code}' is not a known GB/T 2260 code (not in the list)")


def full_name(code: str) -> str:
    """Province, city and own name joined, e.g. 江苏省南京市玄武区, as written in addresses.

    Placeholder city levels (北京市 110100 市辖区, 河南省 419000 省直辖...) are skipped.
    """
    division = lookup_division(code)
    entries = _table().entries
    parts = [division.province]
    if division.tier is Tier.COUNTY:
        city = entries.get(code[:4] + "00")
        if city is not None and not _is_generic(city.name) and city.name != division.province:
            parts.append(city.name)
    if division.tier is not Tier.PROVINCE:
        entry = entries.get(code)
        parts.append(entry.name if entry is not None else division.name)
    return "".join(parts)


def ancestors(code: str) -> list[str]:
    """Codes of the city and province containing ``code``, nearest first (by the code's shape)."""
    tier = tier_of(code)
    if tier is Tier.PROVINCE:
        return []
    province = code[:2] + "0000"
    if tier is Tier.CITY:
        return [province]
    return [code[:4] + "00", province]


def is_within(code: str, ancestor: str) -> bool:
    """True if ``ancestor`` is ``code`` itself or contains it (scope checks include the node's own
    division)."""
    _check_format(ancestor)
    return code == ancestor or ancestor in ancestors(code)


def division_codes() -> list[str]:
    """Every code of the national list, current and retired (records keep old codes)."""
    table = _table()
    return sorted({*table.entries, *(p + "0000" for p in table.provinces)})


def county_codes_under(prefix_code: str) -> list[str]:
    """Current county codes under a city or province code, sorted, for fan-out and demo data.

    Placeholder entries such as 320101 市辖区 ("the city's districts") are left out: they are
    not counties anyone serves.
    """
    division = lookup_division(prefix_code)
    if division.tier is Tier.COUNTY:
        raise UserError(
            f"division code '{prefix_code}' is a county; give a city (XXXX00) "
            "or province (XX0000) code"
        )
    prefix = prefix_code[:4] if division.tier is Tier.CITY else prefix_code[:2]
    return sorted(c for c, e in _counties_in(prefix) if not e.retired and not _is_generic(e.name))
