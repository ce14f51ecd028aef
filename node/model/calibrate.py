"""Calibration (校准): where children's models differ from the standard and from each other.

Counties build their systems separately, so the same person arrives as `xm`, `full_name`
or `name`, with sex coded 1/2 in one county and M/F in another. A city compares each
child's model with the standard it wants to publish, entity by entity: it finds the
child's corresponding entity and pairs attributes by name, description, a table of
common Chinese-government field names (拼音 initials included) and, last, spelling
similarity. The report lists every difference with a suggestion, and the renamings it
found become a mapping file the city can review and load.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.model.compat import WIDER_TYPES
from node.model.files import mapping_toml
from node.model.schema import Attribute, EntityMapping, Model, ModelEntity, NodeMapping

ROW_KINDS = ("entity", "key", "name", "type", "code_list", "missing", "extra")
SIMILARITY = 0.8
MISSING = "(missing)"

# Standard attribute name → other names children commonly use for it (English, 拼音
# initials such as xm = 姓名 and full pinyin). Compared without case, "_" or "-".
ATTRIBUTE_SYNONYMS: dict[str, frozenset[str]] = {
    name: frozenset(_n.replace("_", "").lower() for _n in synonyms)
    for name, synonyms in {
        "id_number": (
            "id_no",
            "id_card",
            "id_card_no",
            "idcard",
            "sfzh",
            "sfzhm",
            "gmsfhm",
            "zjhm",
            "citizen_id",
            "shenfenzheng",
        ),
        "name": (
            "full_name",
            "xm",
            "xingming",
            "person_name",
            "mc",
            "mingcheng",
            "company_name",
            "org_name",
            "qymc",
            "dwmc",
            "jgmc",
        ),
        "sex": ("gender", "xb", "xingbie", "xbdm", "sex_code"),
        "birth_date": ("birthday", "csrq", "dob", "date_of_birth", "birth", "chusheng_riqi"),
        "phone": (
            "mobile",
            "tel",
            "telephone",
            "lxdh",
            "sjhm",
            "shouji",
            "phone_number",
            "mobile_phone",
            "contact_phone",
        ),
        "address": ("addr", "zz", "dz", "zhuzhi", "dizhi", "xzz", "zs", "zcdz", "zl"),
        "division_code": (
            "xzqh",
            "xzqhdm",
            "qhdm",
            "region_code",
            "area_code",
            "adcode",
            "division",
        ),
        "uscc": (
            "credit_code",
            "tyshxydm",
            "shxydm",
            "xydm",
            "social_credit_code",
            "unified_credit_code",
            "unified_social_credit_code",
        ),
        "legal_rep_id_number": (
            "fddbrzjhm",
            "fddbrsfzh",
            "fr_sfzh",
            "legal_rep_id",
            "legal_person_id",
        ),
        "registered_on": ("clrq", "zcrq", "establish_date", "founded_on", "registration_date"),
        "registered_capital": ("zczb", "reg_capital", "capital"),
        "unit_code": ("bdcdyh", "bdcdydm", "unit_no", "real_estate_unit"),
        "parcel_code": ("zddm", "parcel_no", "zdh"),
        "land_parcel_code": ("zddm", "parcel_code", "parcel_no"),
        "building_area": ("jzmj", "floor_area", "gross_area"),
        "area": ("mj", "zdmj", "land_area", "parcel_area"),
        "usage": ("fwyt", "yt", "house_use", "use"),
        "land_use": ("tdyt", "dlbm", "land_use_code", "tdytdm"),
        "floors": ("zcs", "total_floors", "storeys", "cs"),
        "right_type": ("qllx", "right_kind"),
        "record_no": ("djbh", "ywh", "registration_no", "record_id"),
        "since": ("qsrq", "start_date", "kssj", "from_date"),
    }.items()
}
# Standard entity name → names children commonly give it.
ENTITY_SYNONYMS: dict[str, frozenset[str]] = {
    name: frozenset(_n.replace("_", "").lower() for _n in synonyms)
    for name, synonyms in {
        "person": (
            "natural_person",
            "ziranren",
            "zrr",
            "renkou",
            "population",
            "resident",
            "people",
        ),
        "legal_entity": (
            "company",
            "enterprise",
            "corporation",
            "organization",
            "org",
            "faren",
            "qiye",
            "legal_person",
        ),
        "house": ("building", "fangwu", "fw", "housing", "real_estate_unit"),
        "land_parcel": ("parcel", "zongdi", "zd", "land"),
        "residence": ("juzhu", "juzhu_dengji", "residence_registration"),
        "employment": ("jiuye", "jiuye_dengji", "employment_registration"),
    }.items()
}


@dataclass(frozen=True)
class CalibrationRow:
    """One difference between one child and the standard."""

    entity: str  # the standard entity
    kind: str  # one of ROW_KINDS
    child: str  # the child's division code
    standard: str  # the standard's name or value for this aspect ("" for an extra)
    local: str  # the child's name or value ("" when it has none)
    suggestion: str
    detail: str = ""

    def document(self) -> dict[str, str]:
        return {
            "entity": self.entity,
            "kind": self.kind,
            "child": self.child,
            "standard": self.standard,
            "local": self.local,
            "suggestion": self.suggestion,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Disagreement:
    """An aspect on which children differ among themselves (whether or not one of them
    matches the standard): every child's value side by side."""

    entity: str
    attribute: str  # standard attribute; an extra's local name; "" for the entity itself
    aspect: str  # "entity" | "key" | "name" | "type" | "code_list"
    standard: str  # the standard's value ("" when the standard lacks it)
    values: tuple[tuple[str, str], ...]  # (child code, its value)

    def document(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "attribute": self.attribute,
            "aspect": self.aspect,
            "standard": self.standard,
            "values": dict(self.values),
        }


