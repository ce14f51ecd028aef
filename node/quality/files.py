"""Rule library files that people write (TOML or YAML), and library documents from the wire.

A mistake in a rule file is reported as `FILE:LINE: message`, every problem at once,
like a model file: a file that does not parse, an unknown key, a rule on an entity or
attribute the model does not have, a regex that does not compile, an empty code list, a
range whose bounds do not fit the attribute's type. A library delivered by a parent is
checked the same way except against the model (the parent may use attributes this node
has not adopted yet: those rules wait, see `node.store.screening.applicable`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from node.entities import COLUMN_TYPES
from node.errors import UserError
from node.model.files import Checker, DocPath, ModelFileError, Problem, read_located
from node.model.schema import EXTERNAL_CODE_LISTS, IDENTIFIER_SCHEMES, SEMVER, Model
from node.quality.rules import (
    CHECKS,
    SEVERITIES,
    Rule,
    RuleLayer,
    RuleLibrary,
    layer_from_document,
    rule_from_document,
)

TOP_KEYS = ("name", "version", "description", "rules")
RULE_KEYS = ("id", "entity", "attribute", "check", "severity", "description")
_RULE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_LIBRARY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_NUMERIC = ("integer", "double", "decimal")
_DATED = ("date", "timestamp")
_MAX_SHOWN = 12


def load_rules(path: Path, model: Model, node: str, *, local: bool) -> RuleLayer:
    """Read and check a rule file against the node's model; problems raise ModelFileError."""
    data, locs = read_located(path)
    check = Checker(locs)
    layer = _check_layer(check, data, model, node, local)
    if check.problems or layer is None:
        raise ModelFileError(path, check.problems or [Problem(1, "not a rule library file")])
    return layer


def check_library_json(text: str, where: str) -> RuleLibrary:
    """A library delivered by a parent, checked like files (its values end up in SQL)."""
    try:
        return _check_library(json.loads(text), where)
    except (ValueError, TypeError, RecursionError) as exc:
        raise UserError(f"{where}: not a rule library: {exc}") from None


def model_problem(rule: Rule, model: Model) -> str | None:
    """Why `rule` does not fit `model` (checked as a rule file is), or None."""
    check = Checker({})
    _check_rule(check, ("rules", 0), rule.document(), model)
    return check.problems[0].message if check.problems else None


def _check_library(doc: Any, where: str) -> RuleLibrary:
    layers_doc = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers_doc, list):
        raise UserError(f"{where}: a rule library has a list of layers")
    layers: list[RuleLayer] = []
    for i, layer_doc in enumerate(layers_doc):
        check = Checker({})
        if not isinstance(layer_doc, dict) or not isinstance(layer_doc.get("node"), str):
            raise UserError(f"{where}: layer {i + 1} is not a rule layer of a node")
        body = {k: v for k, v in layer_doc.items() if k not in ("node", "local")}
        layer = _check_layer(check, body, None, layer_doc["node"], False)
        if check.problems or layer is None:
            listed = "; ".join(p.message for p in check.problems[:_MAX_SHOWN]) or "empty layer"
            raise UserError(f"{where}: layer of node {layer_doc['node']}: {listed}")
        layers.append(layer)
    return RuleLibrary(tuple(layers))


def _check_layer(
    check: Checker, data: Any, model: Model | None, node: str, local: bool
) -> RuleLayer | None:
    top = check.table(data, (), TOP_KEYS, "a rule library")
    name = check.text(top, "name", (), "the library")
    version = check.text(top, "version", (), "the library")
    if name is None:
        check.add(1, 'the library has no name (name = "...")')
    elif not _LIBRARY_NAME.match(name):
        check.add(
            check.line(("name",)),
            f"library name {name!r}: lower-case letters, digits, '.', '_' or '-'",
        )
    if version is None:
        check.add(1, "the library has no version (a semantic version MAJOR.MINOR.PATCH)")
    elif not SEMVER.match(version):
        check.add(check.line(("version",)), f"version {version!r} is not MAJOR.MINOR.PATCH")
    rules = []
    seen: dict[str, int] = {}
    for where, spec in check.tables(top.get("rules"), ("rules",), "rule"):
        rule_doc = _check_rule(check, where, spec, model)
        if rule_doc is None:
            continue
        rule_id = rule_doc["id"]
        line = check.line((*where, "id"))
        if rule_id in seen:
            check.add(line, f"rule id {rule_id!r} is used twice (first at line {seen[rule_id]})")
            continue
        seen[rule_id] = line
        rules.append(rule_from_document(rule_doc))
    if not rules and "rules" not in top:
        check.add(1, "the library has no rules ([[rules]] tables)")
    if name is None or version is None:
        return None
    return RuleLayer(
        node=node,
        name=name,
        version=version,
        rules=tuple(rules),
        local=local,
        description=str(top.get("description") or ""),
    )


