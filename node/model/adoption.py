"""What moving a node's store from its current model to another one takes: a plan of
steps, each saying whether it keeps every value.

The plan is pure; the store executes it in one transaction (`ModelStore.migrate`), so
an adoption happens entirely or not at all. Additive steps (a new entity, a new
attribute, a rename, a widened type) keep every value; dropping an entity or an
attribute, or narrowing a type, may lose data and needs the operator's consent.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.model.schema import EntityMapping, Model, ModelEntity, NodeMapping

# (from, to) column types a value always converts into without loss.
WIDENINGS = frozenset(
    {
        ("integer", "double"),
        ("integer", "decimal"),
        ("decimal", "double"),
        ("date", "timestamp"),
        ("integer", "string"),
        ("double", "string"),
        ("decimal", "string"),
        ("boolean", "string"),
        ("date", "string"),
        ("timestamp", "string"),
    }
)


@dataclass(frozen=True)
class Step:
    kind: str  # add_entity rename_entity drop_entity add_attribute rename_attribute
    #            change_type drop_attribute
    entity: str  # the entity's name before the step (after it, for add_entity)
    attribute: str | None = None
    new_name: str | None = None
    new_type: str | None = None
    loses_data: bool = False

    def describe(self) -> str:
        where = f"{self.entity}.{self.attribute}" if self.attribute else self.entity
        text = {
            "add_entity": f"add entity {self.entity}",
            "rename_entity": f"rename entity {self.entity} → {self.new_name}",
            "drop_entity": f"drop entity {self.entity} and every record in it",
            "add_attribute": f"add attribute {where} ({self.new_type})",
            "rename_attribute": f"rename attribute {where} → {self.new_name}",
            "change_type": f"change {where} to {self.new_type}",
            "drop_attribute": f"drop attribute {where} and its values",
        }[self.kind]
        return text + ("  [may lose data]" if self.loses_data else "")


@dataclass(frozen=True)
class Plan:
    current: Model
    target: Model
    steps: tuple[Step, ...]
    # Attributes whose stored values must fit the target (code list, required), checked
    # against the data when the plan runs: (standard entity, attribute).
    checks: tuple[tuple[str, str], ...]
    # Local entity name → standard entity name, with attribute renames (local → standard),
    # for catalogue entries that name them.
    renames: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]
    dropped_attributes: tuple[tuple[str, str], ...]

    @property
    def loses_data(self) -> bool:
        return any(s.loses_data for s in self.steps)


def _local_entity(
    current: Model, standard: ModelEntity, mapping: NodeMapping
) -> ModelEntity | None:
    local_name = mapping.for_entity(standard.name).local_name
    return current.entity(local_name) or current.entity(standard.name)


def plan_adoption(current: Model, target: Model, mapping: NodeMapping) -> Plan:
    """Steps turning stores shaped by `current` into `target`, naming local entities and
    attributes through `mapping`. Raises ValueError for what no migration can do (a
    key that is a different attribute)."""
    steps: list[Step] = []
    checks: list[tuple[str, str]] = []
    renames: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []
    dropped: list[tuple[str, str]] = []
    covered: set[str] = set()
    for standard in target.entities:
        local = _local_entity(current, standard, mapping)
        if local is None:
            steps.append(Step("add_entity", standard.name))
            continue
        covered.add(local.name)
        names = mapping.for_entity(standard.name)
        if names.standard_name(local.key) != standard.key:
            raise ValueError(
                f"entity {standard.name}: the local key {local.name}.{local.key} does not map to "
                f"the standard key {standard.key}; records would change identity — map "
                f"{local.key} to {standard.key}, or export and re-import the data"
            )
        if local.name != standard.name:
            steps.append(Step("rename_entity", local.name, new_name=standard.name))
        attribute_renames: list[tuple[str, str]] = []
        kept: set[str] = set()
        targets: dict[str, str] = {}
        for attribute in local.attributes:
            std_name = names.standard_name(attribute.name)
            if standard.attribute(std_name) is not None and std_name in targets:
                raise ValueError(
                    f"entity {standard.name}: local attributes {targets[std_name]} and "
                    f"{attribute.name} would both become {std_name}; map only one of them to it"
                )
            targets[std_name] = attribute.name
        # Drops first, then renames (through temporary names when one rename's target is
        # another's source: a chain or a swap), then type changes.
        renamed = [
            (a.name, names.standard_name(a.name))
            for a in local.attributes
            if standard.attribute(names.standard_name(a.name)) is not None
            and names.standard_name(a.name) != a.name
        ]
        chained = {new for _, new in renamed} & {a.name for a in local.attributes}
        for attribute in local.attributes:
            if standard.attribute(names.standard_name(attribute.name)) is None:
                steps.append(Step("drop_attribute", standard.name, attribute.name, loses_data=True))
                dropped.append((local.name, attribute.name))
        for i, (old_name, new_name) in enumerate(renamed):
            via = f"_renaming_{i}" if chained else new_name
            steps.append(Step("rename_attribute", standard.name, old_name, new_name=via))
            attribute_renames.append((old_name, new_name))
        if chained:
            for i, (_, new_name) in enumerate(renamed):
                steps.append(
                    Step("rename_attribute", standard.name, f"_renaming_{i}", new_name=new_name)
                )
        for attribute in local.attributes:
            std_name = names.standard_name(attribute.name)
            std_attr = standard.attribute(std_name)
            if std_attr is None:
                continue
            kept.add(std_name)
            if std_attr.type != attribute.type:
                if std_name == standard.key and std_attr.type != "string":
                    raise ValueError(
                        f"entity {standard.name}: its key {std_name} would change type from "
                        f"{attribute.type} to {std_attr.type}; keys such as '007' and '7' "
                        "would become one record — keep the key's type, or export and "
                        "re-import the data"
                    )
                steps.append(
                    Step(
                        "change_type",
                        standard.name,
                        std_name,
                        new_type=std_attr.type,
                        loses_data=(attribute.type, std_attr.type) not in WIDENINGS,
                    )
                )
            old_codes = _codes(current, attribute.code_list)
            new_codes = _codes(target, std_attr.code_list)
            narrowed_codes = new_codes is not None and (
                old_codes is None or not set(old_codes) <= set(new_codes)
            )
            if narrowed_codes or (std_attr.required and not attribute.required):
                checks.append((standard.name, std_name))
        for attribute in standard.attributes:
            if attribute.name not in kept:
                steps.append(
                    Step("add_attribute", standard.name, attribute.name, new_type=attribute.type)
                )
                if attribute.required:
                    checks.append((standard.name, attribute.name))
        renames.append((local.name, standard.name, tuple(attribute_renames)))
    # Drops first: a local entity may be renamed to the name of one that goes.
    drops = [
        Step("drop_entity", entity.name, loses_data=True)
        for entity in current.entities
        if entity.name not in covered
    ]
    steps = drops + steps
    return Plan(
        current=current,
        target=target,
        steps=tuple(steps),
        checks=tuple(checks),
        renames=tuple(renames),
        dropped_attributes=tuple(dropped),
    )


def _codes(model: Model, code_list: str | None) -> tuple[str, ...] | None:
    """The codes a list allows; None for no list, or an external list (checked by the store)."""
    if code_list is None:
        return None
    found = model.code_list(code_list)
    if found is None or found.external:
        return (f"external:{found.external}",) if found else None
    return found.codes


def carry_mappings(
    mappings: dict[str, NodeMapping], plan: Plan
) -> tuple[dict[str, NodeMapping], list[str]]:
    """This node's mappings for its children, moved along with its own store: names the
    plan renamed follow, names the target lacks are dropped (and reported)."""
    entity_renames = {old: new for old, new, _ in plan.renames}
    attribute_renames = {new: dict(attrs) for _, new, attrs in plan.renames}
    carried: dict[str, NodeMapping] = {}
    notes: list[str] = []
    for child, mapping in mappings.items():
        entities: dict[str, EntityMapping] = {}
        for standard, names in mapping.entities.items():
            moved = entity_renames.get(standard, standard)
            entity = plan.target.entity(moved)
            if entity is None:
                notes.append(f"mapping of {child}: entity {standard} is gone, dropped")
                continue
            renamed = attribute_renames.get(moved, {})
            pairs = []
            for local, target in names.attributes:
                target = renamed.get(target, target)
                if entity.attribute(target) is None:
                    notes.append(f"mapping of {child}: {moved}.{target} is gone, dropped")
                    continue
                pairs.append((local, target))
            entities[moved] = EntityMapping(names.local_name, tuple(sorted(pairs)))
        carried[child] = NodeMapping(entities)
    return carried, notes
