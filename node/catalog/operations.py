"""The catalogue's operations as users see them: register, edit, publish, retire,
browse and search the subtree's catalogue, standard items and their coverage.

Every operation takes and returns plain JSON-able values, so the CLI reaches it the
same way whether the node serves (admin API) or not (store opened directly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from node.catalog.entries import (
    CatalogSettings,
    Entry,
    build_entry,
    editable_fields,
    entry_from_document,
)
from node.catalog.freshness import STATES, clock, freshness
from node.catalog.standards import StandardItem, build_standard, mapping_problem
from node.config import NodeConfig
from node.divisions import Tier, lookup_division
from node.errors import UserError
from node.store import Store

# Coverage cell states.
PROVIDED, STALE_COVERAGE, MISSING = "provided", "stale", "missing"


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _parse_date(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _freshness_of(doc: Mapping[str, Any], frequency: str, now: datetime) -> str | None:
    """An entry document's freshness against `frequency`: from its last change, else
    from its publication."""
    return freshness(
        frequency,
        _parse_time(doc.get("last_change_at")) or _parse_time(doc.get("published_at")),
        _parse_date(doc.get("published_on")),
        now,
    )


class CatalogService:
    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.tables = store.catalog
        self.settings: CatalogSettings = config.catalog

    # ----- building and checking ---------------------------------------------------------

    def _build(self, raw: Mapping[str, Any], where: str) -> Entry:
        entry = build_entry(
            raw,
            node_code=self.config.code,
            entities=self.store.entities,
            settings=self.settings,
            where=where,
        )
        if entry.provides:
            self._check_mapping(entry, entry.provides)
        return entry

    def _standard(self, code: str) -> StandardItem:
        for item, _ in self.tables.standards():
            if item.code == code:
                return item
        known = ", ".join(i.code for i, _ in self.tables.standards()) or "none yet"
        raise UserError(
            f"standard item {code!r} is not known at node {self.config.code} "
            f"(known: {known}); items arrive from the parent while it is connected, and one "
            "withdrawn above is gone: drop the mapping with `--provides ''`"
        )

    def _check_mapping(self, entry: Entry, code: str) -> None:
        problem = mapping_problem(entry, self._standard(code))
        if problem:
            raise UserError(problem)

    def _current(self, code: str) -> tuple[Entry | None, Entry | None]:
        """(draft, published-or-retired entry) of one of this node's resources."""
        return self.tables.draft(code), self.tables.own_entry(code)

    def _unknown(self, code: str) -> UserError:
        return UserError(
            f"resource {code!r} is not in the catalogue of node {self.config.code}; "
            "see `tongyuan catalog list`"
        )

    # ----- lifecycle -----------------------------------------------------------------------

    def add(
        self,
        entries: Sequence[Mapping[str, Any]],
        source: str,
        actor: str,
        publish: bool = False,
        fill_defaults: bool = False,
    ) -> list[dict[str, Any]]:
        """Register new resources as drafts (all or none), optionally publishing them.

        With `fill_defaults` (entries from flags or a foreign file) an entry may leave
        out the department (the node's configured default) and the fields (every
        attribute of its entity).
        """
        if not entries:
            raise UserError(f"{source}: no catalogue entries found")
        if fill_defaults:
            entries = [self._defaults(raw) for raw in entries]
        built: list[Entry] = []
        seen: set[str] = set()
        for i, raw in enumerate(entries, start=1):
            where = source if len(entries) == 1 else f"{source} entry #{i}"
            entry = self._build(raw, where)
            if entry.code in seen:
                raise UserError(f"{where}: resource {entry.code} appears twice in {source}")
            seen.add(entry.code)
            draft, current = self._current(entry.code)
            if draft is not None or current is not None:
                raise UserError(
                    f"{where}: resource {entry.code} already exists "
                    f"({(current or draft).status}); change it with `tongyuan catalog edit`"  # type: ignore[union-attr]
                )
            built.append(entry)
        if publish:
            # Straight into the log, all in one transaction: no draft is left behind.
            now = datetime.now(UTC)
            published = [self._published(e, None, now) for e in built]
            self._check_one_source(published)
            self.tables.write_entries(
                published, actor, "created and published version 1", f"from {source}"
            )
            return [self._own(e.code) for e in built]
        self.tables.save_drafts(built, actor, "created", f"from {source}")
        return [e.document() for e in built]

    def is_authoritative(self, entry: Entry) -> bool:
        """A resource is the source of its attributes when it names itself as source;
        one naming another node or department holds observations of that source."""
        return entry.source_node == self.config.code and entry.source_department == (
            entry.department
        )

    def _check_one_source(self, entries: Sequence[Entry]) -> None:
        """One source per attribute (一数一源): at this node, only one department may be
        the authoritative source of an entity's attribute."""
        claims: dict[tuple[str, str], Entry] = {}
        publishing = {e.code for e in entries}
        others = [
            self.tables.own_entry(d["code"])
            for d in self.tables.entries(self.config.code)
            if d["status"] == "published" and d["code"] not in {e.code for e in entries}
        ]
        for entry in [*(o for o in others if o is not None), *entries]:
            entity = self.store.entities.get(entry.entity)
            if entity is None or not self.is_authoritative(entry):
                continue
            for item in entry.fields:
                if item.name == entity.key:
                    continue
                holder = claims.get((entry.entity, item.name))
                # Only conflicts this publication would create are refused: two resources
                # published before the rule existed do not block unrelated work.
                if (
                    holder is not None
                    and holder.department != entry.department
                    and entry.code in publishing
                ):
                    raise UserError(
                        f"resource {entry.code}: {entry.department} cannot be the source of "
                        f"{entry.entity}.{item.name}: {holder.department} already is at node "
                        f"{self.config.code} ({holder.code}); one source per attribute — name "
                        f'that source (source_department = "{holder.department}") so this '
                        "resource's values are kept as observations, or leave the field out"
                    )
                claims[(entry.entity, item.name)] = entry

    def authoritative_resource(self, entity: str, attribute: str) -> Entry | None:
        """This node's published resource that is the source of `entity.attribute`."""
        for doc in self.tables.entries(self.config.code):
            entry = self.tables.own_entry(doc["code"]) if doc["status"] == "published" else None
            if (
                entry is not None
                and entry.entity == entity
                and self.is_authoritative(entry)
                and any(f.name == attribute for f in entry.fields)
            ):
                return entry
        return None

    @staticmethod
    def _published(entry: Entry, current: Entry | None, now: datetime) -> Entry:
        """`entry` as published now; what happened since it was drafted (imports, a
        mapping) is kept from the current version."""
        return entry.with_changes(
            status="published",
            published_on=now.date(),
            published_at=now,
            last_change_at=current.last_change_at if current else entry.last_change_at,
        )

    def _defaults(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        filled = dict(raw)
        if not filled.get("department") and self.config.department != "unspecified":
            filled["department"] = self.config.department
        entity = self.store.entities.get(str(filled.get("entity") or ""))
        if "fields" not in filled and entity is not None:
            filled["fields"] = list(entity.column_names)
        return filled

    def edit(
        self, code: str, changes: Mapping[str, Any], source: str, actor: str
    ) -> dict[str, Any]:
        """Change a draft in place; changing a published resource drafts its next version.

        Fields given by name only keep the descriptions they already had."""
        if "code" in changes and changes["code"] != code:
            raise UserError(f"{source}: a resource's code cannot change ({code})")
        draft, current = self._current(code)
        if draft is not None:
            base, version, action = draft, draft.version, "edited"
        elif current is None:
            raise self._unknown(code)
        else:
            base, version, action = current, current.version + 1, "new version drafted"
        if current is not None and current.status == "retired":
            raise UserError(f"resource {code} is retired: it keeps its history and cannot change")
        current_fields = {f["name"]: f for f in editable_fields(base).get("fields", [])}
        changes = dict(changes)
        if isinstance(changes.get("fields"), str):
            changes["fields"] = [n.strip() for n in changes["fields"].split(",") if n.strip()]
        if isinstance(changes.get("fields"), list):
            changes["fields"] = [
                current_fields.get(f, {"name": f}) if isinstance(f, str) else f
                for f in changes["fields"]
            ]
        merged = {**editable_fields(base), **changes}
        entry = self._build(merged, source).with_changes(version=version)
        self.tables.save_drafts([entry], actor, action, f"from {source}")
        return entry.document()

    def publish(self, code: str, actor: str) -> dict[str, Any]:
        draft, current = self._current(code)
        if current is not None and current.status == "retired":
            raise UserError(f"resource {code} is retired and cannot be published again")
        if draft is None:
            if current is not None:
                raise UserError(
                    f"resource {code} version {current.version} is already published; "
                    "`tongyuan catalog edit` drafts a new version"
                )
            raise self._unknown(code)
        # Re-check against today's model and standard items: they may have changed.
        entry = self._build(editable_fields(draft), "publish").with_changes(version=draft.version)
        published = self._published(entry, current, datetime.now(UTC))
        self._check_one_source([published])
        self.tables.write_entries([published], actor, f"published version {entry.version}")
        return self._own(code)

    def retire(self, code: str, actor: str, reason: str = "") -> dict[str, Any]:
        _, current = self._current(code)
        if current is None:
            raise UserError(
                f"resource {code} is not published at node {self.config.code}; a draft is "
                "removed with `tongyuan catalog remove`, not retired"
            )
        if current.status == "retired":
            raise UserError(f"resource {code} is already retired")
        # A pending draft goes too (same transaction): nothing can bring the resource back.
        self.tables.write_entries(
            [current.with_changes(status="retired")], actor, "retired", reason, drop_drafts=True
        )
        return self._own(code)

    def remove(self, code: str, actor: str) -> dict[str, Any]:
        """Remove a draft, or a retired resource's entry (every tier above drops it too)."""
        draft, current = self._current(code)
        if current is not None and current.status == "published":
            raise UserError(
                f"resource {code} is published: retire it first (`tongyuan catalog retire "
                f"{code}`); a retired resource keeps its history"
            )
        if current is not None:
            self.tables.remove_entry(code, current.version, actor)
            return {"code": code, "removed": "entry"}
        if draft is not None:
            self.tables.delete_draft(code, actor)
            return {"code": code, "removed": "draft"}
        raise self._unknown(code)

    def map_standard(self, code: str, standard: str | None, actor: str) -> dict[str, Any]:
        """Say which standard item a published resource provides (None: no longer any)."""
        _, current = self._current(code)
        if current is None or current.status != "published":
            raise UserError(
                f"resource {code} must be published at node {self.config.code} to provide a "
                "standard item"
            )
        if standard:
            self._check_mapping(current, standard)
        action = f"maps to standard item {standard}" if standard else "mapping removed"
        self.tables.write_entries([current.with_changes(provides=standard or "")], actor, action)
        draft = self.tables.draft(code)
        if draft is not None:  # the pending version keeps the mapping too
            self.tables.save_drafts([draft.with_changes(provides=standard or "")], actor, action)
        return self._own(code)

    def import_drafts(
        self,
        entries: Sequence[Mapping[str, Any]],
        source: str,
        actor: str,
        defaults: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Entries from an interchange file become drafts, all or none. `defaults` fill
        what a foreign file cannot say (entity, sharing attribute, department); fields
        then default to every attribute of the entity, as with flags."""
        filled = [{**(defaults or {}), **raw} for raw in entries]
        try:
            return self.add(filled, source, actor, publish=False, fill_defaults=True)
        except UserError as exc:
            if "mandatory metadata missing" not in str(exc):
                raise
            raise UserError(
                f"{exc} (for a file from another system, give what it cannot say: "
                "`catalog import FILE --entity ENTITY --sharing SHARING`)"
            ) from None

    # ----- reading -----------------------------------------------------------------------

    def _own(self, code: str) -> dict[str, Any]:
        return self.show(code)["entry"]

    def _path(self, origin: str, tree: Mapping[str, str]) -> list[dict[str, str]]:
        """Nodes from this one down to `origin`, as the federation links them."""
        chain = [origin]
        while chain[-1] != self.config.code and chain[-1] in tree and len(chain) < 8:
            chain.append(tree[chain[-1]])
        if chain[-1] != self.config.code:
            chain.append(self.config.code)
        return [{"code": c, "name": _name(c)} for c in reversed(chain)]

    def _decorate(
        self, doc: dict[str, Any], tree: Mapping[str, str], now: datetime
    ) -> dict[str, Any]:
        state = None
        if doc.get("status") == "published":
            state = _freshness_of(doc, doc["update_frequency"], now)
        origin = doc.get("origin_node", self.config.code)
        return {**doc, "freshness": state, "path": self._path(origin, tree)}

    def list_entries(
        self, node: str | None = None, status: str | None = None, drafts: bool = True
    ) -> list[dict[str, Any]]:
        """This node's and its subtree's catalogue, with freshness and node path."""
        now, tree = clock(), self.tables.tree()
        docs = [self._decorate(d, tree, now) for d in self.tables.entries(node)]
        if drafts and node in (None, self.config.code):
            docs += [
                self._decorate({**d.document(), "origin_node": self.config.code}, tree, now)
                for d in self.tables.drafts()
            ]
        if status:
            docs = [d for d in docs if d["status"] == status]
        return sorted(docs, key=lambda d: (d["origin_node"], d["code"], d["status"] == "draft"))

    def show(self, code: str) -> dict[str, Any]:
        now, tree = clock(), self.tables.tree()
        draft = self.tables.draft(code)
        published = self.tables.entries_with_code(code)
        if not published and draft is None:
            raise UserError(f"resource {code!r} is not in the catalogue known to this node")
        entry = (
            self._decorate(published[0], tree, now)
            if published
            else self._decorate({**draft.document(), "origin_node": self.config.code}, tree, now)  # type: ignore[union-attr]
        )
        return {
            "entry": entry,
            "draft": draft.document() if draft is not None and published else None,
            "history": self.tables.history(code),
        }

    def search(self, text: str) -> list[dict[str, Any]]:
        terms = text.split()
        if not terms:
            raise UserError("search: give at least one word")
        now, tree = clock(), self.tables.tree()
        return [self._decorate(d, tree, now) for d in self.tables.search(terms)]

    def export(self, scope: str) -> dict[str, Any]:
        """Published and retired entries to export: this node's own, or the subtree's."""
        if scope not in ("own", "subtree"):
            raise UserError(f"export scope must be own or subtree, not {scope!r}")
        entries = self.list_entries(node=self.config.code if scope == "own" else None, drafts=False)
        return {"node_code": self.config.code, "node_name": self.config.name, "entries": entries}

    # ----- standard items ------------------------------------------------------------------

    def standard_add(self, items: Sequence[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
        """Define (or redefine) standard items for every node below this one."""
        if self.config.tier is Tier.COUNTY:
            raise UserError(
                f"node {self.config.code} is a county node: standard items are defined by a "
                "city or province for the nodes below it"
            )
        if not items:
            raise UserError(f"{source}: no standard items found")
        built: list[StandardItem] = []
        for i, raw in enumerate(items, start=1):
            where = source if len(items) == 1 else f"{source} item #{i}"
            item = build_standard(
                raw, node_code=self.config.code, entities=self.store.entities, where=where
            )
            if any(b.code == item.code for b in built):
                raise UserError(f"{where}: standard item {item.code} appears twice in {source}")
            previous = self.tables.own_standard(item.code)
            built.append(replace(item, version=previous.version + 1 if previous else 1))
        self.tables.save_standards(built)
        return [i.document() for i in built]

    def standard_withdraw(self, code: str) -> dict[str, Any]:
        if not self.tables.withdraw_standard(code):
            raise UserError(
                f"standard item {code!r} is not defined at node {self.config.code} "
                "(items received from above are withdrawn where they were defined)"
            )
        return {"code": code, "withdrawn": True}

    def standard_list(self) -> list[dict[str, Any]]:
        """Every standard item known here, and which local resource provides it."""
        providers: dict[str, list[str]] = {}
        for doc in self.tables.entries(self.config.code):
            if doc["status"] == "published" and doc.get("provides"):
                providers.setdefault(doc["provides"], []).append(doc["code"])
        return [
            {
                **item.document(),
                "received_from": parent,
                "provided_by": providers.get(item.code, []),
            }
            for item, parent in self.tables.standards()
        ]

    def coverage(self) -> dict[str, Any]:
        """Nodes below (or this node, at a county) × standard items: provided, stale or
        missing; inner nodes roll up the nodes under them."""
        items = [item for item, _ in self.tables.standards()]
        tree = self.tables.tree()
        children: dict[str, list[str]] = {}
        for code, parent in tree.items():
            children.setdefault(parent, []).append(code)
        for configured in self.config.children:
            if configured.code not in children.get(self.config.code, []):
                children.setdefault(self.config.code, []).append(configured.code)
        now = clock()
        by_code = {i.code: i for i in items}
        best: dict[tuple[str, str], str] = {}
        rank = {PROVIDED: 2, STALE_COVERAGE: 1}
        for doc in self.tables.entries():
            item = by_code.get(doc.get("provides") or "")
            if doc["status"] != "published" or item is None:
                continue
            if mapping_problem(entry_from_document(doc), item):
                continue  # the item was redefined and this resource no longer fits it
            # Judged by what the item demands, not by what the resource promises.
            state = _freshness_of(doc, item.update_frequency, now)
            cell = PROVIDED if state == "fresh" else STALE_COVERAGE
            key = (doc["origin_node"], doc["provides"])
            if rank[cell] > rank.get(best.get(key, ""), 0):
                best[key] = cell
        rows: list[dict[str, Any]] = []

        def visit(code: str, depth: int) -> dict[str, dict[str, int]]:
            below = sorted(children.get(code, []))
            row: dict[str, Any] = {"code": code, "name": _name(code), "depth": depth}
            rows.append(row)
            if not below:
                row["cells"] = {i.code: best.get((code, i.code), MISSING) for i in items}
                return {i.code: {row["cells"][i.code]: 1} for i in items}
            totals: dict[str, dict[str, int]] = {i.code: {} for i in items}
            for child in below:
                for item_code, counts in visit(child, depth + 1).items():
                    for state, n in counts.items():
                        totals[item_code][state] = totals[item_code].get(state, 0) + n
            row["rollup"] = totals
            return totals

        if children.get(self.config.code):
            for child in sorted(children[self.config.code]):
                visit(child, 0)
        else:
            visit(self.config.code, 0)
        return {"items": [i.document() for i in items], "nodes": rows}

    # ----- status ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Catalogue figures for `status`: own entries by status, freshness per node."""
        now, tree = clock(), self.tables.tree()
        per_node: dict[str, dict[str, int]] = {}
        late: list[dict[str, Any]] = []
        for doc in self.tables.entries():
            if doc["status"] != "published":
                continue
            state = self._decorate(doc, tree, now)["freshness"]
            counts = per_node.setdefault(doc["origin_node"], dict.fromkeys(STATES, 0))
            if state in counts:
                counts[state] += 1
            if state != "fresh" and doc["origin_node"] == self.config.code:
                late.append({"code": doc["code"], "name": doc["name"], "freshness": state})
        total = dict.fromkeys(STATES, 0)
        for counts in per_node.values():
            for state, n in counts.items():
                total[state] += n
        return {
            "own": self.tables.counts(),
            "freshness": total,
            "by_node": [
                {"code": code, "name": _name(code), **counts}
                for code, counts in sorted(per_node.items())
            ],
            "not_fresh": late,
            "standard_items": len(self.tables.standards()),
        }


def _name(code: str) -> str:
    try:
        return lookup_division(code).name
    except UserError:
        return code
