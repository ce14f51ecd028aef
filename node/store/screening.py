"""Rules compiled to one set-based DuckDB query per entity.

Every rule becomes a SQL expression that is NULL when a row passes and a reason when
it fails; the rules of an entity are evaluated together, in one pass over the rows
(an import's staged rows or a child's Arrow batch), into two lists per row: the
blocking rules it failed (the row goes to quarantine) and the warning rules it failed
(it is applied and flagged). No Python runs per row.

The query reads three relations the caller registers: the rows (alias `s`, with the
entity's attribute columns, `origin_node` and a row id), `model_codes` (list, code)
for code lists, and `division_codes` (code) for identifier checks (both registered
for every write transaction that screens: `QualityStore.relations`). Reference and
uniqueness rules read the entity tables of the store as they are at that moment.

A rule applies to rows that carry every attribute it reads (an import of some columns
is not checked on the others); a rule about an entity or attribute this node's model
does not have waits until the model has it (`tongyuan quality rules show` says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb

from node.entities import COLUMN_TYPES, Entity
from node.model.schema import EXTERNAL_CODE_LISTS, Model
from node.quality.files import model_problem
from node.quality.rules import Rule, RuleLayer, RuleLibrary, rule_label
from node.store.catalog import CATALOG
from node.store.checksums import compact_id_sql, gb11643_problem_sql, gb32100_problem_sql
from node.store.protected import protected_form_sql, withholding_nodes_sql
from node.store.schema import entity_table, quote
from node.store.sources import norm_key_sql

_TYPE_WORDS = {
    "integer": "a whole number",
    "double": "a number",
    "decimal": "a decimal number",
    "boolean": "true or false",
    "date": "a date",
    "timestamp": "a date and time",
    "string": "text",
}


def literal(value: Any) -> str:
    """A SQL literal for a value from a rule file (text is quoted, never spliced)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class CompiledRule:
    label: str
    severity: str
    reason_sql: str
    # The attributes the rule reads (a child's protected values pass: see select_sql).
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Screen:
    """An entity's applicable rules for rows carrying some attributes, compiled."""

    entity: str
    rules: tuple[CompiledRule, ...]
    # (attribute, column type) of every attribute a rule reads, for the protected flags.
    types: tuple[tuple[str, str], ...] = ()

    def _list(self, severity: str, flags: Mapping[str, tuple[str, str]] | None) -> str:
        items = [
            f"{{'rule': {literal(r.label)}, 'reason': {_passing_protected(r, flags)}}}"
            for r in self.rules
            if r.severity == severity
        ]
        if not items:
            return "[]::STRUCT(rule VARCHAR, reason VARCHAR)[]"
        return f"list_filter([{', '.join(items)}], lambda x: x.reason IS NOT NULL)"

    def select_sql(
        self, source: str, row_id: str, where: str = "true", *, protected: bool = False
    ) -> str:
        """Rows of `source` that failed a rule: (row id, blocking list, warning list).
        With `protected` (a child's rows), a rule reading a value pseudonymised or masked
        at its source passes: the source checked the clear value, the parent cannot.
        Whether a value is protected is computed once per row and attribute (a column
        beside the row's), and every rule reading the attribute reads that flag."""
        flags = self._flags() if protected else None
        blocking, warning = self._list("blocking", flags), self._list("warning", flags)
        rows = source
        if flags:
            items = ", ".join(f"{sql} AS {quote(name)}" for name, sql in flags.values())
            rows = f"(SELECT *, {items} FROM {source} s)"
        return (
            f"SELECT * FROM (SELECT s.{row_id} AS _id, {blocking} AS _blocking, "
            f"{warning} AS _warning FROM {rows} s WHERE {where}) "
            "WHERE len(_blocking) > 0 OR len(_warning) > 0"
        )

    def _flags(self) -> dict[str, tuple[str, str]]:
        """attribute → (flag column, SQL over `s`) for each attribute a rule reads: a text
        value in a protected form, or an empty non-text value from a node that withholds
        it (a value that may not leave in clear leaves empty)."""
        flags: dict[str, tuple[str, str]] = {}
        for index, (attribute, column_type) in enumerate(self.types):
            value = f"s.{quote(attribute)}"
            if column_type == "string":
                sql = protected_form_sql(value)
            else:
                withholding = withholding_nodes_sql(entity_table(CATALOG), self.entity, attribute)
                sql = f"coalesce({value} IS NULL AND s.origin_node IN {withholding}, false)"
            flags[attribute] = (f"_protected_{index}", sql)
        return flags