def _check_rule(
    check: Checker, where: DocPath, spec: Any, model: Model | None
) -> dict[str, Any] | None:
    """One [[rules]] table as a rule document, or None (with its problems recorded)."""
    if not isinstance(spec, dict):
        check.add(check.line(where), "a rule must be a table")
        return None
    rule_check = str(spec.get("check"))
    allowed = RULE_KEYS + CHECKS.get(rule_check, ())
    check.table(spec, where, allowed, "a rule")
    line = check.item_line(where)
    before = len(check.problems)
    rule_id = check.text(spec, "id", where, "rule")
    if rule_id is None:
        check.add(check.line(where), "rule has no id")
    elif not _RULE_ID.match(rule_id):
        check.add(
            check.line((*where, "id")),
            f"rule id {rule_id!r}: lower-case letters, digits, '.', '_' or '-'",
        )
    label = f"rule {rule_id or '(no id)'}"
    if rule_check not in CHECKS:
        check.add(
            check.line((*where, "check")),
            f"{label}: check must be one of {', '.join(CHECKS)}, not {rule_check!r}",
        )
    severity = spec.get("severity", "blocking")
    if severity not in SEVERITIES:
        check.add(
            check.line((*where, "severity")),
            f"{label}: severity must be blocking or warning, not {severity!r}",
        )
    entity_name = check.text(spec, "entity", where, label)
    attribute = check.text(spec, "attribute", where, label)
    if entity_name is None or attribute is None:
        check.add(line, f"{label}: needs an entity and an attribute")
    if len(check.problems) > before or entity_name is None or attribute is None:
        return None
    # Dates written as TOML dates are kept as text, like the JSON the library travels as.
    params = {
        k: spec[k].isoformat() if isinstance(spec[k], date) else spec[k]
        for k in CHECKS[rule_check]
        if k in spec
    }
    types: dict[str, str] = {}
    if model is not None:
        entity = model.entity(entity_name)
        if entity is None:
            known = ", ".join(e.name for e in model.entities)
            check.add(
                check.line((*where, "entity")),
                f"{label}: entity {entity_name!r} is not in model {model.label()} "
                f"(its entities: {known})",
            )
            return None
        for key in ("attribute", "id_attribute"):
            name = attribute if key == "attribute" else params.get(key)
            if name is None:
                continue
            declared = entity.attribute(str(name))
            if declared is None:
                check.add(
                    check.line((*where, key)),
                    f"{label}: {entity_name} has no attribute {name!r} in model "
                    f"{model.label()} (its attributes: {', '.join(entity.attribute_names)})",
                )
                return None
            types[key] = declared.type
    _check_params(check, where, label, rule_check, params, model, entity_name, attribute, types)
    if len(check.problems) > before:
        return None
    return {
        "id": rule_id,
        "entity": entity_name,
        "attribute": attribute,
        "check": rule_check,
        "severity": severity,
        "description": str(spec.get("description") or ""),
        **params,
    }


