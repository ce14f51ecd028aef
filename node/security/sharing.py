"""Sharing enforced at the source, as the node's operations: export a resource as it
would leave this node, and the figures `status` shows.

The rules themselves are SQL in `node/store/outbound.py`; this module writes the
exported file and records the export in the audit chain when the node has one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from node.config import NodeConfig
from node.errors import UserError
from node.store import Store

EXPORT_FORMATS = ("csv", "parquet", "jsonl")


class _Writer:
    """One output file of one format, written batch by batch (memory stays bounded)."""

    def __init__(self, path: Path, file_format: str, schema: pa.Schema) -> None:
        self.file_format = file_format
        self._handle = path.open("wb")
        self._csv: pacsv.CSVWriter | None = None
        self._parquet: pq.ParquetWriter | None = None
        if file_format == "csv":
            self._csv = pacsv.CSVWriter(self._handle, schema)
        elif file_format == "parquet":
            self._parquet = pq.ParquetWriter(self._handle, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        if self._csv is not None:
            self._csv.write_batch(batch)
        elif self._parquet is not None:
            self._parquet.write_batch(batch)
        else:
            # One column of JSON lines DuckDB made (export_batches): its bytes as they are.
            lines = batch.column(0).cast(pa.large_string())
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
            start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
            data = lines.buffers()[2]
            if data is not None and end > start:
                self._handle.write(memoryview(data)[start:end])

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._parquet is not None:
            self._parquet.close()
        self._handle.close()


def _export_format(path: Path, file_format: str | None) -> str:
    chosen = file_format or {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}.get(
        path.suffix.lower(), ""
    )
    if chosen not in EXPORT_FORMATS:
        raise UserError(
            f"export: say --format ({', '.join(EXPORT_FORMATS)}); {path.name} does not tell"
        )
    return chosen


class SharingService:
    """Exports and the sharing part of `status`."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        store.outbound.configure(config.catalog)

    def export(
        self,
        resource: str,
        path: str,
        file_format: str | None = None,
        actor: str = "",
        batch_rows: int = 65536,
    ) -> dict[str, Any]:
        """Write `resource`'s live records to `path` exactly as they would leave this node
        (pseudonymised, masked, refused if not shared); returns what was written."""
        target = Path(path)
        if not target.is_absolute():
            raise UserError(f"export: give an absolute path, not {path!r}")
        chosen = _export_format(target, file_format)
        if not target.parent.is_dir():
            raise UserError(f"export: directory {target.parent} does not exist")
        outbound = self.store.outbound
        entry, reader, cur = outbound.export_batches(
            resource, batch_rows, json_lines=chosen == "jsonl"
        )
        partial = target.with_name(f".{target.name}.partial")
        rows = 0
        try:
            writer = _Writer(partial, chosen, reader.schema)
            try:
                with outbound.without_secrets():  # errors while reading quote no key pads
                    for batch in reader:
                        writer.write(batch)
                        rows += batch.num_rows
            finally:
                writer.close()
            os.replace(partial, target)
        finally:
            cur.close()
            partial.unlink(missing_ok=True)
        detail = {"resource": resource, "rows": rows, "file": str(target), "format": chosen}
        audit = getattr(self.store, "audit", None)
        if audit is not None:
            audit.record("export", detail, actor=actor)
        return {**detail, "entity": entry["entity"], "sharing": entry["sharing"]}

    def summary(self) -> dict[str, Any]:
        """For `status`: own resources per sharing kind, protected attributes, key scope."""
        return self.store.outbound.summary()