@dataclass
class CalibrationReport:
    standard: Model
    children: tuple[str, ...]
    rows: list[CalibrationRow] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    mappings: dict[str, NodeMapping] = field(default_factory=dict)

    def suggested_mappings(self) -> dict[str, NodeMapping]:
        """Per child, its local names → standard names, only where they differ."""
        return dict(self.mappings)

    def mapping_file(self) -> str:
        """The suggested mappings as a file `load_mapping` reads."""
        return mapping_toml(
            self.mappings,
            comment=f"Suggested by calibration against {self.standard.label()}.",
        )

    def rows_for(self, child: str) -> list[CalibrationRow]:
        return [r for r in self.rows if r.child == child]

    def document(self) -> dict[str, Any]:
        return {
            "standard": {"name": self.standard.name, "version": self.standard.version},
            "children": list(self.children),
            "rows": [r.document() for r in self.rows],
            "disagreements": [d.document() for d in self.disagreements],
            "suggested_mappings": {
                code: mapping.document() for code, mapping in sorted(self.mappings.items())
            },
        }


@dataclass(frozen=True)
class _Match:
    """A child's entity for one standard entity and its attribute pairing."""

    entity: ModelEntity
    how: str  # "name" | "key" | "synonym"
    pairs: Mapping[str, str]  # standard attribute → child attribute


def calibrate(standard: Model, children: Mapping[str, Model]) -> CalibrationReport:
    """Compare each child's model with `standard`; deterministic (children by code,
    entities and attributes in the standard's order)."""
    codes = tuple(sorted(children))
    report = CalibrationReport(standard=standard, children=codes)
    matches = {code: _find_entities(standard, children[code]) for code in codes}
    for entity in standard.entities:
        for code in codes:
            match = matches[code].get(entity.name)
            report.rows += _rows(standard, entity, code, children[code], match)
        report.disagreements += _disagreements(standard, entity, children, matches)
    for code in codes:
        mapping = _mapping(matches[code])
        if mapping.entities:
            report.mappings[code] = mapping
    return report


# ----- matching ------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _find_entities(standard: Model, child: Model) -> dict[str, _Match]:
    """Same name first (for every entity, so a later fuzzy match cannot take it), then
    a unique unclaimed entity with the same key name, the same key by synonym, or a
    known synonym of the entity's name."""
    found: dict[str, _Match] = {}
    claimed: set[str] = set()
    standard_names = {e.name for e in standard.entities}
    for entity in standard.entities:
        local = child.entity(entity.name)
        if local is not None:
            found[entity.name] = _Match(local, "name", _pair(entity, local))
            claimed.add(local.name)
    for entity in standard.entities:
        if entity.name in found:
            continue
        free = [e for e in child.entities if e.name not in claimed and e.name not in standard_names]
        tests = (
            ("key", lambda e, s=entity: e.key == s.key),
            ("synonym", lambda e, s=entity: _same_meaning(s.key, e.key)),
            ("synonym", lambda e, s=entity: _norm(e.name) in ENTITY_SYNONYMS.get(s.name, ())),
        )
        for how, test in tests:
            candidates = [e for e in free if test(e)]
            if len(candidates) == 1:
                local = candidates[0]
                found[entity.name] = _Match(local, how, _pair(entity, local))
                claimed.add(local.name)
                break
    return found


def _same_meaning(standard: str, local: str) -> bool:
    return _norm(local) == _norm(standard) or _norm(local) in ATTRIBUTE_SYNONYMS.get(standard, ())


def _description_terms(description: str) -> set[str]:
    """The whole description and its leading Chinese term ("公民身份号码 citizen ID" →
    "公民身份号码"), so a child describing a field by its Chinese name alone pairs."""
    text = " ".join(description.split()).casefold()
    if not text:
        return set()
    terms = {text}
    first = text.split(" ")[0]
    if any("\u4e00" <= char <= "\u9fff" for char in first):
        terms.add(first)
    return terms