def _check_params(
    check: Checker,
    where: DocPath,
    label: str,
    rule_check: str,
    params: dict[str, Any],
    model: Model | None,
    entity: str,
    attribute: str,
    types: Mapping[str, str],
) -> None:
    """The parameters each kind of check needs, with the values they may take."""
    attr_type = types.get("attribute")

    def problem(key: str, message: str) -> None:
        check.add(check.line((*where, key)), f"{label}: {message}")

    def needs(*keys: str) -> bool:
        missing = [k for k in keys if k not in params]
        if missing:
            problem("check", f"check {rule_check!r} needs {' and '.join(missing)}")
        return not missing

    if rule_check == "type":
        if needs("as") and (not isinstance(params["as"], str) or params["as"] not in COLUMN_TYPES):
            problem("as", f"as must be one of {', '.join(COLUMN_TYPES)}, not {params['as']!r}")
    elif rule_check == "pattern":
        if needs("pattern"):
            _check_pattern(params["pattern"], lambda m: problem("pattern", m))
    elif rule_check == "length":
        _check_bounds(params, lambda k, m: problem(k, m), "length", None)
    elif rule_check == "range":
        kind = "number" if attr_type in _NUMERIC else "date" if attr_type in _DATED else None
        if model is not None and kind is None:
            problem(
                "check", f"a range needs a number or date attribute; {attribute} is {attr_type}"
            )
            return
        _check_bounds(params, lambda k, m: problem(k, m), "range", kind)
    elif rule_check == "code_list":
        _check_code_list(params, model, lambda k, m: problem(k, m))
    elif rule_check == "identifier":
        scheme = params.get("scheme")
        if needs("scheme") and scheme not in IDENTIFIER_SCHEMES:
            problem("scheme", f"scheme must be one of {', '.join(IDENTIFIER_SCHEMES)}")
        elif model is not None:
            declared = model.entity(entity).attribute(attribute)  # type: ignore[union-attr]
            if declared is not None and declared.identifier not in (None, scheme):
                problem(
                    "scheme",
                    f"{entity}.{attribute} is declared {declared.identifier} in model "
                    f"{model.label()}, not {scheme}: identifiers are checked by declaration",
                )
            if attr_type != "string":
                problem("attribute", f"{scheme} identifiers are text; {attribute} is {attr_type}")
    elif rule_check in ("id_birth_date", "id_sex"):
        if needs("id_attribute") and model is not None:
            want = "date" if rule_check == "id_birth_date" else "string"
            if attr_type != want:
                problem("attribute", f"{attribute} must be a {want} attribute, not {attr_type}")
            if types.get("id_attribute") != "string":
                problem("id_attribute", "the ID number attribute must be text")
    elif rule_check == "reference":
        if needs("relation") and model is not None:
            relation = next((r for r in model.relations if r.name == params["relation"]), None)
            if relation is None or relation.source != entity or relation.via != attribute:
                usable = [
                    f"{r.name} (via {r.via})"
                    for r in model.relations
                    if r.source == entity and r.via
                ]
                problem(
                    "relation",
                    f"relation {params['relation']!r} of model {model.label()} is not one "
                    f"recorded by {entity}.{attribute} (usable: {', '.join(usable) or 'none'})",
                )
    elif rule_check == "unique" and not isinstance(params.get("normalised", False), bool):
        problem("normalised", "normalised must be true or false")


def _check_pattern(pattern: Any, report: Any) -> None:
    if not isinstance(pattern, str) or not pattern:
        report("pattern must be a non-empty regular expression")
        return
    # Imported here: the store (which runs the patterns) imports this module.
    from node.store.screening import pattern_problem

    problem = pattern_problem(pattern)
    if problem is not None:
        report(f"pattern {pattern!r} does not compile: {problem}")


def _check_bounds(params: dict[str, Any], report: Any, what: str, kind: str | None) -> None:
    if "min" not in params and "max" not in params:
        report("check", f"a {what} needs min, max or both")
        return
    values: dict[str, Any] = {}
    for key in ("min", "max"):
        if key not in params:
            continue
        value = params[key]
        if kind is None and what == "range":
            # Checked without a model (a delivered library): numbers or dates.
            kind = "number" if isinstance(value, int | float) else "date"
        if what == "length" or kind == "number":
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
            if what == "length":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            if not ok:
                report(key, f"{key} must be a {'whole ' if what == 'length' else ''}number")
                continue
            values[key] = value
        else:
            parsed = _date_bound(value)
            if parsed is None:
                report(key, f'{key} must be a date "YYYY-MM-DD" or "today", not {value!r}')
                continue
            values[key] = parsed
    low, high = values.get("min"), values.get("max")
    if type(low) is type(high) and low is not None and low > high:
        report("max", "min is above max")


def _date_bound(value: Any) -> date | None:
    if value == "today":
        return date.today()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _check_code_list(params: dict[str, Any], model: Model | None, report: Any) -> None:
    has_list, has_values = "code_list" in params, "values" in params
    if has_list == has_values:
        report("check", "a code_list check names a model code list (code_list) or lists values")
        return
    if has_values:
        values = params["values"]
        if not isinstance(values, list) or not values:
            report("values", "values is an empty code list")
        elif not all(isinstance(v, str) and v for v in values):
            report("values", "values must be non-empty text codes")
        return
    name = params["code_list"]
    if not isinstance(name, str):
        report("code_list", "code_list must be the name of a code list")
    elif model is not None and model.code_list(name) is None and name not in EXTERNAL_CODE_LISTS:
        known = ", ".join(c.name for c in model.code_lists)
        report("code_list", f"model {model.label()} has no code list {name!r} (it has: {known})")
    elif model is not None:
        code_list = model.code_list(name)
        if code_list is not None and not code_list.codes and not code_list.external:
            report("code_list", f"code list {name!r} is empty")


def layer_json(layer: RuleLayer) -> str:
    return json.dumps(layer.document(), sort_keys=True, ensure_ascii=False)


def layer_from_json(text: str) -> RuleLayer:
    return layer_from_document(json.loads(text))
