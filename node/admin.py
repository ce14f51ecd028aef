"""The local admin API: how the CLI reaches a serving node (which holds the store).

It listens on loopback only and every call must carry the token written, readable by
the node's user alone, to `run/admin.json` in the node directory.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa

from node._gen.tongyuan.v1 import admin_pb2 as pb
from node._gen.tongyuan.v1 import admin_pb2_grpc as pb_grpc
from node.errors import NodeUnavailable, UserError
from node.service import DEFAULT_INGEST, IngestOptions, NodeService, Progress
from node.wire import GRPC_MESSAGE_OPTIONS

TOKEN_HEADER = "x-tongyuan-admin-token"
_CHUNK = 4 * 1024 * 1024


def _json_default(value: object) -> str:
    return str(value)


def to_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default)


# ----- runtime file ------------------------------------------------------------------


@dataclass(frozen=True)
class AdminEndpoint:
    pid: int
    address: str
    token: str
    listen: str


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_endpoint(path: Path, endpoint: AdminEndpoint) -> None:
    """Write run/admin.json with mode 0600 before it holds the token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(endpoint.__dict__, out)
    os.replace(tmp, path)


LOCK_FILE = "serve.lock"


class ServeLock:
    """An exclusive lock on run/serve.lock, held by a serving node for its whole life.

    The kernel drops it when the process dies (even by kill -9), so a stale
    admin.json or a reused pid never makes a dead node look alive.
    """

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise NodeUnavailable(
                f"node in {run_dir.parent} is already serving (run/{LOCK_FILE} is held)"
            ) from None

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _serving(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_endpoint(path: Path) -> AdminEndpoint | None:
    """The serving node's endpoint, or None if no live node owns the directory."""
    if not _serving(path.parent):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return AdminEndpoint(**data)
    except (OSError, ValueError, TypeError):
        raise NodeUnavailable(
            f"the node in {path.parent.parent} is starting or stopping; try again in a moment"
        ) from None


# ----- server side --------------------------------------------------------------------


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses admin calls without the node's token."""

    def __init__(self, token: str) -> None:
        self._token = token

        def deny(request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        if secrets.compare_digest(metadata.get(TOKEN_HEADER, ""), self._token):
            return continuation(handler_call_details)
        method = handler_call_details.method or ""
        return self._deny_stream if method.endswith(("/Ingest", "/Query")) else self._deny


def _abort_user_error(context: grpc.ServicerContext, exc: UserError) -> None:
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))


class _ChunkSink:
    """A file-like target for an Arrow IPC writer whose bytes are sent in chunks."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts, self.size = [], 0
        return data


class _ChunkReader(io.RawIOBase):
    """A readable file over a sequence of byte chunks, for an Arrow IPC stream reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, service: NodeService) -> None:
        self._service = service

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        return pb.StatusReply(json=to_json(self._service.status()))

    def Ingest(
        self, request: pb.IngestRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.IngestProgress]:
        events: queue.Queue[Any] = queue.Queue()

        def progress(phase: str, done: int, total: int) -> None:
            events.put(pb.IngestProgress(phase=phase, done=done, total=total))

        def run() -> None:
            try:
                options = IngestOptions(
                    snapshot=request.snapshot,
                    file_format=request.format or None,
                    allow_empty=request.allow_empty,
                )
                result = self._service.ingest(
                    request.resource, Path(request.path), options, progress
                )
                events.put(pb.IngestProgress(phase="done", result_json=to_json(result)))
            except UserError as exc:
                events.put(exc)
            except Exception as exc:
                events.put(exc)

        worker = threading.Thread(target=run, name="admin-ingest", daemon=True)
        worker.start()
        while True:
            item = events.get()
            if isinstance(item, UserError):
                _abort_user_error(context, item)
            if isinstance(item, Exception):
                context.abort(grpc.StatusCode.INTERNAL, f"ingest failed: {item}")
            yield item
            if item.phase == "done":
                return

    def Query(
        self, request: pb.QueryRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.QueryChunk]:
        sink = _ChunkSink()
        writer: pa.ipc.RecordBatchStreamWriter | None = None
        try:
            for batch in self._service.query_batches(request.sql):
                if writer is None:
                    writer = pa.ipc.new_stream(sink, batch.schema)
                writer.write_batch(batch)
                if sink.size >= _CHUNK:
                    yield pb.QueryChunk(arrow_ipc=sink.take())
        except UserError as exc:
            _abort_user_error(context, exc)
            return
        if writer is not None:
            writer.close()
        yield pb.QueryChunk(arrow_ipc=sink.take())

    def _children(
        self, action: Callable[[], list[dict[str, Any]]], context: grpc.ServicerContext
    ) -> pb.ChildrenReply:
        try:
            return pb.ChildrenReply(json=to_json(action()))
        except UserError as exc:
            _abort_user_error(context, exc)
            raise

    def AddChild(self, request: pb.ChildRequest, context: grpc.ServicerContext) -> pb.ChildrenReply:
        return self._children(
            lambda: self._service.add_child(request.code, request.address), context
        )

    def RemoveChild(
        self, request: pb.ChildRequest, context: grpc.ServicerContext
    ) -> pb.ChildrenReply:
        return self._children(lambda: self._service.remove_child(request.code), context)

    def ListChildren(
        self, request: pb.ListChildrenRequest, context: grpc.ServicerContext
    ) -> pb.ChildrenReply:
        return self._children(self._service.list_children, context)

    def Call(self, request: pb.CallRequest, context: grpc.ServicerContext) -> pb.CallReply:
        try:
            args = json.loads(request.args_json or "{}")
            if not isinstance(args, dict):
                raise UserError(f"{request.method}: arguments must be a JSON object")
            return pb.CallReply(result_json=to_json(self._service.call(request.method, args)))
        except json.JSONDecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.method}: {exc}")
            raise
        except UserError as exc:
            _abort_user_error(context, exc)
            raise


