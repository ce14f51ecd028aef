"""Catalogue interchange: DCAT-AP 3.0 JSON-LD in and out, and CSV for spreadsheets.

Other catalogues (provincial portals, EU-style harvesters) speak DCAT-AP, so entries leave
and enter as JSON-LD with an inline context. What DCAT cannot say (entity, information
items, sharing attribute, sensitivity, lineage) travels under the `ty:` namespace, so our
own export reads back without loss; a foreign file simply lacks those keys and the caller
fills defaults or reports what is missing. Imports never touch the network.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

from rdflib import Dataset, Graph, Literal, Namespace, URIRef
from rdflib.collection import Collection
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF
from rdflib.term import Node

from node.catalog.entries import FREQUENCIES
from node.errors import UserError

TY = Namespace("https://tongyuan.example/ns#")
FREQUENCY_BASE = "http://publications.europa.eu/resource/authority/frequency/"
ACCESS_RIGHT_BASE = "http://publications.europa.eu/resource/authority/access-right/"
LANGUAGE_ZH = "http://publications.europa.eu/resource/authority/language/ZHO"
# Nodes serve a resource's records as Arrow IPC streams (the federation wire format).
ARROW_MEDIA_TYPE = (
    "https://www.iana.org/assignments/media-types/application/vnd.apache.arrow.stream"
)
ACCESS_RIGHTS = {
    "unconditional": "PUBLIC",
    "conditional": "RESTRICTED",
    "none": "NON_PUBLIC",
}
CONTEXT: dict[str, str] = {
    "dcat": str(DCAT),
    "dct": str(DCTERMS),
    "foaf": str(FOAF),
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "ty": str(TY),
}
# EU frequency code → our frequency; CONT ("continuous") is read as realtime too.
_FREQUENCY_BY_CODE = {code: name for name, (_, _, code) in FREQUENCIES.items()}
_FREQUENCY_BY_CODE.setdefault("CONT", "realtime")
CSV_COLUMNS = (
    "code",
    "name",
    "summary",
    "department",
    "source_node",
    "source_department",
    "entity",
    "fields",
    "format",
    "update_frequency",
    "sharing",
    "sharing_conditions",
    "open_attribute",
    "sensitivity",
    "keywords",
    "provides",
    "version",
    "status",
    "published_on",
    "last_change_at",
    "origin_node",
    "freshness",
)
# Scalar entry keys carried under ty: (entry key → ty: local name).
_TY_TEXT = {
    "entity": "entity",
    "source_node": "sourceNode",
    "source_department": "sourceDepartment",
    "format": "format",
    "sharing": "sharing",
    "open_attribute": "openAttribute",
    "sensitivity": "sensitivity",
    "provides": "provides",
    "status": "status",
    "origin_node": "originNode",
    "freshness": "freshness",
}
# Of those, the ones that are entry keys (what an import gives back).
_TY_IMPORTED = (
    "entity",
    "source_node",
    "source_department",
    "format",
    "sharing",
    "open_attribute",
    "sensitivity",
    "provides",
)
_FIELD_TEXT = {
    "name": "name",
    "type": "type",
    "description": "description",
    "code_list": "codeList",
    "sensitivity": "sensitivity",
}


# --- export ------------------------------------------------------------------------------


def _zh(text: str) -> dict[str, str]:
    return {"@value": text, "@language": "zh"}


def _iri(origin: str, kind: str, code: str) -> str:
    return f"urn:tongyuan:{quote(origin, safe='')}:{kind}:{quote(code, safe='')}"


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    return "" if value is None else str(value)


def _field_node(spec: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {"@type": "ty:Field"}
    for key, local in _FIELD_TEXT.items():
        value = _text(spec, key)
        if value:
            node[f"ty:{local}"] = _zh(value) if key == "description" else value
    return node


def _dataset(doc: dict[str, Any], node_code: str) -> dict[str, Any]:
    code = _text(doc, "code")
    origin = _text(doc, "origin_node") or node_code
    keywords = [str(k) for k in doc.get("keywords") or ()]
    entity = _text(doc, "entity")
    dataset: dict[str, Any] = {
        "@id": _iri(origin, "dataset", code),
        "@type": "dcat:Dataset",
        "dct:identifier": code,
        "dct:title": _zh(_text(doc, "name")),
        "dct:description": _zh(_text(doc, "summary")),
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": _zh(_text(doc, "department"))},
        "dct:language": {"@id": LANGUAGE_ZH},
        # The entity name is an identifier, not Chinese text: no language tag.
        "dcat:keyword": [_zh(k) for k in keywords]
        + ([entity] if entity and entity not in keywords else []),
        "dcat:version": str(doc.get("version") or 1),
        "dcat:distribution": [
            {
                "@id": _iri(origin, "distribution", code),
                "@type": "dcat:Distribution",
                "dct:title": _zh(_text(doc, "name")),
                "dcat:accessURL": {"@id": _iri(origin, "resource", code)},
                "dcat:mediaType": {"@id": ARROW_MEDIA_TYPE},
            }
        ],
        # Keyword order and the information items are ordered: RDF lists keep the order.
        "ty:keywords": {"@list": keywords},
        "ty:fields": {"@list": [_field_node(f) for f in doc.get("fields") or ()]},
    }
    frequency = FREQUENCIES.get(_text(doc, "update_frequency"))
    if frequency is not None:
        dataset["dct:accrualPeriodicity"] = {"@id": FREQUENCY_BASE + frequency[2]}
    access = ACCESS_RIGHTS.get(_text(doc, "sharing_kind"))
    if access is not None:
        dataset["dct:accessRights"] = {"@id": ACCESS_RIGHT_BASE + access}
    if doc.get("published_on"):
        dataset["dct:issued"] = {"@value": _text(doc, "published_on"), "@type": "xsd:date"}
    if doc.get("last_change_at"):
        dataset["dct:modified"] = {
            "@value": _text(doc, "last_change_at"),
            "@type": "xsd:dateTime",
        }
    for key, local in _TY_TEXT.items():
        value = _text(doc, key)
        if value:
            dataset[f"ty:{local}"] = value
    if doc.get("sharing_conditions"):
        dataset["ty:sharingConditions"] = _zh(_text(doc, "sharing_conditions"))
    if doc.get("path"):
        dataset["ty:path"] = {
            "@list": [
                f"{p['name']} {p['code']}" if isinstance(p, dict) else str(p) for p in doc["path"]
            ]
        }
    return dataset


def to_dcat(
    documents: list[dict[str, Any]], *, node_code: str, node_name: str, issued: datetime
) -> dict[str, Any]:
    """One DCAT-AP 3.0 catalogue (JSON-LD, inline context) of `documents` for harvesters.

    Each document is an `Entry.document()`, optionally with `origin_node`, `path` and
    `freshness`; datasets are ordered by resource code so exports diff cleanly.
    """
    stamp = {"@value": issued.isoformat(), "@type": "xsd:dateTime"}
    ordered = sorted(documents, key=lambda d: (_text(d, "code"), _text(d, "origin_node")))
    return {
        "@context": dict(CONTEXT),
        "@id": f"urn:tongyuan:{quote(node_code, safe='')}:catalog",
        "@type": "dcat:Catalog",
        "dct:identifier": node_code,
        "dct:title": _zh(f"{node_name}政务数据资源目录"),
        "dct:description": _zh(
            f"{node_name}（{node_code}）同源节点的政务数据资源目录，含本节点及下级节点汇聚的资源。"
        ),
        "dct:publisher": {
            "@id": f"urn:tongyuan:{quote(node_code, safe='')}:node",
            "@type": "foaf:Agent",
            "foaf:name": _zh(node_name),
        },
        "dct:language": {"@id": LANGUAGE_ZH},
        "dct:issued": stamp,
        "dct:modified": dict(stamp),
        "dcat:dataset": [_dataset(doc, node_code) for doc in ordered],
    }


# --- import ------------------------------------------------------------------------------


def _remote_context(value: Any) -> str | None:
    """The first context reference in the JSON that rdflib would fetch, or None."""
    if isinstance(value, list):
        for item in value:
            found = _remote_context(item)
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "@context":
                refs = item if isinstance(item, list) else [item]
                for ref in refs:
                    if isinstance(ref, str):
                        return ref
            if key == "@import" and isinstance(item, str):
                return item
            found = _remote_context(item)
            if found is not None:
                return found
    return None


def _parse(text: str, source: str) -> Graph:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{source}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, dict | list):
        raise UserError(f"{source}: not JSON-LD: expected an object or a list at the top")
    remote = _remote_context(data)
    if remote is not None:
        raise UserError(
            f"{source}: refers to a remote JSON-LD context {remote!r}, which is not fetched: "
            "inline the context (put the prefixes themselves under @context)"
        )
    # A Dataset, not a Graph: a document with a top-level @id and @graph is a named graph,
    # which a plain Graph would silently drop. Its quads are merged into one graph.
    dataset = Dataset()
    try:
        dataset.parse(data=text, format="json-ld")
    except Exception as exc:  # rdflib raises many kinds; all mean the same to a user
        raise UserError(f"{source}: not JSON-LD that rdflib can read ({exc})") from None
    graph = Graph()
    for subject, predicate, obj, _ in dataset.quads((None, None, None, None)):
        graph.add((subject, predicate, obj))
    return graph


def _language_rank(literal: Literal) -> int:
    """Chinese first, then untagged, then English, then any other language."""
    language = (literal.language or "").lower()
    if language == "zh" or language.startswith("zh-"):
        return 0
    if not language:
        return 1
    if language == "en" or language.startswith("en-"):
        return 2
    return 3


def _literals(graph: Graph, subject: Node, predicate: URIRef) -> list[Literal]:
    found = [o for o in graph.objects(subject, predicate) if isinstance(o, Literal)]
    return sorted(found, key=lambda lit: (_language_rank(lit), str(lit)))


def _best(graph: Graph, subject: Node, predicate: URIRef) -> str:
    """The preferred (Chinese if any) text of a single-valued property, or ""."""
    found = _literals(graph, subject, predicate)
    return str(found[0]).strip() if found else ""


def _list(graph: Graph, subject: Node, predicate: URIRef) -> list[Node] | None:
    head = graph.value(subject, predicate)
    if head is None:
        return None
    return list(Collection(graph, head))


def _department(graph: Graph, dataset: Node) -> str:
    names: list[str] = []
    for publisher in graph.objects(dataset, DCTERMS.publisher):
        if isinstance(publisher, Literal):
            names.append(str(publisher).strip())
        else:
            names.append(_best(graph, publisher, FOAF.name))
    return min((n for n in names if n), default="")


def _keywords(graph: Graph, dataset: Node, entity: str) -> list[str] | None:
    ordered = _list(graph, dataset, TY.keywords)
    if ordered is not None:
        return [str(k) for k in ordered if isinstance(k, Literal)]
    found = _literals(graph, dataset, DCAT.keyword)
    if any(_language_rank(k) == 0 for k in found):
        found = [k for k in found if _language_rank(k) <= 1]
    words = sorted({str(k).strip() for k in found} - {"", entity})
    return words or None


def _fields(graph: Graph, dataset: Node) -> list[dict[str, str]] | None:
    items = _list(graph, dataset, TY.fields)
    if items is None:
        return None
    fields = []
    for item in items:
        spec = {key: _best(graph, item, TY[local]) for key, local in _FIELD_TEXT.items()}
        fields.append({key: value for key, value in spec.items() if value})
    return fields


def _frequency(graph: Graph, dataset: Node, label: str, problems: list[str]) -> str:
    value = graph.value(dataset, DCTERMS.accrualPeriodicity)
    if value is None:
        return ""
    text = str(value)
    for base in (FREQUENCY_BASE, FREQUENCY_BASE.replace("http:", "https:", 1)):
        if isinstance(value, URIRef) and text.startswith(base):
            name = _FREQUENCY_BY_CODE.get(text[len(base) :])
            if name is not None:
                return name
    known = ", ".join(f"{code} ({name})" for code, name in _FREQUENCY_BY_CODE.items())
    problems.append(
        f"dataset {label}: dct:accrualPeriodicity {text!r} is not a frequency this "
        f"catalogue knows (EU frequency codes known under {FREQUENCY_BASE}: {known})"
    )
    return ""


def _datasets(graph: Graph) -> Iterator[Node]:
    seen: set[Node] = set(graph.subjects(RDF.type, DCAT.Dataset))
    seen.update(graph.objects(None, DCAT.dataset))
    yield from seen


def _raw_entry(graph: Graph, dataset: Node, problems: list[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, predicate in (
        ("code", DCTERMS.identifier),
        ("name", DCTERMS.title),
        ("summary", DCTERMS.description),
    ):
        value = _best(graph, dataset, predicate)
        if value:
            raw[key] = value
    department = _department(graph, dataset)
    if department:
        raw["department"] = department
    for key in _TY_IMPORTED:
        value = _best(graph, dataset, TY[_TY_TEXT[key]])
        if value:
            raw[key] = value
    conditions = _best(graph, dataset, TY.sharingConditions)
    if conditions:
        raw["sharing_conditions"] = conditions
    label = repr(raw.get("code") or raw.get("name") or str(dataset))
    frequency = _frequency(graph, dataset, label, problems)
    if frequency:
        raw["update_frequency"] = frequency
    keywords = _keywords(graph, dataset, raw.get("entity", ""))
    if keywords is not None:
        raw["keywords"] = keywords
    fields = _fields(graph, dataset)
    if fields is not None:
        raw["fields"] = fields
    return raw


def from_dcat(text: str, *, source: str) -> list[dict[str, Any]]:
    """Raw entries (keys of ENTRY_KEYS only, ready for `build_entry`), one per dcat:Dataset.

    Reads our own exports losslessly and foreign DCAT-AP files as far as DCAT goes;
    Chinese text is preferred where several languages are given. Raises UserError naming
    `source` for anything unreadable, a remote context, no dataset or an unknown frequency.
    """
    graph = _parse(text, source)
    problems: list[str] = []
    entries = [_raw_entry(graph, node, problems) for node in _datasets(graph)]
    if not entries:
        raise UserError(f"{source}: no dcat:Dataset found (is this a DCAT-AP catalogue?)")
    if problems:
        raise UserError(f"{source}: " + "; ".join(sorted(problems)))
    return sorted(
        entries, key=lambda r: (r.get("code", ""), r.get("name", ""), r.get("summary", ""))
    )


# --- CSV ---------------------------------------------------------------------------------

# A cell starting with one of these is read by spreadsheets as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _joined(values: Iterable[str]) -> str:
    return "; ".join(values)


def to_csv(documents: list[dict[str, Any]]) -> str:
    """The catalogue as CSV for spreadsheets: a header row, then one row per entry.

    Write it with encoding utf-8-sig so Excel recognises the Chinese text. Cells that a
    spreadsheet would run as formulas are prefixed with an apostrophe.
    """
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for doc in documents:
        row = dict(doc)
        row["fields"] = _joined(
            f"{_text(f, 'name')}:{_text(f, 'type')}" for f in doc.get("fields") or ()
        )
        row["keywords"] = _joined(str(k) for k in doc.get("keywords") or ())
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()