def _pair(standard: ModelEntity, local: ModelEntity) -> dict[str, str]:
    """Standard attribute → child attribute, pass by pass over what is still unpaired:
    same name, same description, known synonym, then the most similar spelling."""
    pairs: dict[str, str] = {}
    taken: set[str] = set()

    def run(test: Callable[[Attribute, Attribute], bool]) -> None:
        for attribute in standard.attributes:
            if attribute.name in pairs:
                continue
            for candidate in local.attributes:
                if candidate.name not in taken and test(attribute, candidate):
                    pairs[attribute.name] = candidate.name
                    taken.add(candidate.name)
                    break

    run(lambda a, c: a.name == c.name)
    run(lambda a, c: bool(_description_terms(a.description) & _description_terms(c.description)))
    run(lambda a, c: _same_meaning(a.name, c.name))
    scored = sorted(
        (
            (-difflib.SequenceMatcher(None, _norm(a.name), _norm(c.name)).ratio(), i, j)
            for i, a in enumerate(standard.attributes)
            for j, c in enumerate(local.attributes)
            if a.name not in pairs and c.name not in taken
        ),
    )
    for negative, i, j in scored:
        a, c = standard.attributes[i], local.attributes[j]
        if -negative >= SIMILARITY and a.name not in pairs and c.name not in taken:
            pairs[a.name] = c.name
            taken.add(c.name)
    return pairs


# ----- code lists ----------------------------------------------------------------------------


def _codes(model: Model, attribute: Attribute) -> tuple[str, ...] | str | None:
    """What values an attribute admits: None (anything), an external list's name, or
    its sorted codes."""
    if attribute.code_list is None:
        return None
    code_list = model.code_list(attribute.code_list)
    if code_list is None:
        return None
    if code_list.external:
        return code_list.external
    return tuple(sorted(code_list.codes))


def _describe_codes(model: Model, attribute: Attribute, named: bool = True) -> str:
    """The attribute's code list for a reader; `named=False` leaves out the list's own
    name so that two children with the same codes under different names agree."""
    codes = _codes(model, attribute)
    if codes is None:
        return "no code list"
    if isinstance(codes, str):
        text = f"external {codes}"
        return f"{attribute.code_list} ({text})" if named else text
    return f"{attribute.code_list}: {', '.join(codes)}" if named else ", ".join(codes)


def _translation(standard: Model, wanted: Attribute, child: Model, have: Attribute) -> list[str]:
    """Child code → standard code pairs whose labels agree (男 ~ 男性), one per code."""
    want_list = standard.code_list(wanted.code_list or "")
    have_list = child.code_list(have.code_list or "")
    if want_list is None or have_list is None:
        return []
    target = dict(want_list.values)
    result: list[str] = []
    for code, label in have_list.values:
        if code in target:
            continue
        exact = [c for c, text in target.items() if label and text == label]
        close = [
            c for c, text in target.items() if label and text and (label in text or text in label)
        ]
        chosen = exact if len(exact) == 1 else close if len(close) == 1 else []
        if chosen:
            result.append(f"{code} → {chosen[0]} ({target[chosen[0]]})")
    return result


# ----- rows -----------------------------------------------------------------------------------


def _rows(
    standard: Model, entity: ModelEntity, code: str, child: Model, match: _Match | None
) -> list[CalibrationRow]:
    def row(kind: str, std: str, local: str, suggestion: str, detail: str = "") -> None:
        rows.append(CalibrationRow(entity.name, kind, code, std, local, suggestion, detail))

    rows: list[CalibrationRow] = []
    if match is None:
        row(
            "entity",
            entity.name,
            "",
            f"add entity {entity.name} (key {entity.key}) or map the child's own entity to it",
            "no entity with this name, its key or a known synonym",
        )
        return rows
    local = match.entity
    if match.how != "name":
        row(
            "entity",
            entity.name,
            local.name,
            f"map entity {local.name} → {entity.name}",
            f"matched by {'its key' if match.how == 'key' else 'a known synonym'}",
        )
    standard_of = {c: s for s, c in match.pairs.items()}
    keyed_as = standard_of.get(local.key)
    if keyed_as != entity.key:
        meaning = f"its {keyed_as}" if keyed_as else "an attribute the standard lacks"
        row(
            "key",
            entity.key,
            local.key,
            f"key records by {entity.key}; the child keys them by {local.key} ({meaning})",
        )
    for attribute in entity.attributes:
        paired = match.pairs.get(attribute.name)
        if paired is None:
            required = ", required" if attribute.required else ""
            row(
                "missing",
                attribute.name,
                "",
                f"add {attribute.name} ({attribute.type}{required}) or map the child's field",
                attribute.description,
            )
            continue
        have = local.attribute(paired)
        assert have is not None  # paired from the child's own attributes
        if paired != attribute.name:
            key_note = " (the key)" if attribute.name == entity.key else ""
            row(
                "name",
                attribute.name,
                paired,
                f"map {paired} → {attribute.name}",
                f"{paired} is the standard's {attribute.name}{key_note}",
            )
        if have.type != attribute.type:
            lossless = (have.type, attribute.type) in WIDER_TYPES or attribute.type == "string"
            row(
                "type",
                attribute.type,
                have.type,
                f"convert {paired} from {have.type} to {attribute.type}",
                "every value converts" if lossless else "check that every value converts",
            )
        wanted, got = _codes(standard, attribute), _codes(child, have)
        if wanted != got:
            row(
                "code_list",
                _describe_codes(standard, attribute),
                _describe_codes(child, have),
                _code_suggestion(standard, attribute, child, have),
                _code_detail(wanted, got),
            )
    paired_local = set(match.pairs.values())
    for attribute in local.attributes:
        if attribute.name not in paired_local:
            row(
                "extra",
                "",
                attribute.name,
                f"{attribute.name} is not in {standard.label()}; keep it local or propose it "
                "for the standard",
                f"{attribute.type}"
                + (f", {attribute.description}" if attribute.description else ""),
            )
    return rows


