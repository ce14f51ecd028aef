"""Arrow IPC on the wire: change windows to ChangeBatch messages and back.

Rows never travel as one protobuf message each; each entity's rows in a window are
one Arrow IPC stream in a `bytes` field. Decoding checks the rows fit the receiving
node's schema before anything is applied.
"""

from __future__ import annotations

import hashlib
import time

import pyarrow as pa
import pyarrow.compute as pc

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node.catalog.standards import StandardItem
from node.divisions import Tier, tier_of
from node.entities import COLUMN_TYPES, INTERNAL_NAMES, Entity
from node.errors import UserError
from node.model.adoption import WIDENINGS
from node.store import ChangeWindow, IncomingBatch

# Both ends raise gRPC's 4 MiB default; windows are sized in changes, not bytes.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
GRPC_MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class BatchRejected(UserError):
    """A batch from a child that does not decode or does not fit this node's schema."""


def encode_table(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_table(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


def encode_window(window: ChangeWindow) -> pb.ChangeBatch:
    return pb.ChangeBatch(
        after_seq=window.after_seq,
        last_seq=window.last_seq,
        head_seq=window.head_seq,
        sent_at_us=time.time_ns() // 1000,
        entities=[
            pb.EntityChanges(entity=name, arrow_ipc=encode_table(table), rows=table.num_rows)
            for name, table in window.tables.items()
        ],
    )


def decode_batch(message: pb.ChangeBatch, entities: dict[str, Entity], child: str) -> IncomingBatch:
    """Decode and check a child's window; raises BatchRejected saying what and where."""
    where = f"batch from child {child} (seq {message.after_seq}..{message.last_seq})"
    if message.last_seq < message.after_seq:
        raise BatchRejected(f"{where}: window ends before it starts")
    tables: dict[str, pa.Table] = {}
    digest = hashlib.sha256()
    for part in message.entities:
        digest.update(part.entity.encode() + b"\x1f")
        digest.update(part.arrow_ipc)
        entity = entities.get(part.entity)
        if entity is None:
            raise BatchRejected(
                f"{where}: entity {part.entity!r} is not in this node's model; the child works "
                f"with another model — adopt this node's model there (`tongyuan model adopt` "
                f"at {child})"
            )
        try:
            table = decode_table(part.arrow_ipc)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise BatchRejected(
                f"{where}, entity {part.entity}: not valid Arrow IPC ({exc})"
            ) from None
        fitted = _fit(table, entity, where)
        _check_ownership(fitted, entity, child, f"{where}, entity {entity.name}")
        tables[entity.name] = fitted
    return IncomingBatch(
        after_seq=message.after_seq,
        last_seq=message.last_seq,
        head_seq=message.head_seq,
        tables=tables,
        model_digest=message.model_digest,
        digest=digest.hexdigest(),
    )


def _fit(table: pa.Table, entity: Entity, where: str) -> pa.Table:
    """The table in this node's shape. Attributes the child's model lacks arrive empty (a
    compatible addition here must not stop children that have not adopted it yet); a
    column this node's model does not have is refused."""
    expected = entity.wire_schema()
    names = set(table.column_names)
    optional = set(entity.column_names) - {entity.key, *entity.required}
    if entity.name in INTERNAL_NAMES:
        optional = set()  # the node's own tables have one shape at every tier
    missing = [f.name for f in expected if f.name not in names and f.name not in optional]
    extra = [n for n in table.column_names if n not in expected.names]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            detail.append(
                f"column(s) {', '.join(extra)} not in this node's model (the child must adopt "
                "this node's model)"
            )
        raise BatchRejected(f"{where}, entity {entity.name}: {'; '.join(detail)}")
    for field in expected:
        if field.name not in names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    table = table.select(expected.names)
    for field in expected:
        actual = table.schema.field(field.name).type
        same_kind = actual == field.type or (
            pa.types.is_timestamp(actual) and pa.types.is_timestamp(field.type)
        )
        # A type this node widened (its child not having adopted yet) converts losslessly.
        widened = (_column_type(actual), _column_type(field.type)) in WIDENINGS
        if not same_kind and not widened:
            raise BatchRejected(
                f"{where}, entity {entity.name}, column {field.name}: type {actual} "
                f"does not fit {field.type}"
            )
    for name in (entity.key, "origin_node", "origin_seq", "_deleted"):
        if table.column(name).null_count:
            raise BatchRejected(f"{where}, entity {entity.name}, column {name}: has empty values")
    columns = []
    for field in expected:
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise BatchRejected(
                f"{where}, entity {entity.name}, column {field.name}: {exc}"
            ) from None
    return pa.Table.from_arrays(columns, schema=expected)


def _column_type(arrow_type: pa.DataType) -> str | None:
    """The model's name for an Arrow type on the wire (None if it has none)."""
    for name, (_, known) in COLUMN_TYPES.items():
        if arrow_type == known or (pa.types.is_timestamp(arrow_type) and name == "timestamp"):
            return name
    return None


def _division_prefix(code: str) -> str:
    """The code prefix every division inside `code` shares (32, 3201 or the county)."""
    tier = tier_of(code)
    return code[:2] if tier is Tier.PROVINCE else code[:4] if tier is Tier.CITY else code


def _check_ownership(table: pa.Table, entity: Entity, child: str, where: str) -> None:
    """A child speaks only for its own subtree: every change must originate inside it,
    a catalogue entry must carry its origin's code prefix, and a node-tree record must
    come from the new node's parent."""
    origins = table.column("origin_node")
    inside = pc.starts_with(origins, _division_prefix(child))
    if not pc.all(inside).as_py():
        stranger = pc.filter(origins, pc.invert(inside))[0].as_py()
        raise BatchRejected(
            f"{where}: changes claim origin node {stranger}, which is not inside child "
            f"{child}; a child may only send its own subtree's records"
        )
    if entity.name == "catalog":
        for code, origin in zip(table.column("code").to_pylist(), origins.to_pylist(), strict=True):
            if not code.startswith(origin + "-"):
                raise BatchRejected(
                    f"{where}: resource {code} arrived as node {origin}'s, but {origin} does "
                    f"not own it (its resource codes start with {origin}-); fix the entry at "
                    "the node that owns the code"
                )
    elif entity.name == "federation_nodes":
        for code, parent, deleted, origin in zip(
            table.column("code").to_pylist(),
            table.column("parent_code").to_pylist(),
            table.column("_deleted").to_pylist(),
            origins.to_pylist(),
            strict=True,
        ):
            if code == origin or not code.startswith(_division_prefix(origin)):
                raise BatchRejected(
                    f"{where}: node {origin} reports {code} as its child, but {code} is not "
                    f"inside {origin}"
                )
            if not deleted and parent != origin:
                raise BatchRejected(
                    f"{where}: node {origin} reports {code} as a child of {parent}; a node "
                    "records only its own children"
                )


def standard_to_message(item: StandardItem) -> pb.StandardItem:
    return pb.StandardItem(
        code=item.code,
        name=item.name,
        summary=item.summary,
        entity=item.entity,
        fields=list(item.fields),
        update_frequency=item.update_frequency,
        origin_node=item.origin_node,
        version=item.version,
    )


def standard_from_message(message: pb.StandardItem) -> StandardItem:
    return StandardItem(
        code=message.code,
        name=message.name,
        summary=message.summary,
        entity=message.entity,
        fields=tuple(message.fields),
        update_frequency=message.update_frequency,
        origin_node=message.origin_node,
        version=message.version,
    )
