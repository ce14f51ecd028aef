"""Nodes in process, on real DuckDB files, that exchange windows through the real wire
encoding: the shared base of the store tests (sources, feedback, quality, scores).

A `StoreNode` is a node directory as `tongyuan init` leaves it, with its store open and
its catalogue at hand. It registers catalogue resources, imports rows into them as
`tongyuan ingest` does and pulls a child's window as a link does; each test file adds
the helpers only it needs in a subclass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from node.catalog.operations import CatalogService
from node.config import CONFIG_FILE, load_config, render_initial_config
from node.divisions import tier_of
from node.model import load_base_model
from node.store import IngestResult, Store
from node.wire import decode_batch, encode_window

# The divisions most of these tests stand nodes up for: two counties of 南京, the city
# and the province.
NAMES = {"320102": "玄武区", "320104": "秦淮区", "320100": "南京市", "320000": "江苏省"}


class StoreNode:
    """A node directory as `tongyuan init` leaves it, with its store open."""

    def __init__(self, base: Path, code: str, name: str) -> None:
        self.directory = base / code
        self.directory.mkdir()
        (self.directory / CONFIG_FILE).write_text(
            render_initial_config(code, name, "127.0.0.1:0"), encoding="utf-8"
        )
        self.code = code
        self.config = load_config(self.directory)
        self.store = Store.create(
            self.config.store_path,
            code=code,
            name=name,
            tier=tier_of(code).value,
            model=load_base_model(),
        )
        self.catalog = CatalogService(self.config, self.store)

    def register(
        self,
        code: str,
        fields: Sequence[str],
        *,
        department: str = "公安局",
        name: str | None = None,
        entity: str = "person",
        frequency: str = "daily",
        source_node: str | None = None,
        source_department: str | None = None,
    ) -> None:
        """Publish a catalogue resource of this node (named "<department>人口信息" unless
        `name` is given); with `source_node` and `source_department` it names another
        source, so its imports are observations of that source."""
        entry: dict[str, Any] = {
            "code": code,
            "name": name if name is not None else f"{department}人口信息",
            "summary": "人口",
            "department": department,
            "entity": entity,
            "update_frequency": frequency,
            "sharing": "unconditional",
            "fields": list(fields),
        }
        if source_node is not None:
            entry["source_node"] = source_node
        if source_department is not None:
            entry["source_department"] = source_department
        self.catalog.add([entry], "people.toml", "tester", publish=True)

    def ingest(
        self,
        resource: str,
        rows: list[dict[str, str]],
        *,
        snapshot: bool = False,
        position: str = "row",
    ) -> IngestResult:
        """Import rows into one of this node's resources, as `tongyuan ingest` does: the
        resource's columns, its department, observations when it names another source.
        The rows come from "people.csv", where row i sits at "<position> <i + 2>"."""
        entry = self.catalog.tables.own_entry(resource)
        assert entry is not None, f"no resource {resource} at node {self.code}"
        columns = [f.name for f in entry.fields]
        observing = None
        if not self.catalog.is_authoritative(entry):
            observing = (entry.source_node, entry.source_department)
        return self.store.ingest(
            self.store.entities[entry.entity],
            pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns}),
            file_label="people.csv",
            locate=lambda i: f"{position} {i + 2}",
            origin_node=self.code,
            department=entry.department,
            snapshot=snapshot,
            resource=resource,
            columns=columns,
            observing=observing,
        )

    def pull(self, child: StoreNode) -> None:
        """Apply everything `child` logged since the last pull, as a link does."""
        link = self.store.link(child.code)
        after = link.checkpoint if link is not None else 0
        window = child.store.read_window(after, 10_000)
        batch = decode_batch(encode_window(window), self.store.log_entities, child.code)
        self.store.apply_batches(child.code, self.code, [batch])

    def rows(self, sql: str) -> list[dict[str, Any]]:
        """The rows a query of this node's store returns."""
        return list(self.store.query(sql).to_pylist())


N = TypeVar("N", bound=StoreNode)


def closing_all(nodes: dict[str, N]) -> Iterator[dict[str, N]]:
    """The body of a `nodes` fixture: yield the nodes, then close every store the test
    left open (it may have closed one itself)."""
    try:
        yield nodes
    finally:
        for node in nodes.values():
            if not node.store.db.closed:
                node.store.close()