def _code_detail(wanted: tuple[str, ...] | str | None, got: tuple[str, ...] | str | None) -> str:
    def as_set(codes: tuple[str, ...] | str | None) -> set[str]:
        return set(codes) if isinstance(codes, tuple) else set()

    parts: list[str] = []
    only_standard = sorted(as_set(wanted) - as_set(got))
    only_child = sorted(as_set(got) - as_set(wanted))
    if only_standard:
        parts.append(f"only in the standard: {', '.join(only_standard)}")
    if only_child:
        parts.append(f"only in the child: {', '.join(only_child)}")
    if isinstance(wanted, str) or isinstance(got, str):
        parts.append(f"external lists: {wanted or 'none'} vs {got or 'none'}")
    return "; ".join(parts)


def _code_suggestion(standard: Model, wanted: Attribute, child: Model, have: Attribute) -> str:
    if wanted.code_list is None:
        return (
            f"the standard takes any value for {wanted.name}; propose {have.code_list} or drop it"
        )
    if have.code_list is None:
        return f"check {have.name}'s values against {wanted.code_list}"
    translation = _translation(standard, wanted, child, have)
    if translation:
        return f"translate codes {', '.join(translation)}"
    return f"translate {have.name}'s codes to {wanted.code_list}"


def _disagreements(
    standard: Model,
    entity: ModelEntity,
    children: Mapping[str, Model],
    matches: Mapping[str, Mapping[str, _Match]],
) -> list[Disagreement]:
    result: list[Disagreement] = []
    codes = sorted(children)

    def note(attribute: str, aspect: str, std: str, values: Iterable[tuple[str, str]]) -> None:
        values = tuple(values)
        if len({v for _, v in values}) > 1:
            result.append(Disagreement(entity.name, attribute, aspect, std, values))

    present = [(c, matches[c][entity.name]) for c in codes if entity.name in matches[c]]
    note(
        "",
        "entity",
        entity.name,
        (
            (c, matches[c][entity.name].entity.name if entity.name in matches[c] else MISSING)
            for c in codes
        ),
    )
    note("", "key", entity.key, ((c, m.entity.key) for c, m in present))
    for attribute in entity.attributes:
        names: list[tuple[str, str]] = []
        types: list[tuple[str, str]] = []
        lists: list[tuple[str, str]] = []
        for c, m in present:
            local = m.entity.attribute(m.pairs.get(attribute.name, ""))
            names.append((c, local.name if local else MISSING))
            if local is not None:
                types.append((c, local.type))
                lists.append((c, _describe_codes(children[c], local, named=False)))
        note(attribute.name, "name", attribute.name, names)
        note(attribute.name, "type", attribute.type, types)
        note(attribute.name, "code_list", _describe_codes(standard, attribute, False), lists)
    extras: dict[str, list[tuple[str, str]]] = {}
    for c, m in present:
        paired = set(m.pairs.values())
        for local in m.entity.attributes:
            if local.name not in paired:
                extras.setdefault(local.name, []).append((c, local.type))
    for name in sorted(extras):
        note(name, "type", "", extras[name])
    return result


def _mapping(matches: Mapping[str, _Match]) -> NodeMapping:
    entities: dict[str, EntityMapping] = {}
    for standard, match in matches.items():
        renamed = tuple(sorted((c, s) for s, c in match.pairs.items() if c != s))
        if renamed or match.entity.name != standard:
            entities[standard] = EntityMapping(local_name=match.entity.name, attributes=renamed)
    return NodeMapping(entities)
