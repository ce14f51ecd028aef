"""Model files and mapping files that people write, in TOML or YAML.

Admins copy the base model, edit it and load it back; a mistake must point at the line
to fix, so every problem is reported as `FILE:LINE: message` (all problems at once,
joined with "; ", in line order). Positions come from tomllib's error for a file that
does not parse, from a small position scanner over the TOML text for everything else,
and from yaml.compose marks for YAML.
"""

from __future__ import annotations

import bisect
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from node.entities import COLUMN_TYPES, INTERNAL_NAMES, _check_identifier
from node.errors import ConfigError, UserError
from node.model.schema import (
    CARDINALITIES,
    EXTERNAL_CODE_LISTS,
    IDENTIFIER_SCHEMES,
    SEMVER,
    Attribute,
    CodeList,
    EntityMapping,
    Model,
    ModelEntity,
    NodeMapping,
    Relation,
)
from node.textfiles import read_user_text

# Where a value sits in the parsed document: keys and list indexes from the root.
DocPath = tuple[str | int, ...]

TOP_KEYS = ("name", "version", "description", "code_lists", "entities", "relations")
CODE_LIST_KEYS = ("name", "values", "external", "description")
ENTITY_KEYS = ("name", "key", "description", "attributes")
ATTRIBUTE_KEYS = (
    "name",
    "type",
    "required",
    "code_list",
    "identifier",
    "sensitivity",
    "description",
)
RELATION_KEYS = ("name", "source", "target", "cardinality", "via", "through", "description")
MAPPING_ENTITY_KEYS = ("local_name", "attributes")
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DIVISION = re.compile(r"^\d{6}$")
# A relation recorded by one attribute holds one target per source record.
_SINGLE_TARGET = ("one-to-one", "many-to-one")
_MAX_SHOWN = 12


@dataclass(frozen=True)
class Problem:
    line: int
    message: str


class ModelFileError(UserError):
    """A model or mapping file with problems; keeps each one with its line so callers
    (and tests) can look at them, and prints them as one line."""

    def __init__(self, path: Path, problems: Iterable[Problem]) -> None:
        self.path = path
        self.problems = tuple(sorted(problems, key=lambda p: p.line))
        shown = [f"{path}:{p.line}: {p.message}" for p in self.problems[:_MAX_SHOWN]]
        hidden = len(self.problems) - len(shown)
        if hidden:
            shown.append(f"and {hidden} more problem{'s' if hidden > 1 else ''}")
        super().__init__("; ".join(shown))


# ----- reading --------------------------------------------------------------------------