def _passing_protected(rule: CompiledRule, flags: Mapping[str, tuple[str, str]] | None) -> str:
    """The rule's reason, NULL (passing) where a value it reads is protected."""
    read = [flags[a][0] for a in rule.attributes if a in flags] if flags else []
    if not read:
        return rule.reason_sql
    hidden = " OR ".join(f"s.{quote(name)}" for name in read)
    return f"CASE WHEN {hidden} THEN NULL ELSE {rule.reason_sql} END"


def applicable(library: RuleLibrary, model: Model) -> list[tuple[RuleLayer, Rule, str | None]]:
    """Every rule with why it does not apply here (None when it does): a rule is checked
    against this node's model exactly as a rule file is (a library from the parent was
    written against the parent's model), so a rule that does not fit waits instead of
    failing imports."""
    return [(layer, rule, model_problem(rule, model)) for layer, rule in library.rules()]


def compile_screen(
    library: RuleLibrary,
    model: Model,
    entity: Entity,
    fields: tuple[str, ...] | None = None,
    broken: Mapping[str, str] | None = None,
) -> Screen | None:
    """The entity's rules that apply to rows carrying `fields` (all attributes if None),
    without those `broken` names (rules that failed a trial run here)."""
    carried = set(fields if fields is not None else entity.column_names)
    compiled = []
    read: dict[str, str] = {}
    for layer, rule, why in applicable(library, model):
        if why is not None or rule.entity != entity.name:
            continue
        if not set(rule.attributes) <= carried:
            continue
        label = rule_label(layer, rule)
        if broken and label in broken:
            continue
        compiled.append(
            CompiledRule(label, rule.severity, _reason(rule, model, entity), tuple(rule.attributes))
        )
        read.update((a, entity.column(a).type) for a in rule.attributes)
    return Screen(entity.name, tuple(compiled), tuple(read.items())) if compiled else None


def trial_sql(entity: Entity, rule: CompiledRule) -> str:
    """A query running one rule over no rows of the entity's table: it fails to bind
    exactly when the rule could not run on real rows."""
    return (
        f"SELECT {rule.reason_sql} FROM (SELECT *, origin_seq AS _row "
        f"FROM {entity_table(entity)} LIMIT 0) s"
    )


def pattern_problem(pattern: str) -> str | None:
    """Why DuckDB (RE2) cannot compile `pattern`, or None: the engine that runs a rule
    checks its pattern, on a connection of its own."""
    with duckdb.connect() as con:
        try:
            con.execute("SELECT regexp_full_match('', ?)", [pattern]).fetchall()
        except duckdb.Error as exc:
            return str(exc).splitlines()[0]
    return None


def _relation_target(model: Model, rule: Rule) -> tuple[str, str] | None:
    relation = next((r for r in model.relations if r.name == rule.param("relation")), None)
    if relation is None or relation.via != rule.attribute or relation.source != rule.entity:
        return None
    target = model.entity(relation.target)
    return (relation.target, target.key) if target is not None else None


def _compact_id(column: str) -> str:
    """The ID number as the GB 11643 check reads it (full-width digits, spaces, lower x)."""
    return compact_id_sql(f"CAST({column} AS VARCHAR)")


