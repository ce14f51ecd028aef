"""What leaves this node: the sharing attribute and the grading compiled to SQL.

Invariant 4 holds here, at the source: every path by which rows leave a node (change
windows to the parent, return flows to a child, exports) selects them through
`OutboundStore.select`, so masking and pseudonymisation happen before the bytes leave.

The rules, set-based and per record (never per row in Python):

- Only records this node *originated* are transformed; a child's records were
  transformed at their source, and transforming them again would break joins.
- A record last written by a *not shared* resource (sharing kind `none`) never
  leaves (its catalogue entry still does). Gaps in sequence numbers are fine.
- Each attribute of an entity is treated the strictest way any of this node's
  resources of that entity asks (clear < mask < pseudonymise): one record holds values
  written by several resources, and a parent must see one identity per record. An
  unconditional resource asks for `clear`, a conditional one for its field's grade's
  treatment (`[catalog] grade_treatment`), a not-shared one for `pseudonymise` of the
  non-key values it wrote (its rows never leave, but its values may sit in a record
  another resource wrote last). A grade the config does not know is pseudonymised.
- A key graded `mask` is pseudonymised (masked keys would merge records); a
  non-string attribute graded mask or pseudonymise leaves as NULL.
- Pseudonym: `ty1:` + the first 32 hex digits of HMAC-SHA256(federation key, value),
  computed in DuckDB, so a parent can count, join and deduplicate by it.
- Display masks, chosen by the attribute (see `mask_kind`): an ID number (identifier
  or code list GB 11643) keeps its first 6 and last 4 characters; a name its first; a
  phone number its first 3 and last 4; an address its first 6 then `****`; anything
  else its first and last; every other character becomes `*`.

The compiled SQL is cached per (catalogue head, model digest, settings): a publication,
a retirement or a model change recompiles it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from node.catalog.entries import TREATMENTS, CatalogSettings
from node.entities import Entity
from node.errors import UserError
from node.model.schema import Model
from node.security.paths import (
    FEDERATION_KEY_BYTES,
    SECURITY_DIR,
    federation_key_path,
    read_federation_key,
)
from node.store.catalog import CATALOG
from node.store.protected import PSEUDONYM_HEX_DIGITS, PSEUDONYM_PREFIX, mask_sql
from node.store.schema import WIRE_LINEAGE, entity_table, quote
from node.store.sources import OBSERVATIONS, norm_key_sql

if TYPE_CHECKING:
    from node.store.store import Store

# Beside a key this node generated for itself: the key's digest (never the key).
LOCAL_KEY_MARKER = Path(SECURITY_DIR) / "federation.key.local-only"
# With the root's certificate (`pki init-root`, `pki install`) the key is the federation's.
FEDERATION_ROOT = Path(SECURITY_DIR) / "root.crt"
_STRICTNESS = {t: i for i, t in enumerate(TREATMENTS)}
ID_SCHEME = "GB 11643"
# Shortest run of hex digits of a pad redacted from error text (see OutboundStore.redact).
_REDACT_MIN_HEX = 4
_UNHEX_LITERAL = re.compile(r"unhex\('[0-9a-fA-F]*'?")
_HEX_RUN = re.compile(f"[0-9a-fA-F]{{{_REDACT_MIN_HEX},}}")
REDACTED = "<redacted>"


# ----- the federation key ----------------------------------------------------------------


def _key_digest(key: bytes) -> str:
    return hashlib.sha256(b"tongyuan federation key\0" + key).hexdigest()


def federation_key(directory: Path, *, create: bool = True) -> bytes | None:
    """The federation key of the node in `directory` (read and checked by
    `node.security.paths.read_federation_key`, the one reader); with `create`, a random
    key generated there at first use, marked local only (pseudonyms then differ between
    nodes)."""
    key = read_federation_key(directory)
    if key is not None or not create:
        return key
    path = federation_key_path(directory)
    key = secrets.token_bytes(FEDERATION_KEY_BYTES)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote one meanwhile: use that
        return read_federation_key(directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    (directory / LOCAL_KEY_MARKER).write_text(_key_digest(key) + "\n")
    return key


def _key_identity(directory: Path) -> tuple[int, ...] | None:
    """What changes when security/federation.key is replaced or rewritten (None when
    absent): part of the compile stamp, so a new key applies without a restart."""
    try:
        st = federation_key_path(directory).stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer pads of `key` (what the SQL holds instead of the key)."""
    padded = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def federation_key_scope(directory: Path) -> str:
    """`federation` when the key came from the federation (pki installed it, or this
    node holds the federation's root and hands its key down), `local only` when this
    node generated it for itself, `none yet` before first use."""
    key = read_federation_key(directory)
    if key is None:
        return "none yet"
    try:
        marker = (directory / LOCAL_KEY_MARKER).read_text().strip()
    except FileNotFoundError:
        return "federation"
    if marker != _key_digest(key) or (directory / FEDERATION_ROOT).exists():
        return "federation"
    return "local only"