# ----- client side --------------------------------------------------------------------


class RemoteNode:
    """The CLI's handle on a serving node, through its admin API."""

    def __init__(self, endpoint: AdminEndpoint) -> None:
        self.endpoint = endpoint
        self._channel = grpc.insecure_channel(endpoint.address, options=GRPC_MESSAGE_OPTIONS)
        self._stub = pb_grpc.AdminStub(self._channel)
        self._metadata = ((TOKEN_HEADER, endpoint.token),)

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise UserError(exc.details()) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise NodeUnavailable(
                    f"node (pid {self.endpoint.pid}) does not answer on its admin API "
                    f"{self.endpoint.address}: {exc.details()}"
                ) from None
            raise UserError(f"admin call failed: {code.name}: {exc.details()}") from None

    def status(self) -> dict[str, Any]:
        reply = self._call(
            lambda: self._stub.Status(pb.StatusRequest(), metadata=self._metadata, timeout=30)
        )
        return dict(json.loads(reply.json))

    def ingest(
        self,
        resource: str,
        path: Path,
        options: IngestOptions = DEFAULT_INGEST,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        request = pb.IngestRequest(
            resource=resource,
            path=str(path.resolve()),
            snapshot=options.snapshot,
            format=options.file_format or "",
            allow_empty=options.allow_empty,
        )

        def run() -> dict[str, Any]:
            for event in self._stub.Ingest(request, metadata=self._metadata):
                if event.phase == "done":
                    return dict(json.loads(event.result_json))
                if progress:
                    progress(event.phase, event.done, event.total)
            raise UserError("ingest ended without a result")

        return dict(self._call(run))

    def query(self, sql: str) -> pa.Table:
        return pa.Table.from_batches(list(self.query_batches(sql)))

    def query_batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        """Stream the answer: chunks are decoded as they arrive, never all held at once."""
        chunks = self._stub.Query(pb.QueryRequest(sql=sql), metadata=self._metadata)
        reader = self._call(lambda: pa.ipc.open_stream(_ChunkReader(c.arrow_ipc for c in chunks)))
        while True:
            try:
                batch = self._call(reader.read_next_batch)
            except StopIteration:
                return
            yield batch

    def _children(self, fn: Callable[[], pb.ChildrenReply]) -> list[dict[str, Any]]:
        reply = self._call(fn)
        return list(json.loads(reply.json))

    def add_child(self, code: str, address: str) -> list[dict[str, Any]]:
        request = pb.ChildRequest(code=code, address=address)
        return self._children(
            lambda: self._stub.AddChild(request, metadata=self._metadata, timeout=30)
        )

    def remove_child(self, code: str) -> list[dict[str, Any]]:
        request = pb.ChildRequest(code=code)
        return self._children(
            lambda: self._stub.RemoveChild(request, metadata=self._metadata, timeout=30)
        )

    def list_children(self) -> list[dict[str, Any]]:
        return self._children(
            lambda: self._stub.ListChildren(
                pb.ListChildrenRequest(), metadata=self._metadata, timeout=30
            )
        )

    def call(self, method: str, args: dict[str, Any]) -> Any:
        request = pb.CallRequest(method=method, args_json=to_json(args))
        # No deadline: a write may wait behind a long import, and a client that gave up
        # would report a failure for a change that then commits.
        reply = self._call(lambda: self._stub.Call(request, metadata=self._metadata))
        return json.loads(reply.result_json)

    def close(self) -> None:
        self._channel.close()
