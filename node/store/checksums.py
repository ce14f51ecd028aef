"""Set-based checks of Chinese ID numbers (GB 11643) and unified social credit codes (GB 32100).

The quality rule engine checks millions of rows in one DuckDB query, so each check here is a SQL
expression, not Python run per row. The expression is NULL when the value is valid or missing and
otherwise a short reason for the quarantine list, e.g. ``GB 11643: check digit X expected``.

python-stdnum (``stdnum.cn.ric``, ``stdnum.cn.uscc``) is the reference: the tests compare every
verdict with it on 100,000+ generated values of each kind. Values are compacted as stdnum's
``compact`` does: surrounding whitespace is ignored, full-width and mathematical digits count as
ASCII digits, lower-case letters as upper-case (``x`` as ``X``), and in credit codes spaces and
hyphens (Unicode dashes too) are ignored anywhere; an ID number with an inner space is invalid,
as in stdnum. Deliberate differences from stdnum:

GB 11643 (citizen ID number):

- The division code only has to be a GB/T 2260 code of any period (``divisions``). stdnum wants
  the code in force in the birth year, but numbers issued since 1984 carry the code of the place
  of registration at issue, often newer than the holder's birth (a Beijing 110118 Miyun number
  of someone born in 1960: code created in 2015), so stdnum rejects real numbers.
- ``830000`` is accepted: residence permits of Taiwan residents (2018) use it in the GB 11643
  format; those of Hong Kong and Macao residents use 810000 and 820000, which are in the list.
- The birth date must be neither before 1870 nor after tomorrow (DuckDB's ``current_date``,
  with one day of slack for time zones). stdnum accepts any date of the years 1 to 9999 that the
  division allows; nobody alive when 18-digit numbers came (1999) was born before 1870.
- 15-digit numbers (GB 11643-1989, first-generation cards, invalid since 2013) are invalid, as
  in stdnum, with a reason of their own.
- stdnum raises KeyError instead of answering for an unknown code under a known province
  (``119999...``); here that is an unknown division code.

GB 32100 (unified social credit code):

- Characters 1 and 2 (registration authority, organisation type) may be any code character.
  stdnum wants digits, but registration authorities with letters exist (``A``, ``N``, ``Y``).
- The division code (characters 3-8) must lie in a province of the list, or be ``10xxxx`` for
  national registrations. stdnum does not check it. The full 6-digit code is not checked
  because registration authorities of development zones use codes outside GB/T 2260: Suzhou
  Industrial Park 320594, Xiong'an New Area 133100.
- The organisation code in characters 9-17 must carry its own GB 11714 check digit. stdnum
  checks only the final MOD 31 check character.

Both:

- A value that is empty after compaction (``''``, only whitespace, for credit codes also only
  hyphens) is missing, so NULL like a NULL. Missing values are the ``required`` rule's business.
  stdnum calls them invalid.
- Python's ``upper()`` turns a few ligatures into ASCII letters (``ﬀ`` becomes ``FF``); such
  values are invalid here.

How it stays fast: DuckDB shares common subexpressions only in projections and not inside CASE
branches, and the engine's outer WHERE is pushed down onto the reasons, into a filter. So each
expression binds the compacted value once with a one-element ``list_transform`` lambda and works
on that, in a projection or a filter alike. The ID check digit is integer arithmetic on the 17
digits parsed as one number; both credit code sums come from one ``list_dot_product`` over the
characters. ID division codes are looked up with one hash (mark) join; for credit codes the
provinces of ``divisions`` become one 128-bit mask, computed once per query.
"""

from __future__ import annotations

import functools
import unicodedata

import pyarrow as pa

from node.divisions import division_codes

__all__ = [
    "compact_id_sql",
    "division_codes_table",
    "gb11643_problem_sql",
    "gb32100_problem_sql",
]

