"""The forms a value protected at its source takes, made and recognised in one place.

`node/store/outbound.py` pseudonymises and masks with `pseudonym_sql` / `mask_sql`
below; a parent recognises exactly those forms with `protected_form_sql` (its rule
screening lets such values pass, its cross-check does not call them discrepancies).
Both read the same shapes (`PSEUDONYM_*`, `MASK_SHAPES`), so they cannot drift apart.
Kept apart from `outbound` so that the modules it builds on (sources) can use it too.

A pseudonym is `ty1:` and exactly 32 lower-case hex digits. A display mask keeps at
most `MASK_KEEP_LEFT` characters, then one or more `*`, then at most `MASK_KEEP_RIGHT`
characters. A value in clear of that shape (a short value with a star in it) is taken
for a mask, since the parent cannot tell it from one: it escapes the parent's rules
with at most 10 characters besides its stars, so no ID number, credit code or phone
number in clear can pass that way.
"""

from __future__ import annotations

from dataclasses import dataclass

PSEUDONYM_PREFIX = "ty1:"
PSEUDONYM_HEX_DIGITS = 32
_HEX = "0123456789abcdef"


@dataclass(frozen=True)
class MaskShape:
    """What a display mask keeps: `left` characters at the start and `right` at the end
    of a value longer than both (else every character becomes `*`); with `stars`, a
    fixed number of `*` instead of one per hidden character; with `at_least_one`, a
    value of `left` characters or fewer keeps them and gains one `*`."""

    left: int
    right: int
    stars: int | None = None
    at_least_one: bool = False


MASK_SHAPES: dict[str, MaskShape] = {
    "id_number": MaskShape(6, 4),
    "name": MaskShape(1, 0, at_least_one=True),
    "phone": MaskShape(3, 4),
    "address": MaskShape(6, 0, stars=4),
    "other": MaskShape(1, 1),
}
MASK_KEEP_LEFT = max(s.left for s in MASK_SHAPES.values())
MASK_KEEP_RIGHT = max(s.right for s in MASK_SHAPES.values())
# RE2, newlines included: at most MASK_KEEP_LEFT characters, `*`s, at most MASK_KEEP_RIGHT.
_MASK_PATTERN = f"(?s).{{0,{MASK_KEEP_LEFT}}}\\*+.{{0,{MASK_KEEP_RIGHT}}}"


def _stars(count: str) -> str:
    return f"repeat('*', greatest({count}, 0))"


def mask_sql(expression: str, kind: str) -> str:
    """The display mask of a VARCHAR expression (NULL stays NULL), shaped by `kind`."""
    shape = MASK_SHAPES[kind]
    v, n = expression, f"length({expression})"
    if shape.stars is not None:
        stars = "*" * shape.stars
        return f"(CASE WHEN {v} IS NULL THEN NULL ELSE left({v}, {shape.left}) || '{stars}' END)"
    if shape.at_least_one:
        return f"(left({v}, {shape.left}) || repeat('*', greatest({n} - {shape.left}, 1)))"
    kept = shape.left + shape.right
    keep = f"left({v}, {shape.left}) || {_stars(f'{n} - {kept}')}"
    if shape.right:
        keep += f" || right({v}, {shape.right})"
    return f"(CASE WHEN {n} > {kept} THEN {keep} ELSE {_stars(n)} END)"


def pseudonym_form_sql(expression: str) -> str:
    """SQL: the VARCHAR expression is a pseudonym (`ty1:` and 32 lower-case hex digits);
    no regular expression, so it is cheap on every row."""
    length = len(PSEUDONYM_PREFIX) + PSEUDONYM_HEX_DIGITS
    return (
        f"(starts_with({expression}, '{PSEUDONYM_PREFIX}') AND length({expression}) = {length} "
        f"AND rtrim(substr({expression}, {len(PSEUDONYM_PREFIX) + 1}), '{_HEX}') = '')"
    )


def mask_form_sql(expression: str) -> str:
    """SQL: the VARCHAR expression has the shape of a display mask (`mask_sql`); the
    pattern runs only on values holding a `*`."""
    return (
        f"(contains({expression}, '*') AND length({expression}) >= 1 "
        f"AND regexp_full_match({expression}, '{_MASK_PATTERN}'))"
    )


def protected_form_sql(expression: str) -> str:
    """SQL, never NULL: the VARCHAR expression is a value protected at its source (a
    pseudonym or a display mask), which a parent cannot check against rules. Compute it
    once per value (see `Screen.select_sql`), not once per rule."""
    return (
        f"coalesce(CASE WHEN {expression} IS NULL THEN false "
        f"WHEN {pseudonym_form_sql(expression)} THEN true "
        f"ELSE {mask_form_sql(expression)} END, false)"
    )


def incomparable_sql(left: str, right: str) -> str:
    """SQL: two VARCHAR values cannot be compared because one was masked, or only one
    was pseudonymised (two pseudonyms of one federation key compare like the values)."""
    masked = f"coalesce({mask_form_sql(left)} OR {mask_form_sql(right)}, false)"
    return (
        f"({masked} OR coalesce({pseudonym_form_sql(left)}, false) "
        f"<> coalesce({pseudonym_form_sql(right)}, false))"
    )


def withholding_nodes_sql(catalog_table: str, entity: str, attribute: str) -> str:
    """SQL: the origin nodes whose records may carry `entity`.`attribute` empty because
    the node withheld it (a non-text value that may not leave in clear leaves empty):
    nodes with a published or retired conditional or not-shared resource of the entity
    listing the attribute, by their catalogue entries as harvested here. The receiver
    does not know each node's grade treatment, so it counts every such field."""
    ent, attr = _literal(entity), _literal(attribute)
    return (
        f"(SELECT origin_node FROM {catalog_table} WHERE NOT _deleted AND entity = {ent} "
        "AND status IN ('published', 'retired') AND sharing_kind IN ('conditional', 'none') "
        f"AND list_contains(json_extract_string(fields, '$[*].name'), {attr}))"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
