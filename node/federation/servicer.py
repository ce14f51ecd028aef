"""The Federation service a node serves to its parent: info, change windows, acks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pyarrow as pa

from node import __version__
from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.catalog.standards import digest
from node.config import NodeConfig
from node.divisions import is_within, lookup_division
from node.errors import UserError
from node.model.files import check_document, check_mapping_document
from node.quality.report import QualityReporter
from node.security.audit import (
    HASH_SEGMENT_ROWS,
    SEGMENT_ROWS,
    ServedRecord,
    received,
    rules_in,
)
from node.store import Store
from node.store.audit import Evidence
from node.store.feedback import FEEDBACK_SCHEMA
from node.store.grants import ReturnRefused
from node.store.model import delivery_digest
from node.store.sources import DISCREPANCY_SCHEMA
from node.store.sources import delivery_digest as delivery_digest_of
from node.wire import decode_table, encode_table, encode_window, standard_from_message

log = logging.getLogger(__name__)

# How a refused return-flow delivery is answered (node/store/grants.py ReturnRefused).
_REFUSAL_CODES = {
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "outside": grpc.StatusCode.PERMISSION_DENIED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
}
# Bounds on one window whatever a parent asks for: memory on both ends stays bounded.
MAX_WINDOW_CHANGES = 262144
MAX_WINDOW_BYTES = 64 * 1024 * 1024


def _within(code: str, ancestor: str) -> bool:
    """`code` is `ancestor` or below it; False for anything not a division code."""
    try:
        return is_within(code, ancestor)
    except UserError:
        return False


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        stopping: threading.Event,
        reporter: QualityReporter,
    ) -> None:
        self._config = config
        self._store = store
        self._reporter = reporter
        self._stopping = stopping
        self._acks: dict[str, tuple[int, float]] = {}
        self._node_id = store.identity().node_id
        self._ack_lock = threading.Lock()

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        audit_head = self._store.audit.head()
        return pb.NodeInfo(
            code=self._config.code,
            name=self._config.name,
            tier=self._config.tier.value,
            head_seq=self._store.head_seq,
            version=__version__,
            node_id=self._node_id,
            compacted_through=self._store.compacted_through(),
            standards_digest=self._store.catalog.received_digest(request.caller_code),
            model_digest=self._store.model_digest,
            parent_model_digest=self._store.models.offered_digest(request.caller_code),
            discrepancies_digest=self._store.sources.received_digest(request.caller_code),
            rules_digest=self._store.quality.received_digest(request.caller_code),
            rules_since_seq=self._store.quality.received_since(request.caller_code),
            feedback_digest=self._store.feedback.received_digest(request.caller_code),
            audit_head_seq=audit_head.seq,
            audit_head_hash=audit_head.hash,
            audit_public_key=self._store.audit.public_key(),
            grant_requests_digest=self._store.grants.requests_digest(request.caller_code),
            grants_digest=self._store.grants.received_digest(request.caller_code),
            return_checkpoints=[
                pb.ReturnCheckpoint(grant_id=grant_id, seq=seq)
                for grant_id, seq in self._store.grants.return_checkpoints(request.caller_code)
            ],
            entities=[
                pb.EntitySchema(name=e.name, key=e.key, columns=list(e.column_names))
                for e in self._store.entities.values()
            ],
        )

    def _check_parent(self, code: str, context: grpc.ServicerContext) -> None:
        try:
            lookup_division(code)
        except UserError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"parent_code: {exc}")

    def _note_ack(self, parent: str, seq: int) -> None:
        """Persist a parent's ack when it moved, or at most once a minute otherwise."""
        now = time.monotonic()
        with self._ack_lock:
            previous = self._acks.get(parent)
            if previous and previous[0] == seq and now - previous[1] < 60:
                return
            self._acks[parent] = (seq, now)
        self._store.record_parent_ack(parent, seq)

    def Acknowledge(self, request: pb.AckRequest, context: grpc.ServicerContext) -> pb.AckReply:
        self._check_parent(request.parent_code, context)
        if request.applied_seq > self._store.head_seq:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"ack {request.applied_seq} is beyond this node's head {self._store.head_seq}",
            )
        self._note_ack(request.parent_code, request.applied_seq)
        return pb.AckReply(head_seq=self._store.head_seq)

    def PullChanges(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ChangeBatch]:
        self._check_parent(request.parent_code, context)
        after = request.after_seq
        head = self._store.head_seq
        if after > head:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"parent {request.parent_code} asks for changes after {after}, but node "
                f"{self._config.code} has only {head}: was this node's store replaced?",
            )
        compacted = self._store.compacted_through()
        if 0 < after < compacted:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"parent {request.parent_code} is at seq {after}, but node {self._config.code} "
                f"has compacted deletes through seq {compacted}: the parent may hold records "
                "deleted here and needs a full resync",
            )
        self._note_ack(request.parent_code, after)
        window_size = min(
            request.max_batch_changes or self._config.sync.batch_changes, MAX_WINDOW_CHANGES
        )
        # What was served is evidenced in the audit chain once per session (and at most
        # every minute while it streams), not per window.
        served = ServedRecord(self._store, request.parent_code)
        try:
            yield from self._stream_windows(request, context, after, window_size, served)
        finally:
            served.flush()

    def _stream_windows(
        self,
        request: pb.PullRequest,
        context: grpc.ServicerContext,
        after: int,
        window_size: int,
        served: ServedRecord,
    ) -> Iterator[pb.ChangeBatch]:
        heartbeat = (
            request.heartbeat_ms / 1000
            if request.heartbeat_ms
            else self._config.sync.heartbeat_seconds
        )
        head = self._store.head_seq
        last_sent = time.monotonic()
        log.info(
            "parent %s pulls after seq %d (follow=%s, head %d)",
            request.parent_code,
            after,
            request.follow,
            head,
            extra={"parent": request.parent_code},
        )
        while context.is_active() and not self._stopping.is_set():
            window = self._store.read_window(after, window_size)
            if window.last_seq > after:
                message = encode_window(window)
                # Wide rows: halve the window until the message fits comfortably.
                while message.ByteSize() > MAX_WINDOW_BYTES and window.last_seq - after > 1:
                    window_size = max(1, (window.last_seq - after) // 2)
                    window = self._store.read_window(after, window_size)
                    message = encode_window(window)
                yield message
                rows = sum(t.num_rows for t in window.tables.values())
                served.served(after, window.last_seq, rows)
                after = window.last_seq
                last_sent = time.monotonic()
                continue
            if not request.follow:
                return
            wait = max(0.0, heartbeat - (time.monotonic() - last_sent))
            if self._store.wait_for_head(after, wait) > after:
                continue
            if time.monotonic() - last_sent >= heartbeat:
                yield pb.ChangeBatch(
                    after_seq=after,
                    last_seq=after,
                    head_seq=self._store.head_seq,
                    sent_at_us=time.time_ns() // 1000,
                    model_digest=self._store.model_digest,
                )
                last_sent = time.monotonic()

    def _check_above(self, parent: str, context: grpc.ServicerContext) -> None:
        self._check_parent(parent, context)
        if parent == self._config.code or not is_within(self._config.code, parent):
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {parent} is not above node {self._config.code}",
            )

    def GetModel(
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.ModelDocument:
        self._check_above(request.caller_code, context)
        model = self._store.model
        return pb.ModelDocument(model_json=model.to_json(), digest=model.digest())

    def DeliverModel(
        self, request: pb.ModelDelivery, context: grpc.ServicerContext
    ) -> pb.ModelReceipt:
        """Keep the parent's model (and its names for ours) until the operator adopts it."""
        parent = request.parent_code
        self._check_above(parent, context)
        try:
            # Checked like a model file: its names become SQL identifiers at adoption.
            where = f"model delivered by {parent}"
            model = check_document(json.loads(request.model_json), where)
            mapping = check_mapping_document(json.loads(request.mapping_json or "{}"), model, where)
        except (ValueError, UserError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if delivery_digest(model, mapping) != request.digest:
            context.abort(grpc.StatusCode.DATA_LOSS, "model delivery does not match its digest")
        if self._store.models.offered_digest(parent) != request.digest:
            evidence = received(
                self._store, "model", parent, request.digest, len(model.entities),
                model=model.label(),
            )  # fmt: skip
            self._store.models.receive_offer(parent, model, mapping, request.digest, evidence)
            log.info(
                "parent %s offers model %s%s",
                parent,
                model.label(),
                "" if model.digest() == self._store.model.digest() else " (not adopted yet)",
                extra={"parent": parent},
            )
        return pb.ModelReceipt(digest=request.digest)

    def DeliverDiscrepancies(
        self, request: pb.DiscrepancyDelivery, context: grpc.ServicerContext
    ) -> pb.DiscrepancyReceipt:
        """Take the parent's discrepancies about this node's subtree (they replace its last set)."""
        table = self._receive_set(
            request, context, DISCREPANCY_SCHEMA, "source_node", "discrepancies",
            self._store.sources.received_digest, self._store.sources.replace_received,
        )  # fmt: skip
        return pb.DiscrepancyReceipt(digest=request.digest, rows=table.num_rows)

    def _receive_set(
        self,
        request: pb.DiscrepancyDelivery | pb.FeedbackDelivery,
        context: grpc.ServicerContext,
        schema: pa.Schema,
        owner_column: str,
        what: str,
        received_digest: Callable[[str], str],
        replace_received: Callable[[str, pa.Table, str, Evidence], None],
    ) -> pa.Table:
        """A set about this node's subtree from the parent, as Arrow IPC: refused unless it
        decodes, matches its digest and speaks only of this node and the nodes below."""
        parent = request.parent_code
        self._check_above(parent, context)
        try:
            table = decode_table(request.arrow_ipc).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} delivery: {exc}")
        if delivery_digest_of(table) != request.digest:
            context.abort(grpc.StatusCode.DATA_LOSS, f"{what} do not match their digest")
        outside = [
            s
            for s in table.column(owner_column).to_pylist()
            if not (isinstance(s, str) and _within(s, self._config.code))
        ]
        if outside:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{what} about node {outside[0]}, which is not node {self._config.code} or "
                "below it",
            )
        if received_digest(parent) != request.digest:
            # Evidenced in the same transaction, only when the set changed.
            kind = what.removesuffix(" items")
            evidence = received(self._store, kind, parent, request.digest, table.num_rows)
            replace_received(parent, table, request.digest, evidence)
            log.info(
                "received %d %s from parent %s",
                table.num_rows,
                what,
                parent,
                extra={"parent": parent},
            )
        return table

    def DeliverRules(
        self, request: pb.RulesDelivery, context: grpc.ServicerContext
    ) -> pb.RulesReceipt:
        """Take the parent's rule library; it applies here from the next import or batch."""
        parent = request.parent_code
        self._check_above(parent, context)
        if self._store.quality.received_digest(parent) != request.digest:
            try:
                self._store.quality.receive_library(
                    parent,
                    request.library_json,
                    request.digest,
                    received(
                        self._store, "rules", parent, request.digest,
                        rules_in(request.library_json),
                    ),
                )  # fmt: skip
            except UserError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            log.info("received the rule library of parent %s", parent, extra={"parent": parent})
        since = self._store.quality.received_since(parent)
        return pb.RulesReceipt(digest=request.digest, since_seq=since)

    def DeliverFeedback(
        self, request: pb.FeedbackDelivery, context: grpc.ServicerContext
    ) -> pb.FeedbackReceipt:
        """Take the parent's feedback items about this node's subtree (they replace its last
        set)."""
        table = self._receive_set(
            request, context, FEEDBACK_SCHEMA, "owner_node", "feedback items",
            self._store.feedback.received_digest, self._store.feedback.replace_received,
        )  # fmt: skip
        return pb.FeedbackReceipt(digest=request.digest, rows=table.num_rows)

    def GetGrantRequests(
        self, request: pb.GetGrantRequestsRequest, context: grpc.ServicerContext
    ) -> pb.GrantRequestsDocument:
        """Upward, pulled: this node's requests for return flows addressed to the caller."""
        self._check_above(request.caller_code, context)
        requests_json, requests_digest = self._store.grants.requests_document(request.caller_code)
        return pb.GrantRequestsDocument(requests_json=requests_json, digest=requests_digest)

    def DeliverGrants(
        self, request: pb.GrantsDelivery, context: grpc.ServicerContext
    ) -> pb.GrantsReceipt:
        """Take the parent's decisions on this node's requests (the set replaces the last
        one), grant by grant; a revoked or expired grant's returned rows are purged at
        once, and a grant this node cannot take is marked refused (`grant list`)."""
        parent = request.parent_code
        self._check_above(parent, context)
        if self._store.grants.received_digest(parent) != request.digest:
            try:
                received = self._store.grants.receive_grants(
                    parent, request.grants_json, request.digest
                )
            except ReturnRefused as exc:
                context.abort(_REFUSAL_CODES[exc.reason], str(exc))
            for problem in received.problems:
                log.warning("parent %s: %s", parent, problem, extra={"parent": parent})
            log.info(
                "received %d grants from parent %s", received.count, parent,
                extra={"parent": parent},
            )  # fmt: skip
        return pb.GrantsReceipt(digest=request.digest)

    def DeliverReturn(
        self, request: pb.ReturnDelivery, context: grpc.ServicerContext
    ) -> pb.ReturnReceipt:
        """One window of a granted slice: checked against the grant this node holds (in
        force, no gap, every row inside its filter) and applied with the grant's
        checkpoint in one transaction, or refused whole."""
        parent = request.parent_code
        self._check_above(parent, context)
        try:
            table = decode_table(request.arrow_ipc)
        except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"return flow: {exc}")
        try:
            seq, rows = self._store.grants.apply_return(
                parent, request.grant_id, request.entity, request.after_seq, request.last_seq, table
            )
        except ReturnRefused as exc:
            log.warning("parent %s: %s", parent, exc, extra={"parent": parent})
            context.abort(_REFUSAL_CODES[exc.reason], str(exc))
        if rows:
            log.info(
                "grant %s: %d returned rows from parent %s, held through seq %d",
                request.grant_id,
                rows,
                parent,
                seq,
                extra={"parent": parent},
            )
        return pb.ReturnReceipt(grant_id=request.grant_id, seq=seq)

    def GetAudit(
        self, request: pb.GetAuditRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AuditSegment]:
        """Upward, pulled: this node's audit chain after `after_seq`, in bounded segments,
        for a node above it to verify and anchor in its own chain; with `hashes_only`,
        (seq, prev_hash, hash recomputed from the content) for its periodic re-check."""
        self._check_above(request.caller_code, context)
        audit = self._store.audit
        tables = (
            audit.hash_batches(request.after_seq, HASH_SEGMENT_ROWS)
            if request.hashes_only
            else audit.batches(request.after_seq, SEGMENT_ROWS)
        )
        for table in tables:
            if not context.is_active():
                return
            yield pb.AuditSegment(arrow_ipc=encode_table(table), rows=table.num_rows)

    def GetQuality(
        self, request: pb.GetQualityRequest, context: grpc.ServicerContext
    ) -> pb.QualityDocument:
        """This node's quality report, for a node above it (the only ones that roll it up)."""
        self._check_above(request.caller_code, context)
        report_json, report_digest = self._reporter.document()
        return pb.QualityDocument(report_json=report_json, digest=report_digest)

    def DeliverStandards(
        self, request: pb.StandardsDelivery, context: grpc.ServicerContext
    ) -> pb.StandardsReceipt:
        """Take the parent's standard items; a delivery that does not add up is refused."""
        parent = request.parent_code
        self._check_above(parent, context)
        items = [standard_from_message(i) for i in request.items]
        for item in items:
            # Defined by the parent or a node above it, under its own code prefix.
            if not is_within(parent, item.origin_node) or not item.code.startswith(
                item.origin_node + "-"
            ):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"standard item {item.code} from {item.origin_node} cannot come from {parent}",
                )
        if digest(items) != request.digest:
            context.abort(grpc.StatusCode.DATA_LOSS, "standard items do not match their digest")
        if not context.is_active():
            # The parent gave up (deadline): it delivers again, and an older set must not
            # land after a newer one.
            context.abort(grpc.StatusCode.CANCELLED, "delivery abandoned by the parent")
        if self._store.catalog.received_digest(parent) != request.digest:
            evidence = received(self._store, "standards", parent, request.digest, len(items))
            self._store.catalog.replace_received(parent, items, request.digest, evidence)
        log.info(
            "received %d standard items from parent %s",
            len(items),
            parent,
            extra={"parent": parent},
        )
        return pb.StandardsReceipt(digest=request.digest, items=len(items))