# The characters stdnum.util.clean maps to ASCII digits, spaces and hyphens (the other characters
# it maps become punctuation, which is invalid here either way).
_DIGIT_FONTS = (
    "FULLWIDTH DIGIT",
    "MATHEMATICAL BOLD DIGIT",
    "MATHEMATICAL DOUBLE-STRUCK DIGIT",
    "MATHEMATICAL SANS-SERIF DIGIT",
    "MATHEMATICAL SANS-SERIF BOLD DIGIT",
    "MATHEMATICAL MONOSPACE DIGIT",
)
_DIGIT_NAMES = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
WIDE_DIGITS = "".join(unicodedata.lookup(f"{f} {d}") for f in _DIGIT_FONTS for d in _DIGIT_NAMES)
WIDE_DIGITS_AS = "0123456789" * len(_DIGIT_FONTS)
SPACES = (
    " \u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
DASHES = (
    "-\u058a\u05be\u2010\u2011\u2012\u2013\u2014\u2015\ufe63\uff0d\u1680\u180a\u203e\u2043"
    "\u00af\u02d7\uffe3\u207b\u208b\u2212\u23af\u23ba\u23bb\u23bc\u23bd\u23e4"
)
# What str.strip() removes besides the spaces above (U+1680 is a dash to stdnum, kept).
OTHER_WHITESPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029"

_RIC_WEIGHTS = tuple(pow(2, 18 - i, 11) for i in range(1, 18))  # ISO 7064 MOD 11-2
_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100 code characters, values 0-30
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))
_ORG_WEIGHTS = (0,) * 8 + (3, 7, 9, 10, 5, 8, 4, 2) + (0,)  # GB 11714 on characters 9-16
_CODE_CHAR = "[0-9A-HJ-NP-RTUWXYa-hj-np-rtuwxy]"
# Both credit code sums come from one dot product: a character's value is packed as
# value + 2**15 * (GB 11714 value) and a weight as weight + 2**15 * (GB 11714 weight), so the
# product's bits 0-14 hold the MOD 31 sum, bits 15-29 a cross term and bits 30+ the MOD 11 sum
# (9,150, 12,115 and 1,680 at most: no overlap, and exact in a DOUBLE).
_PACK = 1 << 15


def _let(name: str, value: str, body: str) -> str:
    """SQL evaluating ``body`` with ``name`` bound to ``value``, which is computed once."""
    return f"list_transform([{value}], lambda {name}: {body})[1]"


def _plain(v: str) -> str:
    """SQL: ``v`` is ASCII and neither starts nor ends with whitespace (the usual case)."""
    return f"ascii({v}) > 32 AND ascii(right({v}, 1)) > 32 AND strlen({v}) = length({v})"


def _runs(text: str) -> list[tuple[str, str]]:
    """Runs of consecutive code points in ``text`` (sorted) as (first, last)."""
    runs: list[tuple[str, str]] = []
    for ch in sorted(text):
        if runs and ord(ch) == ord(runs[-1][1]) + 1:
            runs[-1] = (runs[-1][0], ch)
        else:
            runs.append((ch, ch))
    return runs


def _char_class(chars: str) -> str:
    """A regular expression character class matching ``chars``."""
    members = "".join(
        f"\\x{{{ord(first):x}}}" + (f"-\\x{{{ord(last):x}}}" if last > first else "")
        for first, last in _runs(chars)
    )
    return f"[{members}]"


def _trim(v: str, whitespace: str) -> str:
    """SQL: ``v`` without leading and trailing ``whitespace`` (a regex is cheaper than trim())."""
    members = _char_class(whitespace)
    return f"regexp_replace({v}, '^{members}+|{members}+$', '', 'g')"


def _ascii_digits(v: str) -> str:
    """SQL: ``v`` with WIDE_DIGITS as ASCII digits.

    translate() builds its map for every row, so the usual full-width digits are replaced one by
    one and translate() is left to the rare mathematical ones.
    """
    full_width = WIDE_DIGITS[:10]
    replaced = v
    for digit, ch in enumerate(full_width):
        replaced = f"replace({replaced}, '{ch}', '{digit}')"
    return (
        f"CASE WHEN regexp_matches({v}, '{_char_class(WIDE_DIGITS[10:])}') "
        f"THEN translate({v}, '{WIDE_DIGITS}', '{WIDE_DIGITS_AS}') ELSE {replaced} END"
    )


