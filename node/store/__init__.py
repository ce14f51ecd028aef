"""The node's store (DuckDB): owns every connection and every SQL string."""

from node.store.store import (
    ApplyResult,
    BatchGap,
    ChangeWindow,
    Identity,
    IncomingBatch,
    IngestResult,
    LinkRecord,
    ParentRecord,
    Store,
)

__all__ = [
    "ApplyResult",
    "BatchGap",
    "ChangeWindow",
    "Identity",
    "IncomingBatch",
    "IngestResult",
    "LinkRecord",
    "ParentRecord",
    "Store",
]
