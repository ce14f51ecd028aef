"""The rule library as data: rules in layers, one layer per node that wrote rules.

A province (or city) publishes a layer; it travels down every link, so each node
below applies the same rules, and each node may add a local layer that applies to it
alone. A node's library is the layers received from above (province first), its own
published layer, then its local layer. Rules are identified within their layer, so two
layers never clash: a rule shows as `id (node)`, or `id (local)`.

The library travels as canonical JSON (sorted keys): equal libraries have equal digests.
Files are parsed and checked in `node.quality.files`; the SQL is `node.store.screening`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# What a rule checks, and the parameters each check takes (all optional ones listed).
CHECKS: dict[str, tuple[str, ...]] = {
    "required": (),
    "type": ("as",),
    "pattern": ("pattern",),
    "length": ("min", "max"),
    "code_list": ("code_list", "values"),
    "range": ("min", "max"),
    "identifier": ("scheme",),
    "id_birth_date": ("id_attribute",),
    "id_sex": ("id_attribute",),
    "reference": ("relation",),
    "unique": ("normalised",),
}
# blocking: the row is held in quarantine; warning: it is applied and flagged.
SEVERITIES = ("blocking", "warning")


@dataclass(frozen=True)
class Rule:
    id: str
    entity: str
    attribute: str
    check: str
    severity: str = "blocking"
    params: tuple[tuple[str, Any], ...] = ()
    description: str = ""

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    @property
    def attributes(self) -> tuple[str, ...]:
        """Every attribute the rule reads (it applies only where all of them are present)."""
        other = self.param("id_attribute")
        return (self.attribute, other) if other else (self.attribute,)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "entity": self.entity,
            "attribute": self.attribute,
            "check": self.check,
            "severity": self.severity,
        }
        if self.description:
            doc["description"] = self.description
        doc.update(dict(self.params))
        return doc


@dataclass(frozen=True)
class RuleLayer:
    """The rules one node wrote, as one versioned library file."""

    node: str
    name: str
    version: str
    rules: tuple[Rule, ...]
    local: bool = False
    description: str = ""

    @property
    def label(self) -> str:
        where = "local" if self.local else self.node
        return f"{self.name} {self.version} ({where})"

    def document(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "name": self.name,
            "version": self.version,
            "local": self.local,
            "description": self.description,
            "rules": [r.document() for r in self.rules],
        }


@dataclass(frozen=True)
class RuleLibrary:
    """Layers in the order they apply: received from above, own published, own local."""

    layers: tuple[RuleLayer, ...] = ()

    def rules(self) -> Iterator[tuple[RuleLayer, Rule]]:
        for layer in self.layers:
            for rule in layer.rules:
                yield layer, rule

    def document(self) -> dict[str, Any]:
        return {"layers": [layer.document() for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.document(), sort_keys=True, ensure_ascii=False)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def rule_label(layer: RuleLayer, rule: Rule) -> str:
    """How a rule is named in quarantine reasons and listings: `id (node)` / `id (local)`."""
    return f"{rule.id} ({'local' if layer.local else layer.node})"


def rule_from_document(doc: Mapping[str, Any]) -> Rule:
    """A rule from its (already checked) document."""
    fixed = ("id", "entity", "attribute", "check", "severity", "description")
    params = tuple(sorted((k, v) for k, v in doc.items() if k not in fixed))
    return Rule(
        id=str(doc["id"]),
        entity=str(doc["entity"]),
        attribute=str(doc["attribute"]),
        check=str(doc["check"]),
        severity=str(doc.get("severity", "blocking")),
        params=params,
        description=str(doc.get("description", "")),
    )


def layer_from_document(doc: Mapping[str, Any]) -> RuleLayer:
    return RuleLayer(
        node=str(doc["node"]),
        name=str(doc["name"]),
        version=str(doc["version"]),
        local=bool(doc.get("local", False)),
        description=str(doc.get("description", "")),
        rules=tuple(rule_from_document(r) for r in doc.get("rules", [])),
    )