def compact_id_sql(v: str) -> str:
    """SQL: stdnum's ric.compact without its upper() (only a final ``x`` matters), '' as NULL."""
    whitespace = SPACES + OTHER_WHITESPACE
    return (
        f"nullif(CASE WHEN {_plain(v)} THEN {v} "
        f"WHEN strlen({v}) = length({v}) THEN {_trim(v, whitespace)} "
        f"ELSE {_trim(_ascii_digits(v), whitespace)} END, '')"
    )


def _compact_credit_code(v: str) -> str:
    """SQL: stdnum's uscc.compact without its upper() (checks accept lower case), '' as NULL."""
    ascii_only = f"replace(replace({v}, ' ', ''), '-', '')"
    separated = f"regexp_replace({v}, '{_char_class(SPACES + DASHES)}', '', 'g')"
    return (
        f"nullif(CASE WHEN {_plain(v)} AND NOT contains({v}, ' ') AND NOT contains({v}, '-') "
        f"THEN {v} WHEN strlen({v}) = length({v}) THEN {_trim(ascii_only, OTHER_WHITESPACE)} "
        f"ELSE {_trim(_ascii_digits(separated), OTHER_WHITESPACE)} END, '')"
    )


def _weighted_digit_sum(n: str, weights: tuple[int, ...], modulus: int) -> str:
    """SQL: a number congruent to sum(digit * weight) mod ``modulus`` over the digits of ``n``.

    With q_k = n // 10**k, digit k is q_k - 10 * q_(k+1), so the sum is a sum of q_k times
    constants: 16 divisions instead of 17 divisions and 17 remainders.
    """
    terms = []
    for k in range(len(weights)):
        below = weights[-k] if k else 0  # weight of the digit at 10**(k-1)
        coefficient = (weights[-1 - k] - 10 * below) % modulus
        if coefficient:
            terms.append(f"{n} * {coefficient}" if k == 0 else f"{n} // {10**k} * {coefficient}")
    return " + ".join(terms)


def gb11643_problem_sql(column: str, divisions: str) -> str:
    """SQL: NULL if the VARCHAR ``column`` is a valid GB 11643 ID number or missing, else why not.

    ``divisions`` names a relation with a VARCHAR column ``code`` holding every GB/T 2260 code
    (`division_codes_table`).
    """
    c = compact_id_sql(f"CAST({column} AS VARCHAR)")
    known = f"substr({c}, 1, 6) IN (SELECT code FROM {divisions} UNION ALL SELECT '830000')"
    shape = _let(
        "p",
        "length(regexp_extract(r.c, '^[0-9]{0,17}')) + 1",  # first non-digit
        "CASE WHEN regexp_full_match(r.c, '[0-9]{15}') "
        "THEN 'GB 11643: old 15-digit number, 18 characters expected' "
        "WHEN p <= least(length(r.c), 17) "
        "THEN format('GB 11643: ''{}'' at position {} is not a digit', substr(r.c, p, 1), p) "
        "WHEN length(r.c) >= 18 AND NOT regexp_full_match(substr(r.c, 18, 1), '[0-9Xx]') "
        "THEN format('GB 11643: ''{}'' at position 18 is not a digit or X', substr(r.c, 18, 1)) "
        "ELSE format('GB 11643: 18 characters expected, got {}', length(r.c)) END",
    )
    born = "substr(r.c, 7, 8)"
    date = f"try_strptime({born}, '%Y%m%d')"
    total = _weighted_digit_sum("n", _RIC_WEIGHTS, 11)
    check = _let(
        "e",
        _let("n", "CAST(substr(r.c, 1, 17) AS BIGINT)", f"('10X98765432')[({total}) % 11 + 1]"),
        "CASE WHEN e <> upper(r.c[18]) THEN 'GB 11643: check digit ' || e || ' expected' END",
    )
    body = (
        "CASE WHEN r.c IS NULL THEN NULL "
        f"WHEN NOT regexp_full_match(r.c, '[0-9]{{17}}[0-9Xx]') THEN {shape} "
        f"WHEN NOT coalesce({date} BETWEEN DATE '1870-01-01' AND current_date + 1, false) "
        f"THEN 'GB 11643: birth date ' || {born} || CASE WHEN {date} IS NULL THEN ' is not a date' "
        f"WHEN {born} < '1870' THEN ' is before 1870' ELSE ' is in the future' END "
        "WHEN NOT r.k THEN 'GB 11643: division code ' || substr(r.c, 1, 6) || ' unknown' "
        f"ELSE {check} END"
    )
    return _let("r", f"{{'c': {c}, 'k': {known}}}", body)


