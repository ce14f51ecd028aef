"""How a CLI command reaches a node: through the admin API if the node is serving,
otherwise by opening the store itself (read-only unless the command writes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from node.admin import RemoteNode, read_endpoint
from node.config import load_config
from node.service import DEFAULT_INGEST, IngestOptions, NodeService, Progress
from node.store import Store


class NodeAPI(Protocol):
    def status(self) -> dict[str, Any]: ...

    def ingest(
        self,
        resource: str,
        path: Path,
        options: IngestOptions = DEFAULT_INGEST,
        progress: Progress | None = None,
    ) -> dict[str, Any]: ...

    def query(self, sql: str) -> pa.Table: ...

    def query_batches(self, sql: str) -> Iterator[pa.RecordBatch]: ...

    def add_child(self, code: str, address: str) -> list[dict[str, Any]]: ...

    def remove_child(self, code: str) -> list[dict[str, Any]]: ...

    def list_children(self) -> list[dict[str, Any]]: ...

    def call(self, method: str, args: dict[str, Any]) -> Any: ...

    def close(self) -> None: ...


class LocalNode(NodeService):
    """The node's operations on its own store, for when it is not serving."""

    def close(self) -> None:
        self.store.close()


def open_node(directory: Path, *, write: bool) -> NodeAPI:
    config = load_config(directory)
    endpoint = read_endpoint(config.admin_file)
    if endpoint is not None:
        return RemoteNode(endpoint)
    store = Store.open(
        config.store_path, read_only=not write, memory_limit=config.store.memory_limit
    )
    try:
        return LocalNode(config, store)
    except BaseException:
        store.close()
        raise