def _reason(rule: Rule, model: Model, entity: Entity) -> str:
    """SQL: NULL when `s`'s row passes the rule, else why it does not."""
    v = f"s.{quote(rule.attribute)}"
    text = f"CAST({v} AS VARCHAR)"
    check = rule.check
    attr_type = entity.column(rule.attribute).type
    if check == "required":
        return f"CASE WHEN {v} IS NULL THEN 'a value is required' END"
    if check == "type":
        target = COLUMN_TYPES[rule.param("as")][0]
        word = _TYPE_WORDS[rule.param("as")]
        return (
            f"CASE WHEN {v} IS NOT NULL AND TRY_CAST({text} AS {target}) IS NULL "
            f"THEN format('{{}} is not {word}', {text}) END"
        )
    if check == "pattern":
        pattern = literal(rule.param("pattern"))
        return (
            f"CASE WHEN {v} IS NOT NULL AND NOT regexp_full_match({text}, {pattern}) "
            f"THEN format('{{}} does not match {{}}', {text}, {pattern}) END"
        )
    if check == "length":
        low, high = rule.param("min"), rule.param("max")
        length = f"length({text})"
        fails = " OR ".join(
            c
            for c in (
                f"{length} < {low}" if low is not None else "",
                f"{length} > {high}" if high is not None else "",
            )
            if c
        )
        wanted = f"{low if low is not None else 0}..{high if high is not None else ''}"
        return (
            f"CASE WHEN {v} IS NOT NULL AND ({fails}) "
            f"THEN format('{{}} has {{}} characters, {wanted} expected', {text}, {length}) END"
        )
    if check == "range":
        return _range_reason(rule, v, text, attr_type)
    if check == "code_list":
        if rule.param("values") is not None:
            codes = ", ".join(literal(c) for c in rule.param("values"))
            allowed, name = f"({codes})", "the rule's list"
        else:
            name = str(rule.param("code_list"))
            declared = model.code_list(name)
            external = declared.external if declared is not None else name
            if external in EXTERNAL_CODE_LISTS:
                # The division list the node knows (every period), not a model list.
                allowed = "(SELECT code FROM division_codes)"
            else:
                allowed = f"(SELECT code FROM model_codes WHERE list = {literal(name)})"
        return (
            f"CASE WHEN {v} IS NOT NULL AND {text} NOT IN {allowed} "
            f"THEN format('{{}} is not a code of {{}}', {text}, {literal(name)}) END"
        )
    if check == "identifier":
        scheme = rule.param("scheme")
        compile_id = gb11643_problem_sql if scheme == "GB 11643" else gb32100_problem_sql
        return compile_id(v, "division_codes")
    if check == "id_birth_date":
        compact = _compact_id(f"s.{quote(rule.param('id_attribute'))}")
        embedded = f"TRY_CAST(TRY_STRPTIME(substr({compact}, 7, 8), '%Y%m%d') AS DATE)"
        return (
            f"CASE WHEN {v} IS NOT NULL AND length({compact}) = 18 AND {embedded} IS NOT NULL "
            f"AND {embedded} <> {v} THEN format('birth date {{}} does not agree with the ID "
            f"number (which says {{}})', {text}, strftime({embedded}, '%Y-%m-%d')) END"
        )
    if check == "id_sex":
        compact = _compact_id(f"s.{quote(rule.param('id_attribute'))}")
        digit = f"TRY_CAST(substr({compact}, 17, 1) AS INTEGER)"
        said = f"CASE WHEN {digit} % 2 = 1 THEN '1' ELSE '2' END"
        return (
            f"CASE WHEN {text} IN ('1', '2') AND length({compact}) = 18 AND {digit} IS NOT NULL "
            f"AND {text} <> {said} THEN format('sex {{}} does not agree with the ID number "
            f"(its 17th digit {{}} says {{}})', {text}, {digit}, {said}) END"
        )
    if check == "reference":
        related = _relation_target(model, rule)
        assert related is not None  # applicable() checked it
        target_entity, target_key = related
        table = f"tongyuan.rows_{target_entity}"
        return (
            f"CASE WHEN {v} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table} t "
            f"WHERE t.{quote(target_key)} = {v} AND NOT t._deleted) "
            f"THEN format('{{}} is not a known {target_entity}', {text}) END"
        )
    if check == "unique":
        normalised = bool(rule.param("normalised", False))
        mine = norm_key_sql(v) if normalised else v
        theirs = (
            norm_key_sql(f"t.{quote(rule.attribute)}")
            if normalised
            else (f"t.{quote(rule.attribute)}")
        )
        key = quote(entity.key)
        # Versions of one record (several windows in one group) are one record.
        identity = f"s.origin_node || '|' || CAST(s.{key} AS VARCHAR)"
        return (
            f"CASE WHEN {v} IS NOT NULL AND (count(DISTINCT {identity}) OVER "
            f"(PARTITION BY {mine}) > 1 "
            f"OR EXISTS (SELECT 1 FROM {entity_table(entity)} t WHERE {theirs} = {mine} "
            f"AND NOT t._deleted AND NOT (t.origin_node = s.origin_node AND t.{key} = s.{key}))) "
            f"THEN format('{{}} is not unique', {text}) END"
        )
    raise ValueError(f"unknown check {check!r}")  # files.py refuses these


def _range_reason(rule: Rule, v: str, text: str, attr_type: str) -> str:
    bounds = []
    for key, op in (("min", "<"), ("max", ">")):
        value = rule.param(key)
        if value is None:
            continue
        compared = v
        if attr_type in ("date", "timestamp"):
            bound = "current_date" if value == "today" else literal(date.fromisoformat(str(value)))
            # Bounds are days: a time during the last day is within it.
            compared = f"CAST({v} AS DATE)"
        else:
            bound = literal(value)
        bounds.append((f"{compared} {op} {bound}", str(value)))
    fails = " OR ".join(b[0] for b in bounds)
    wanted = literal(f"{rule.param('min', '')}..{rule.param('max', '')}")
    return (
        f"CASE WHEN {v} IS NOT NULL AND ({fails}) "
        f"THEN format('{{}} is outside {{}}', {text}, {wanted}) END"
    )