def _packed_values() -> list[float]:
    """Packed values of the code characters, indexed by ASCII code - 47 (see _PACK)."""
    table = [0.0] * 75
    for value, ch in enumerate(_ALPHABET):
        for variant in {ch, ch.lower()}:
            table[ord(variant) - 48] = float(value + _PACK * int(ch, 36))
    return table


def gb32100_problem_sql(column: str, divisions: str) -> str:
    """SQL: NULL if the VARCHAR ``column`` is a valid GB 32100 credit code or missing, else why not.

    ``divisions`` names a relation with a VARCHAR column ``code`` holding every GB/T 2260 code
    (`division_codes_table`); only its provinces (first two digits) are used.
    """
    c = _compact_credit_code(f"CAST({column} AS VARCHAR)")
    provinces = (
        f"(SELECT bit_or(1::HUGEINT << TRY_CAST(substr(code, 1, 2) AS INTEGER)) FROM {divisions})"
    )
    shape = _let(
        "p",
        f"length(regexp_extract(r.c, '^({_CODE_CHAR}{{2}}[0-9]{{6}}{_CODE_CHAR}{{0,10}}"
        f"|{_CODE_CHAR}{{2}}[0-9]{{0,6}}|{_CODE_CHAR}{{0,2}})')) + 1",  # first bad character
        "CASE WHEN p <= least(length(r.c), 18) "
        "THEN format('GB 32100: ''{}'' at position {} is not {}', substr(r.c, p, 1), p, "
        "CASE WHEN p BETWEEN 3 AND 8 THEN 'a digit (division code)' "
        "ELSE 'a code character' END) "
        "ELSE format('GB 32100: 18 characters expected, got {}', length(r.c)) END",
    )
    weights = [float(w + _PACK * o) for w, o in zip(_USCC_WEIGHTS, _ORG_WEIGHTS, strict=True)]
    sums = (
        "CAST(list_dot_product(list_transform(string_split(substr(r.c, 1, 17), ''), "
        f"lambda ch: ({_packed_values()}::DOUBLE[])[ascii(ch) - 47]), "
        f"{weights}::DOUBLE[]) AS BIGINT)"
    )
    expected = f"('{_ALPHABET}')[(31 - s % {_PACK} % 31) % 31 + 1]"
    organisation = f"('0X987654321')[s // {_PACK * _PACK} % 11 + 1]"
    check = _let(
        "s",
        sums,
        f"CASE WHEN {expected} <> upper(r.c[18]) "
        f"THEN 'GB 32100: check character ' || {expected} || ' expected' "
        f"WHEN {organisation} <> upper(r.c[17]) "
        f"THEN 'GB 32100: organisation code check digit ' || {organisation} || ' expected' END",
    )
    body = (
        "CASE WHEN r.c IS NULL THEN NULL "
        f"WHEN NOT regexp_full_match(r.c, '{_CODE_CHAR}{{2}}[0-9]{{6}}{_CODE_CHAR}{{10}}') "
        f"THEN {shape} "
        "WHEN (r.m >> CAST(substr(r.c, 3, 2) AS INTEGER)) & 1 = 0 AND substr(r.c, 3, 2) <> '10' "
        "THEN 'GB 32100: division code ' || substr(r.c, 3, 6) || ' is in no known province' "
        f"ELSE {check} END"
    )
    return _let("r", f"{{'c': {c}, 'm': {provinces}}}", body)


@functools.cache
def division_codes_table() -> pa.Table:
    """Every GB/T 2260 code python-stdnum knows, current and retired, as one VARCHAR ``code``."""
    return pa.table({"code": pa.array(division_codes(), pa.string())})