def read_located(path: Path) -> tuple[Any, dict[DocPath, int]]:
    """The parsed document and the line of each key/item in it."""
    text = read_user_text(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ModelFileError(path, [_toml_error(exc, text)]) from None
        return data, _TomlLocator(text).run()
    if suffix in (".yaml", ".yml"):
        return _yaml_load(path, text)
    raise UserError(f"{path}: use a .toml, .yaml or .yml file")


def _toml_error(exc: tomllib.TOMLDecodeError, text: str) -> Problem:
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        line = int(match.group(1))
        message = f"{message[: match.start()]} (column {match.group(2)})"
    else:
        line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        message = message.replace(" (at end of document)", " (at the end of the file)")
    return Problem(line, f"not valid TOML: {message}")


def _yaml_load(path: Path, text: str) -> tuple[Any, dict[DocPath, int]]:
    """YAML through compose, so each node keeps its line. Mapping keys are taken as
    written (`0701:` stays "0701", never the octal number) and duplicates are refused."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        locs: dict[DocPath, int] = {(): root.start_mark.line + 1}
        problems: list[Problem] = []
        data = _yaml_value(loader, root, (), locs, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "cannot parse"
        raise ModelFileError(path, [Problem(line, f"not valid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ModelFileError(path, [Problem(1, f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if problems:
        raise ModelFileError(path, problems)
    return data, locs


def _yaml_value(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    where: DocPath,
    locs: dict[DocPath, int],
    problems: list[Problem],
) -> Any:
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(line, "a key must be plain text"))
                continue
            key = str(key_node.value)
            if key in result:
                problems.append(Problem(line, f"duplicate key {key!r}"))
                continue
            locs[(*where, key)] = line
            result[key] = _yaml_value(loader, value_node, (*where, key), locs, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        items: list[Any] = []
        for index, item in enumerate(node.value):
            locs[(*where, index)] = item.start_mark.line + 1
            items.append(_yaml_value(loader, item, (*where, index), locs, problems))
        return items
    return loader.construct_object(node, deep=True)


class _TomlLocator:
    """Line of every key, table and array item of a TOML text that tomllib accepted.

    tomllib keeps no positions, so this walks the text once, resolving `[[a.b]]` headers
    to the array index they open, the way tomllib builds the document."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.locs: dict[DocPath, int] = {}
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line(self, pos: int | None = None) -> int:
        return bisect.bisect_right(self.starts, self.pos if pos is None else pos)

    def run(self) -> dict[DocPath, int]:
        current: DocPath = ()
        counts: dict[DocPath, int] = {}
        text = self.text
        while True:
            self._skip(newlines=True)
            if self.pos >= len(text):
                return self.locs
            line = self.line()
            if text.startswith("[[", self.pos):
                self.pos += 2
                parts = self._key()
                self.pos = text.find("]]", self.pos) + 2
                resolved = (*self._resolve(parts[:-1], counts), parts[-1])
                counts[resolved] = counts.get(resolved, 0) + 1
                current = (*resolved, counts[resolved] - 1)
                self._mark(current, line)
            elif text.startswith("[", self.pos):
                self.pos += 1
                parts = self._key()
                self.pos = text.find("]", self.pos) + 1
                current = self._resolve(parts, counts)
                self._mark(current, line)
            else:
                parts = self._key()
                self._mark((*current, *parts), line)
                self._skip()
                if self.pos < len(text) and text[self.pos] == "=":
                    self.pos += 1
                    self._value((*current, *parts))
                else:
                    self._to_line_end()

    def _mark(self, where: DocPath, line: int) -> None:
        for n in range(1, len(where) + 1):
            self.locs.setdefault(where[:n], line)

    @staticmethod
    def _resolve(parts: list[str], counts: dict[DocPath, int]) -> DocPath:
        resolved: DocPath = ()
        for part in parts:
            resolved = (*resolved, part)
            if resolved in counts:
                resolved = (*resolved, counts[resolved] - 1)
        return resolved

    def _skip(self, newlines: bool = False) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#":
                self._to_line_end()
            else:
                return

    def _to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _key(self) -> list[str]:
        parts: list[str] = []
        text = self.text
        while True:
            self._skip()
            if self.pos >= len(text):
                return parts or [""]
            char = text[self.pos]
            if char in "\"'":
                parts.append(self._string())
            else:
                match = re.compile(r"[A-Za-z0-9_-]*").match(text, self.pos)
                assert match is not None  # a `*` pattern always matches
                parts.append(match.group())
                self.pos = match.end()
            self._skip()
            if self.pos < len(text) and text[self.pos] == ".":
                self.pos += 1
                continue
            return parts

    def _string(self) -> str:
        text = self.text
        for quote in ('"""', "'''"):
            if text.startswith(quote, self.pos):
                end = self.pos + 3
                while True:
                    end = text.find(quote, end)
                    if end < 0:
                        self.pos = len(text)
                        return ""
                    if quote == "'''" or not _escaped(text, end):
                        break
                    end += 1
                while text.startswith(quote[0], end + 3):  # up to two quotes may end it
                    end += 1
                body = text[self.pos + 3 : end]
                self.pos = end + 3
                return body
        quote = text[self.pos]
        end = self.pos + 1
        while end < len(text) and text[end] != quote and text[end] != "\n":
            end += 2 if quote == '"' and text[end] == "\\" else 1
        raw = text[self.pos : end + 1]
        self.pos = end + 1
        if quote == "'":
            return raw[1:-1]
        try:
            return str(json.loads(raw))
        except ValueError:
            return raw[1:-1]

    def _value(self, where: DocPath) -> None:
        self._skip()
        text = self.text
        if self.pos >= len(text):
            return
        char = text[self.pos]
        if char in "\"'":
            self._string()
        elif char == "[":
            self.pos += 1
            index = 0
            while True:
                self._skip(newlines=True)
                if self.pos >= len(text) or text[self.pos] == "]":
                    self.pos += 1
                    return
                if text[self.pos] == ",":
                    self.pos += 1
                    index += 1
                    continue
                self._mark((*where, index), self.line())
                self._value((*where, index))
        elif char == "{":
            self.pos += 1
            while True:
                self._skip(newlines=True)
                if self.pos >= len(text) or text[self.pos] == "}":
                    self.pos += 1
                    return
                if text[self.pos] == ",":
                    self.pos += 1
                    continue
                line = self.line()
                parts = self._key()
                self._mark((*where, *parts), line)
                self._skip()
                if self.pos < len(text) and text[self.pos] == "=":
                    self.pos += 1
                self._value((*where, *parts))
        else:
            start = self.pos
            while self.pos < len(text) and text[self.pos] not in ",]}\n#":
                self.pos += 1
            if self.pos == start:
                self.pos += 1  # never stall on text the scanner does not expect


def _escaped(text: str, pos: int) -> bool:
    count = 0
    while pos - count - 1 >= 0 and text[pos - count - 1] == "\\":
        count += 1
    return count % 2 == 1


# ----- checking ---------------------------------------------------------------------------


class Checker:
    """Collects problems with the line of the item they concern."""

    def __init__(self, locs: Mapping[DocPath, int]) -> None:
        self.locs = locs
        self.problems: list[Problem] = []

    def line(self, where: DocPath) -> int:
        while where and where not in self.locs:
            where = where[:-1]
        return self.locs.get(where, 1)

    def item_line(self, where: DocPath) -> int:
        """An item's `name = …` line (what a reader looks for), else its header."""
        named = (*where, "name")
        return self.locs[named] if named in self.locs else self.line(where)

    def add(self, line: int, message: str) -> None:
        self.problems.append(Problem(line, message))

    def table(self, value: Any, where: DocPath, keys: Iterable[str], what: str) -> dict[str, Any]:
        """`value` as a table, reporting keys it may not have (the rest of it is used)."""
        if not isinstance(value, dict):
            self.add(self.line(where), f"{what} must be a table")
            return {}
        allowed = tuple(keys)
        for key in value:
            if key not in allowed:
                self.add(
                    self.line((*where, key)),
                    f"unknown key {key!r} in {what}; expected {', '.join(allowed)}",
                )
        return value

    def tables(self, value: Any, where: DocPath, what: str) -> list[tuple[DocPath, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.add(self.line(where), f"{where[-1]} must be a list of {what} tables")
            return []
        return [((*where, i), item) for i, item in enumerate(value)]

    def text(self, table: Mapping[str, Any], key: str, where: DocPath, what: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.add(self.line((*where, key)), f"{what}: {key} must be text, not {value!r}")
            return None
        return value

    def identifier(
        self, table: Mapping[str, Any], where: DocPath, what: str, reserved: Iterable[str] = ()
    ) -> str | None:
        """The table's `name`, checked like every entity and column name of a node."""
        name = self.text(table, "name", where, what)
        if name is None:
            if "name" not in table:
                self.add(self.line(where), f"{what} has no name")
            return None
        problem = _identifier_problem(name, f"{what} name")
        if problem is None and name in reserved:
            problem = f"{what} name {name!r} is reserved for the node's own tables"
        if problem:
            self.add(self.line((*where, "name")), problem)
            return None
        return name


def _identifier_problem(name: str, what: str) -> str | None:
    try:
        _check_identifier(name, what, "")
    except ConfigError as exc:
        return str(exc).removeprefix(": ")
    return None


def _code_values(check: Checker, value: Any, where: DocPath, label: str) -> list[tuple[str, str]]:
    """Codes as a table `{code = label}` or a list of `[code, label]` pairs."""
    pairs: list[tuple[DocPath, Any, Any]] = []
    if isinstance(value, dict):
        pairs = [((*where, code), code, text) for code, text in value.items()]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, list) and len(item) == 2:
                pairs.append(((*where, i), item[0], item[1]))
            else:
                check.add(check.line((*where, i)), f"{label}: each value is a [code, label] pair")
    else:
        check.add(check.line(where), f"{label}: values must be a table of code = label")
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for at, code, text in pairs:
        if not isinstance(code, str | int) or isinstance(code, bool) or not str(code).strip():
            check.add(check.line(at), f"{label}: code {code!r} must be non-empty text")
            continue
        if not isinstance(text, str):
            check.add(check.line(at), f"{label}: the label of code {code!r} must be text")
            continue
        code = str(code)
        if code in seen:
            check.add(check.line(at), f"{label}: duplicate code {code!r}")
            continue
        seen.add(code)
        result.append((code, text))
    return result


def _check_model(data: Any, locs: Mapping[DocPath, int]) -> tuple[Model | None, list[Problem]]:
    check = Checker(locs)
    if not data:
        check.add(1, "the model file is empty; it needs name, version and [[entities]]")
        return None, check.problems
    top = check.table(data, (), TOP_KEYS, "the model file")
    if not top:
        return None, check.problems

    name = check.text(top, "name", (), "model")
    if name is None and "name" not in top:
        check.add(1, 'the model has no name (name = "…" at the top)')
    elif name is not None and not _MODEL_NAME.match(name):
        check.add(
            check.line(("name",)),
            f"model name {name!r} must be lower-case letters, digits, '.', '-' or '_'",
        )
    version = check.text(top, "version", (), "model")
    if version is None and "version" not in top:
        check.add(1, 'the model has no version (version = "1.0.0" at the top)')
    elif version is not None and not SEMVER.match(version):
        check.add(
            check.line(("version",)),
            f"version {version!r} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)",
        )
    description = check.text(top, "description", (), "model") or ""

    code_lists = _check_code_lists(check, top.get("code_lists"))
    entities = _check_entities(check, top.get("entities"), code_lists)
    relations = _check_relations(check, top.get("relations"), entities)
    if check.problems or name is None or version is None:
        return None, check.problems
    model = Model(
        name=name,
        version=version,
        description=description,
        entities=tuple(e for e in entities.values() if e is not None),
        relations=tuple(relations),
        code_lists=tuple(code_lists.values()),
    )
    return model, []


def _check_code_lists(check: Checker, value: Any) -> dict[str, CodeList]:
    result: dict[str, CodeList] = {}
    for where, item in check.tables(value, ("code_lists",), "code list"):
        spec = check.table(item, where, CODE_LIST_KEYS, "code list")
        name = check.text(spec, "name", where, "code list")
        if name is None or not name.strip():
            if "name" not in spec or name is not None:
                check.add(check.item_line(where), "code list has no name")
            continue
        label = f"code list {name!r}"
        if name in result:
            check.add(check.item_line(where), f"duplicate code list {name!r}")
            continue
        external = check.text(spec, "external", where, label)
        values: list[tuple[str, str]] = []
        if "values" in spec:
            values = _code_values(check, spec["values"], (*where, "values"), label)
        if external is not None and external not in EXTERNAL_CODE_LISTS:
            check.add(
                check.line((*where, "external")),
                f"{label}: external list {external!r} is not one the node knows; "
                f"known: {', '.join(EXTERNAL_CODE_LISTS)}",
            )
        elif external is not None and spec.get("values"):
            check.add(
                check.line((*where, "values")),
                f"{label}: give values or external, not both",
            )
        elif external is None and not spec.get("values"):
            check.add(
                check.item_line(where),
                f"{label} is empty: list its values or name an external list",
            )
        description = check.text(spec, "description", where, label) or ""
        result[name] = CodeList(
            name=name, values=tuple(values), external=external, description=description
        )
    return result


def _check_entities(
    check: Checker, value: Any, code_lists: Mapping[str, CodeList]
) -> dict[str, ModelEntity | None]:
    """Entities by name; None for one that is declared but broken (its problems are
    reported), so relations naming it do not report it again as unknown."""
    result: dict[str, ModelEntity | None] = {}
    items = check.tables(value, ("entities",), "entity")
    if value is None or value == []:
        check.add(check.line(("entities",)), "the model declares no entities ([[entities]])")
    for where, item in items:
        spec = check.table(item, where, ENTITY_KEYS, "entity")
        name = check.identifier(spec, where, "entity", reserved=INTERNAL_NAMES)
        duplicate = name is not None and name in result
        if duplicate:
            check.add(check.item_line(where), f"duplicate entity {name!r}")
        label = f"entity {name!r}" if name else "entity"
        attributes: dict[str, tuple[Attribute, DocPath]] = {}
        attribute_items = check.tables(spec.get("attributes"), (*where, "attributes"), "attribute")
        if not attribute_items:
            check.add(check.item_line(where), f"{label} has no attributes")
        for at, attribute_item in attribute_items:
            attribute = _check_attribute(check, at, attribute_item, label, code_lists)
            if attribute is None:
                continue
            if attribute.name in attributes:
                check.add(check.item_line(at), f"{label}: duplicate attribute {attribute.name!r}")
                continue
            attributes[attribute.name] = (attribute, at)
        key = check.text(spec, "key", where, label)
        if key is None:
            if "key" not in spec:
                check.add(check.item_line(where), f"{label} has no key (name its key attribute)")
        elif key not in attributes:
            if attribute_items:
                check.add(
                    check.line((*where, "key")),
                    f"key {key!r} of {label} is not one of its attributes",
                )
        elif not attributes[key][0].required:
            at = attributes[key][1]
            line = check.locs.get((*at, "required")) or check.item_line(at)
            check.add(line, f"key attribute {key!r} of {label} must be required")
        description = check.text(spec, "description", where, label) or ""
        if name is not None and not duplicate:
            result[name] = None
            if key is not None and key in attributes:
                result[name] = ModelEntity(
                    name=name,
                    key=key,
                    attributes=tuple(a for a, _ in attributes.values()),
                    description=description,
                )
    return result


def _check_attribute(
    check: Checker,
    where: DocPath,
    item: Any,
    entity: str,
    code_lists: Mapping[str, CodeList],
) -> Attribute | None:
    spec = check.table(item, where, ATTRIBUTE_KEYS, f"attribute of {entity}")
    name = check.identifier(spec, where, "attribute")
    if name is None:
        return None
    label = f"attribute {name!r} of {entity}"
    type_ = check.text(spec, "type", where, label)
    if type_ is None:
        if "type" not in spec:
            check.add(check.item_line(where), f"{label} has no type")
    elif type_ not in COLUMN_TYPES:
        check.add(
            check.line((*where, "type")),
            f"{label} has unknown type {type_!r}; use one of {', '.join(COLUMN_TYPES)}",
        )
    required = spec.get("required", False)
    if not isinstance(required, bool):
        check.add(check.line((*where, "required")), f"{label}: required must be true or false")
        required = False
    code_list = check.text(spec, "code_list", where, label)
    if code_list is not None and code_list not in code_lists:
        known = ", ".join(code_lists) or "none declared"
        check.add(
            check.line((*where, "code_list")),
            f"{label} names unknown code list {code_list!r} (code lists: {known})",
        )
    identifier = check.text(spec, "identifier", where, label)
    if identifier is not None and identifier not in IDENTIFIER_SCHEMES:
        check.add(
            check.line((*where, "identifier")),
            f"{label} has unknown identifier scheme {identifier!r}; "
            f"use one of {', '.join(IDENTIFIER_SCHEMES)}",
        )
    elif identifier is not None and type_ is not None and type_ != "string":
        check.add(
            check.line((*where, "identifier")),
            f"{label} declares identifier {identifier!r}, so its type must be string",
        )
    sensitivity = check.text(spec, "sensitivity", where, label)
    description = check.text(spec, "description", where, label) or ""
    return Attribute(
        name=name,
        type=type_ or "string",
        required=required,
        code_list=code_list,
        identifier=identifier,
        sensitivity=sensitivity,
        description=description,
    )


def _check_relations(
    check: Checker, value: Any, entities: Mapping[str, ModelEntity | None]
) -> list[Relation]:
    result: list[Relation] = []
    names: set[str] = set()
    for where, item in check.tables(value, ("relations",), "relation"):
        spec = check.table(item, where, RELATION_KEYS, "relation")
        name = check.identifier(spec, where, "relation")
        if name is not None and name in names:
            check.add(check.item_line(where), f"duplicate relation {name!r}")
            continue
        label = f"relation {name!r}" if name else "relation"
        if name is not None:
            names.add(name)
        ends: dict[str, ModelEntity] = {}
        for end in ("source", "target"):
            entity_name = check.text(spec, end, where, label)
            if entity_name is None:
                if end not in spec:
                    check.add(check.item_line(where), f"{label} has no {end}")
            elif entity_name not in entities:
                check.add(
                    check.line((*where, end)),
                    f"{label} targets unknown entity {entity_name!r}"
                    if end == "target"
                    else f"{label} starts from unknown entity {entity_name!r}",
                )
            elif (found := entities[entity_name]) is not None:
                ends[end] = found
        cardinality = check.text(spec, "cardinality", where, label)
        if cardinality is None:
            if "cardinality" not in spec:
                check.add(check.item_line(where), f"{label} has no cardinality")
        elif cardinality not in CARDINALITIES:
            check.add(
                check.line((*where, "cardinality")),
                f"{label} has cardinality {cardinality!r}; use one of {', '.join(CARDINALITIES)}",
            )
        via = check.text(spec, "via", where, label)
        through = check.text(spec, "through", where, label)
        if (via is None) == (through is None):
            check.add(
                check.item_line(where),
                f"{label} needs exactly one of via (an attribute of the source) or through "
                "(a link entity)",
            )
        source, target = ends.get("source"), ends.get("target")
        if via is not None and source is not None:
            _check_via(check, where, label, via, source, target, cardinality)
        if through is not None:
            _check_through(check, where, label, through, source, target, entities)
        description = check.text(spec, "description", where, label) or ""
        if name is not None and source is not None and target is not None and cardinality:
            result.append(
                Relation(
                    name=name,
                    source=source.name,
                    target=target.name,
                    cardinality=cardinality,
                    via=via,
                    through=through,
                    description=description,
                )
            )
    return result


def _check_via(
    check: Checker,
    where: DocPath,
    label: str,
    via: str,
    source: ModelEntity,
    target: ModelEntity | None,
    cardinality: str | None,
) -> None:
    line = check.line((*where, "via"))
    attribute = source.attribute(via)
    if attribute is None:
        check.add(line, f"{label}: via {via!r} is not an attribute of {source.name!r}")
        return
    if target is not None:
        key = target.attribute(target.key)
        if key is not None and key.type != attribute.type:
            check.add(
                line,
                f"{label}: via {source.name}.{via} is {attribute.type} but the key "
                f"{target.name}.{key.name} is {key.type}",
            )
    if cardinality in CARDINALITIES and cardinality not in _SINGLE_TARGET:
        check.add(
            check.line((*where, "cardinality")),
            f"{label} is {cardinality} but via holds one target per {source.name}; "
            "record it through a link entity",
        )


def _check_through(
    check: Checker,
    where: DocPath,
    label: str,
    through: str,
    source: ModelEntity | None,
    target: ModelEntity | None,
    entities: Mapping[str, ModelEntity | None],
) -> None:
    line = check.line((*where, "through"))
    if through not in entities:
        check.add(line, f"{label} goes through unknown entity {through!r}")
        return
    link = entities[through]
    if link is None:
        return
    for end in (source, target):
        if end is None:
            continue
        key = end.attribute(end.key)
        held = link.attribute(end.key)
        if held is None:
            check.add(
                line,
                f"{label}: link entity {through!r} lacks attribute {end.key!r} "
                f"(the key of {end.name!r})",
            )
        elif key is not None and held.type != key.type:
            check.add(
                line,
                f"{label}: {through}.{end.key} is {held.type} but the key "
                f"{end.name}.{end.key} is {key.type}",
            )


# ----- public -------------------------------------------------------------------------------


def load_model(path: Path) -> Model:
    """Read and check a model file; any problem raises ModelFileError (a UserError)."""
    data, locs = read_located(path)
    model, problems = _check_model(data, locs)
    if model is None:
        raise ModelFileError(path, problems or [Problem(1, "not a model file")])
    return model


def check_document(doc: Mapping[str, Any], where: str) -> Model:
    """A model document from the wire or the store, checked exactly like a file (names
    end up in SQL identifiers): a problem raises UserError naming `where`."""
    shaped = _without_nulls({k: v for k, v in doc.items() if k != "published_by"})
    model, problems = _check_model(shaped, {})
    if model is None:
        listed = "; ".join(p.message for p in problems[:_MAX_SHOWN]) or "not a model"
        raise UserError(f"{where}: {listed}")
    return replace(model, published_by=str(doc.get("published_by", "")))


def check_mapping_document(doc: Mapping[str, Any], model: Model, where: str) -> NodeMapping:
    """One child's mapping document from the wire, checked like a mapping file's table."""
    check = Checker({})
    mappings: dict[str, EntityMapping] = {}
    for standard, spec in doc.items():
        shaped = _without_nulls(spec) if isinstance(spec, dict) else spec
        mapping = _check_entity_mapping(check, (standard,), "this node", standard, shaped, model)
        if mapping is not None:
            mappings[standard] = mapping
    if check.problems:
        raise UserError(f"{where}: " + "; ".join(p.message for p in check.problems[:_MAX_SHOWN]))
    return NodeMapping(mappings)


def _without_nulls(value: Any) -> Any:
    """A document's shape as a file writes it: TOML has no null, so absent keys."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def load_mapping(path: Path, model: Model) -> dict[str, NodeMapping]:
    """Read a mapping file (children's local names → `model`'s names), by child code."""
    data, locs = read_located(path)
    check = Checker(locs)
    top = check.table(data, (), ("children",), "the mapping file") if data else {}
    children = top.get("children")
    if children is None:
        if not data or isinstance(data, dict):
            check.add(1, 'the mapping file has no [children."CODE".ENTITY] tables')
    elif not isinstance(children, dict):
        check.add(check.line(("children",)), "children must be a table of child codes")
        children = None
    result: dict[str, NodeMapping] = {}
    for code, per_entity in (children or {}).items():
        where: DocPath = ("children", code)
        if not _DIVISION.match(code):
            check.add(check.line(where), f"child code {code!r} is not a 6-digit division code")
            continue
        if not isinstance(per_entity, dict):
            check.add(check.line(where), f"child {code}: expected a table per standard entity")
            continue
        mappings: dict[str, EntityMapping] = {}
        local_entities: dict[str, str] = {}
        for standard, spec in per_entity.items():
            mapping = _check_entity_mapping(check, (*where, standard), code, standard, spec, model)
            if mapping is None:
                continue
            other = local_entities.setdefault(mapping.local_name, standard)
            if other != standard:
                check.add(
                    check.line((*where, standard)),
                    f"child {code}: local entity {mapping.local_name!r} is mapped to both "
                    f"{other!r} and {standard!r}",
                )
            mappings[standard] = mapping
        result[code] = NodeMapping(mappings)
    if check.problems:
        raise ModelFileError(path, check.problems)
    return result


def _check_entity_mapping(
    check: Checker, where: DocPath, code: str, standard: str, spec: Any, model: Model
) -> EntityMapping | None:
    label = f"child {code} entity {standard!r}"
    entity = model.entity(standard)
    if entity is None:
        check.add(
            check.line(where),
            f"child {code}: {standard!r} is not an entity of model {model.label()}",
        )
        return None
    table = check.table(spec, where, MAPPING_ENTITY_KEYS, label)
    local_name = check.text(table, "local_name", where, label) or standard
    problem = _identifier_problem(local_name, "local entity name")
    if problem:
        check.add(check.line((*where, "local_name")), f"{label}: {problem}")
    attributes = table.get("attributes", {})
    if not isinstance(attributes, dict):
        check.add(check.line((*where, "attributes")), f"{label}: attributes must be a table")
        attributes = {}
    pairs: list[tuple[str, str]] = []
    by_standard: dict[str, str] = {}
    for local, target in attributes.items():
        at = (*where, "attributes", local)
        line = check.line(at)
        if not isinstance(target, str):
            check.add(line, f"{label}: {local!r} must map to a standard attribute name")
            continue
        problem = _identifier_problem(local, "local attribute name")
        if problem:
            check.add(line, f"{label}: {problem}")
            continue
        if entity.attribute(target) is None:
            check.add(
                line,
                f"{label}: {local!r} maps to {target!r}, which is not an attribute of "
                f"{standard!r} ({', '.join(entity.attribute_names)})",
            )
            continue
        if target in by_standard:
            check.add(
                line,
                f"{label}: local names {by_standard[target]!r} and {local!r} both map to "
                f"standard attribute {target!r}",
            )
            continue
        by_standard[target] = local
        pairs.append((local, target))
    return EntityMapping(local_name=local_name, attributes=tuple(sorted(pairs)))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON escapes are valid TOML escapes


def mapping_toml(mappings: Mapping[str, NodeMapping], comment: str = "") -> str:
    """A mapping file `load_mapping` reads back (children and entities sorted), with a
    header saying what it is; `comment` adds lines of its own (e.g. where it came from)."""
    lines = [
        "# Tongyuan model mapping: how each child names the standard model.",
        '# [children."CODE".ENTITY] is one child (its division code) and one standard entity;',
        "# local_name is the child's name for the entity (left out: the standard name);",
        "# attributes maps the child's local attribute names to standard names.",
        "# Attributes not listed keep their names. Review each line before loading it.",
    ]
    lines += [f"# {line}" if line else "#" for line in comment.splitlines()]
    for code in sorted(mappings):
        for standard, mapping in sorted(mappings[code].entities.items()):
            lines.append("")
            lines.append(f"[children.{_toml_string(code)}.{_toml_key(standard)}]")
            if mapping.local_name != standard:
                lines.append(f"local_name = {_toml_string(mapping.local_name)}")
            if mapping.attributes:
                pairs = ", ".join(
                    f"{_toml_key(local)} = {_toml_string(target)}"
                    for local, target in sorted(mapping.attributes)
                )
                lines.append(f"attributes = {{ {pairs} }}")
    return "\n".join(lines) + "\n"