# ----- SQL for one value -----------------------------------------------------------------


def _blob(data: bytes) -> str:
    return f"unhex('{data.hex()}')"


def pseudonym_sql(expression: str, key: bytes) -> str:
    """HMAC-SHA256 of a VARCHAR expression in SQL, as `hmac.new(key, v.encode(),
    sha256)`: sha256(key^opad || sha256(key^ipad || v)), the key padded to 64 bytes."""
    inner, outer = _pads(key)
    digest = f"sha256({_blob(outer)} || unhex(sha256({_blob(inner)} || encode({expression}))))"
    return f"('{PSEUDONYM_PREFIX}' || left({digest}, {PSEUDONYM_HEX_DIGITS}))"


def pseudonym(value: str, key: bytes) -> str:
    """The pseudonym of one value in Python (tests and tools; the node uses the SQL)."""
    import hmac

    digest = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


def mask_kind(attribute: str, identifier: str | None, code_list: str | None) -> str:
    """Which display mask fits an attribute: by its declared scheme first, then by its
    name (`name`/`*_name`, `*phone*`/`*mobile*`/`*tel`, `*address*`/`*addr`)."""
    if identifier == ID_SCHEME or code_list == ID_SCHEME:
        return "id_number"
    if attribute == "name" or attribute.endswith("_name"):
        return "name"
    if "phone" in attribute or "mobile" in attribute or attribute.endswith("tel"):
        return "phone"
    if "address" in attribute or attribute.endswith("addr"):
        return "address"
    return "other"


# ----- the plan: what each attribute becomes ---------------------------------------------


@dataclass(frozen=True)
class AttributeTreatment:
    treatment: str  # one of TREATMENTS
    mask: str  # a mask_kind


@dataclass(frozen=True)
class SharingPlan:
    """This node's own resources compiled to treatments: per entity, per attribute
    (only those not sent in clear), and the codes of not-shared resources."""

    attributes: Mapping[str, Mapping[str, AttributeTreatment]]
    withheld_resources: frozenset[str]
    kinds: Mapping[str, int]


def build_plan(
    entries: Sequence[Mapping[str, Any]], model: Model, settings: CatalogSettings
) -> SharingPlan:
    """The plan for entries (code, entity, fields, sharing_kind) of this node."""
    treatments: dict[str, dict[str, AttributeTreatment]] = {}
    withheld: set[str] = set()
    kinds = dict.fromkeys(("unconditional", "conditional", "none"), 0)
    lowest = settings.sensitivity_grades[0] if settings.sensitivity_grades else ""
    for entry in entries:
        kind = str(entry["sharing_kind"] or "unconditional")
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "none":
            withheld.add(str(entry["code"]))
        modelled = model.entity(str(entry["entity"]))
        if modelled is None:
            continue
        per_entity = treatments.setdefault(modelled.name, {})
        for field in entry["fields"]:
            name = str(field["name"])
            attribute = modelled.attribute(name)
            if attribute is None:
                continue
            if kind == "unconditional":
                wanted = "clear"
            elif kind == "none":
                wanted = "clear" if name == modelled.key else "pseudonymise"
            else:
                grade = field.get("sensitivity") or attribute.sensitivity or lowest
                wanted = settings.treatment_of(grade)
            if wanted == "mask" and name == modelled.key:
                wanted = "pseudonymise"
            held = per_entity.get(name)
            if held is None or _STRICTNESS[wanted] > _STRICTNESS[held.treatment]:
                code_list = field.get("code_list") or attribute.code_list
                per_entity[name] = AttributeTreatment(
                    wanted, mask_kind(name, attribute.identifier, code_list)
                )
    attributes = {
        entity: {a: t for a, t in per.items() if t.treatment != "clear"}
        for entity, per in treatments.items()
    }
    return SharingPlan(
        attributes={e: a for e, a in attributes.items() if a},
        withheld_resources=frozenset(withheld),
        kinds=kinds,
    )


def _transform(expression: str, treatment: AttributeTreatment, key: bytes | None) -> str:
    if treatment.treatment == "mask":
        return mask_sql(expression, treatment.mask)
    assert key is not None
    return pseudonym_sql(expression, key)


def _select_items(exprs: Mapping[str, str], names: Sequence[str]) -> str:
    """`expr AS "name"` for each column (a bare name where nothing is transformed)."""
    return ", ".join(
        exprs[c] if exprs[c] == quote(c) else f"{exprs[c]} AS {quote(c)}" for c in names
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _form_digest(plan: SharingPlan, model_digest: str, key_identity: tuple[int, ...] | None) -> str:
    """What decides the form rows leave in, as a digest: the treatments, the resources
    withheld, the model and which key (its file's identity, never the key)."""
    document = (
        sorted(
            (entity, sorted((a, t.treatment, t.mask) for a, t in per.items()))
            for entity, per in plan.attributes.items()
        ),
        sorted(plan.withheld_resources),
        model_digest,
        key_identity,
    )
    return hashlib.sha256(repr(document).encode()).hexdigest()[:32]


# ----- the store side ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    plan: SharingPlan
    columns: Mapping[str, Mapping[str, str]]  # entity → column → SQL expression
    where: Mapping[str, str]  # entity → predicate
    key: bytes | None  # the federation key the SQL uses (None: nothing is pseudonymised)
    form: str  # a digest of what decides the form rows leave in (see `OutboundStore.stamp`)


class OutboundStore:
    """Rows as they may leave this node; `Store.outbound`."""

    def __init__(self, store: Store, node_code: str) -> None:
        self._store = store
        self.node_code = node_code
        self.directory = store.db.path.parent
        self.settings = CatalogSettings()
        self._lock = threading.Lock()
        self._cache: tuple[tuple[Any, ...], _Compiled] | None = None
        # Hex of every HMAC pad compiled into SQL by this process (see `redact`).
        self._secrets: set[str] = set()

    def configure(self, settings: CatalogSettings) -> None:
        """Use the node's `[catalog]` grades and treatments (defaults until called)."""
        with self._lock:
            self.settings = settings
            self._cache = None

    # ----- compiling -----

    def _own_entries(self) -> list[dict[str, Any]]:
        with self._store.db.read() as cur:
            rows = cur.execute(
                f"SELECT code, entity, fields, sharing_kind FROM {entity_table(CATALOG)} "
                "WHERE origin_node = ? AND NOT _deleted AND status IN ('published', 'retired')",
                [self.node_code],
            ).fetchall()
        return [
            {"code": c, "entity": e, "fields": json.loads(f) if f else [], "sharing_kind": k}
            for c, e, f, k in rows
        ]

    def _compiled(self) -> _Compiled:
        log_entities, heads = self._store._log_state
        stamp = (
            heads.get(CATALOG.name, 0),
            self._store.model_digest,
            self.settings,
            _key_identity(self.directory),
        )
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        plan = build_plan(self._own_entries(), self._store.model, self.settings)
        needs_key = any(
            t.treatment == "pseudonymise" for per in plan.attributes.values() for t in per.values()
        )
        key = federation_key(self.directory) if needs_key else None
        if key is not None:
            with self._lock:
                self._secrets.update(p.hex() for p in _pads(key))
        columns: dict[str, dict[str, str]] = {}
        where: dict[str, str] = {}
        own = f"origin_node = {_literal(self.node_code)}"
        if plan.withheld_resources:
            codes = ", ".join(_literal(c) for c in sorted(plan.withheld_resources))
            withheld = f"NOT coalesce({own} AND origin_resource IN ({codes}), false)"
        else:
            withheld = "true"
        for entity in log_entities.values():
            per = plan.attributes.get(entity.name, {})
            exprs: dict[str, str] = {}
            for column in entity.columns:
                name = quote(column.name)
                treatment = per.get(column.name)
                if treatment is None:
                    exprs[column.name] = name
                elif column.type != "string":
                    exprs[column.name] = (
                        f"CASE WHEN {own} THEN NULL ELSE {name} END::{column.sql_type}"
                    )
                else:
                    exprs[column.name] = (
                        f"CASE WHEN {own} THEN {_transform(name, treatment, key)} ELSE {name} END"
                    )
            if entity.name == OBSERVATIONS.name:
                exprs = {c: quote(c) for c in OBSERVATIONS.column_names}
                exprs.update(self._observation_exprs(plan, key, own))
            columns[entity.name] = exprs
            is_data = entity.name in self._store.entities or entity.name == OBSERVATIONS.name
            where[entity.name] = withheld if is_data else "true"
        form = _form_digest(
            plan,
            self._store.model_digest,
            _key_identity(self.directory) if key is not None else None,
        )
        compiled = _Compiled(plan, columns, where, key, form)
        with self._lock:
            self._cache = (stamp, compiled)
        return compiled

    def _observation_exprs(
        self,
        plan: SharingPlan,
        key: bytes | None,
        own: str,
        *,
        entity: str = "entity",
        attribute: str = "attribute",
        value: str = "value",
        record_key: str = "record_key",
        norm_key: str | None = "norm_key",
        obs_id: str = "obs_id",
    ) -> dict[str, str]:
        """Observations carry values of attributes of entities: the value is treated as
        its (entity, attribute), the record key (and the ids derived from it) as the
        entity's key. The expressions of those that change (by the names `value`,
        `record_key`, `norm_key`, `obs_id`), reading the given columns; `own` is the
        predicate that the observation is this node's own."""
        exprs: dict[str, str] = {}
        value_cases = []
        keyed = []
        for entity_name, per in sorted(plan.attributes.items()):
            modelled = self._store.model.entity(entity_name)
            if modelled is None:
                continue
            for name, treatment in sorted(per.items()):
                typed = modelled.attribute(name)
                out = (
                    "NULL"
                    if typed is None or typed.type != "string"
                    else _transform(value, treatment, key)
                )
                value_cases.append(
                    f"WHEN {entity} = {_literal(entity_name)} "
                    f"AND {attribute} = {_literal(name)} THEN {out}"
                )
            if modelled.key in per:
                keyed.append(_literal(entity_name))
        if value_cases:
            exprs["value"] = (
                f"CASE WHEN {own} THEN CASE {' '.join(value_cases)} ELSE {value} END "
                f"ELSE {value} END"
            )
        if keyed:
            assert key is not None
            when = f"{own} AND {entity} IN ({', '.join(keyed)})"
            hidden = pseudonym_sql(record_key, key)
            exprs["record_key"] = f"CASE WHEN {when} THEN {hidden} ELSE {record_key} END"
            if norm_key is not None:
                exprs["norm_key"] = (
                    f"CASE WHEN {when} THEN {norm_key_sql(hidden)} ELSE {norm_key} END"
                )
            exprs["obs_id"] = (
                f"CASE WHEN {when} THEN {pseudonym_sql(obs_id, key)} ELSE {obs_id} END"
            )
        return exprs

    # ----- what callers use -----

    def stamp(self) -> str:
        """A digest of what decides the form rows leave this node in (treatments, resources
        withheld, model, the federation key's file identity; never the key): it changes
        when a resource becomes not shared, a grade or the key changes, so a copy sent
        under another stamp may hold rows in a form that no longer applies."""
        return self._compiled().form

    def federation_key(self) -> bytes:
        """This node's federation key (generated, local only, at first use)."""
        key = federation_key(self.directory)
        assert key is not None
        return key

    def observation_sql(
        self,
        own: str,
        *,
        entity: str = "entity",
        attribute: str = "attribute",
        value: str = "value",
        record_key: str = "record_key",
        obs_id: str = "obs_id",
    ) -> dict[str, str]:
        """SQL reading an observation's value, record key and id (columns named by the
        arguments) as they would leave this node in an observation: keys `value`,
        `record_key`, `obs_id`, each the column itself where nothing applies. `own` is a
        predicate true where the observation is this node's own (only those are treated).
        Run the query under `without_secrets`."""
        compiled = self._compiled()
        exprs = {"value": value, "record_key": record_key, "obs_id": obs_id}
        exprs.update(
            self._observation_exprs(
                compiled.plan,
                compiled.key,
                f"({own})",
                entity=entity,
                attribute=attribute,
                value=value,
                record_key=record_key,
                norm_key=None,
                obs_id=obs_id,
            )
        )
        return exprs

    def redact(self, text: str) -> str:
        """`text` (an error message) without the HMAC pads the outbound SQL holds: DuckDB
        quotes part of a query it cannot parse or bind, and such a message may travel to
        a parent (a gRPC error, its `links.last_error`) or land in a log."""
        text = _UNHEX_LITERAL.sub(f"unhex('{REDACTED}'", text)
        with self._lock:
            pads = tuple(self._secrets)
        if not pads:
            return text

        def hide(found: re.Match[str]) -> str:
            run = found.group(0).lower()
            return REDACTED if any(run in pad for pad in pads) else found.group(0)

        return _HEX_RUN.sub(hide, text)

    @contextlib.contextmanager
    def without_secrets(self) -> Iterator[None]:
        """Run outbound SQL: a DuckDB error leaves as the same kind of error with its
        text redacted (`redact`), its original not chained."""
        try:
            yield
        except (duckdb.Error, pa.ArrowException) as exc:
            text = self.redact(str(exc))
            try:
                redacted = type(exc)(text)
            except Exception:  # an error type that takes other arguments
                redacted = duckdb.Error(text)
            raise redacted from None

    def select(self, entity: Entity) -> tuple[str, str]:
        """(select list with the wire lineage, predicate) reading `entity`'s table as its
        rows may leave this node: use as `SELECT {list} FROM table WHERE … AND {pred}`."""
        compiled = self._compiled()
        exprs = compiled.columns.get(entity.name)
        if exprs is None:  # not a log entity of the current model: nothing to transform
            return ", ".join(quote(c) for c in entity.column_names) + f", {WIRE_LINEAGE}", "true"
        items = _select_items(exprs, entity.column_names)
        return f"{items}, {WIRE_LINEAGE}", compiled.where[entity.name]

    def plan(self) -> SharingPlan:
        """The plan alone (no SQL, so no key is generated just to report it)."""
        return build_plan(self._own_entries(), self._store.model, self.settings)

    def summary(self) -> dict[str, Any]:
        """For `status`: own resources per sharing kind, attributes protected, key scope."""
        plan = self.plan()
        protected = {
            f"{entity}.{attribute}": t.treatment
            for entity, per in sorted(plan.attributes.items())
            for attribute, t in sorted(per.items())
        }
        return {
            "resources": dict(plan.kinds),
            "protected_attributes": protected,
            "federation_key": federation_key_scope(self.directory),
        }

    def export_batches(
        self, resource: str, batch_rows: int = 65536, *, json_lines: bool = False
    ) -> tuple[dict[str, Any], pa.RecordBatchReader, duckdb.DuckDBPyConnection]:
        """A resource's live records as they would leave this node: (its entry, a reader
        of its fields plus origin_node, the cursor to close when done). With
        `json_lines`, one column `line` instead: each record as a JSON object and a
        newline, made by DuckDB. Refuses a resource that is not shared."""
        entries = self._store.catalog.entries_with_code(resource)
        if not entries:
            raise UserError(f"export: no resource {resource} in this node's catalogue")
        entry = next((e for e in entries if e["origin_node"] == self.node_code), entries[0])
        if entry["sharing_kind"] == "none":
            raise UserError(
                f"export: resource {resource} is not shared (sharing {entry['sharing']!r}): "
                "its records never leave this node"
            )
        entity = self._store.entities.get(str(entry["entity"]))
        if entity is None:
            raise UserError(f"export: entity {entry['entity']!r} is not in this node's model")
        compiled = self._compiled()
        exprs = compiled.columns[entity.name]
        names = [str(f["name"]) for f in entry["fields"] if str(f["name"]) in exprs]
        items = f"{_select_items(exprs, names)}, origin_node"
        if json_lines:
            packed = ", ".join(f"{quote(c)} := {exprs[c]}" for c in names)
            items = f"to_json(struct_pack({packed}, origin_node := origin_node)) || chr(10) AS line"
        sql = (
            f"SELECT {items} FROM {entity_table(entity)} "
            f"WHERE NOT _deleted AND origin_resource = ? AND {compiled.where[entity.name]} "
            f"ORDER BY origin_node, {quote(entity.key)}"
        )
        cur = self._store.db.reader()
        try:
            with self.without_secrets():
                reader = cur.sql(sql, params=[resource]).to_arrow_reader(batch_rows)
        except BaseException:
            cur.close()
            raise
        return entry, reader, cur
