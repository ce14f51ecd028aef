"""The parent's side of each parent–child link: a subscribe stream with scheduled pulls
as the fallback, applying each group of windows and the checkpoint in one transaction.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pyarrow as pa

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.config import Child, NodeConfig
from node.errors import UserError
from node.federation.servicer import MAX_WINDOW_BYTES
from node.model.files import check_document
from node.quality.report import check_report_document
from node.security.audit import ChildAuditor
from node.security.grants import check_request
from node.security.identity import (
    QuietRefusal,
    Refusals,
    Security,
    SecurityMode,
    load_security,
    open_channel,
    verify_child,
)
from node.store import IncomingBatch, Store
from node.store.grants import ReturnWindow
from node.store.model import delivery_digest
from node.store.quality import NEVER_SEQ
from node.wire import (
    GRPC_MESSAGE_OPTIONS,
    BatchRejected,
    decode_batch,
    encode_table,
    standard_to_message,
)

log = logging.getLogger(__name__)

# Windows of one grant's slice sent in one round of the return worker, at most.
RETURN_ROUND_WINDOWS = 8

CHANNEL_OPTIONS = [
    *GRPC_MESSAGE_OPTIONS,
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_END = object()
# How long a scheduled job waits for a link's identity checks under way.
TRUST_WAIT_SECONDS = 5.0


@dataclass
class LinkStatus:
    code: str
    address: str
    state: str
    child_head: int | None
    last_heartbeat: float | None
    error: str | None
    # Failed sessions (connect, identity check, stream or apply) since this node started.
    pull_errors: int = 0


class ChildLink:
    """Pulls one child's changes: `streaming` while subscribed, `polling` when the
    scheduler pulls because the stream is down, `down` when neither reaches the child."""

    def __init__(
        self, child: Child, config: NodeConfig, store: Store, security: Security | None = None
    ) -> None:
        self.child = child
        self._config = config
        self._store = store
        self._security = security or load_security(config)
        # With mTLS the channel accepts only a certificate naming this child's code.
        self._channel = open_channel(self._security, child.address, child.code, CHANNEL_OPTIONS)
        # Why this child may not be pulled from now (its certificate was revoked), if so;
        # every later session checks its certificate again anyway.
        self._cut: str | None = None
        # Set by a session whose identity checks passed; pulls outside a session need it
        # (plaintext development mode checks no identity: trusted from the start).
        self._trusted = self._security.mode is SecurityMode.PLAINTEXT_DEV
        # Refused child certificates go to the audit chain (login.refused), each distinct
        # refusal at most once a minute.
        self._refusals = Refusals(lambda kind, detail: store.audit.record(kind, detail))
        self._stub = pb_grpc.FederationStub(self._channel)
        self._session = threading.Lock()
        self._stopping = threading.Event()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._last_ack = 0.0
        self._last_ack_sent = 0.0
        self._acked = -1
        # Per downward delivery (standards, model, discrepancies): the generation last
        # delivered, and when a failed delivery may be retried.
        self._delivered: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        # The rule library the child applies from us: its digest, and from which sequence
        # of the child's log every row passed it ("" and never: unknown).
        self._child_rules: tuple[str, int] = ("", NEVER_SEQ)
        self._quality_problem: str | None = None
        # Return flows (grants given to this child), sent by their own worker thread
        # (never on the apply path): per grant, the sequence of our log through which the
        # child holds the slice (as it last said, or as its receipts said since), whether
        # that is known yet, and when a window last left; the worker wakes when our head
        # moves or `_returns_wake` is set. `_grant_round`: one requests pull / grants
        # delivery at a time.
        self._returned: dict[str, int] = {}
        self._returns_known = False
        self._returns_sent_at: dict[str, float] = {}
        self._returns_wake = threading.Event()
        self._returns_thread: threading.Thread | None = None
        self._active_grants: tuple[int, list[dict[str, Any]]] = (-1, [])
        self._grant_round = threading.Lock()
        # Per grant, the return-flow problem last logged (each logged once, not every round).
        self._grant_problems: dict[str, str] = {}
        # The DeliverReturn call in flight, cancelled by stop() and cut().
        self._return_call: Any = None
        self.state = "connecting"
        self.child_head: int | None = None
        self.last_heartbeat: float | None = None
        self.error: str | None = None
        self.pull_errors = 0
        # Structured-log fields of every line about this link.
        self._log = {"child": child.code}
        store.ensure_link(child.code)
        self._auditor = ChildAuditor(
            child.code, config.code, store, config.sync.audit_recheck_seconds
        )

    # ----- control -----------------------------------------------------------------

    def start(self, replacing: ChildLink | None = None) -> None:
        """Start the link's threads; with `replacing` (the stopped link this one replaces),
        each waits for its predecessor's to end first, so one child never has two pullers
        or two return workers, however long the old one takes to finish."""
        old = replacing
        if self._config.sync.subscribe:
            self._thread = threading.Thread(
                target=self._after(old._thread if old else None, self._stream_forever),
                name=f"link-{self.child.code}",
                daemon=True,
            )
            self._thread.start()
        self._returns_thread = threading.Thread(
            target=self._after(old._returns_thread if old else None, self._returns_forever),
            name=f"returns-{self.child.code}",
            daemon=True,
        )
        self._returns_thread.start()

    def _after(
        self, previous: threading.Thread | None, run: Callable[[], None]
    ) -> Callable[[], None]:
        def body() -> None:
            if previous is not None:
                previous.join()
            if not self._stopping.is_set():
                run()

        return body

    def cut(self, reason: str) -> None:
        """End the current session now (a revoked certificate); the next one re-checks."""
        # Set before the calls are read: a session or return publishing its call after
        # this sees the cut (_pull_session, _deliver_return) and ends it itself.
        self._cut = reason
        self._trusted = False
        for call in (self._call, self._return_call):
            if call is not None:
                call.cancel()

    def stop(self) -> None:
        """Stop pulling; an apply in progress finishes (it holds the store's writer)."""
        self._stopping.set()
        for call in (self._call, self._return_call):
            if call is not None:
                call.cancel()
        self._returns_wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._returns_thread is not None:
            self._returns_thread.join(timeout=10)
        self._channel.close()
        self.state = "stopped"

    def status(self) -> LinkStatus:
        return LinkStatus(
            code=self.child.code,
            address=self.child.address,
            state=self.state,
            child_head=self.child_head,
            last_heartbeat=self.last_heartbeat,
            error=self.error,
            pull_errors=self.pull_errors,
        )

    # ----- pulling -----------------------------------------------------------------

    def _stream_forever(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            ok = False
            try:
                with self._session:
                    if self._stopping.is_set():
                        break
                    ok = self._pull_session(follow=True)
            except Exception:  # the stream thread must outlive any one bad session
                log.exception(
                    "child %s: link session failed unexpectedly", self.child.code, extra=self._log
                )
                self._trusted = False
            if ok:
                backoff = 0.2
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, max(self._config.sync.pull_interval_seconds, 1.0))

    def poll(self) -> None:
        """Scheduled job: pull once if the stream is not up; otherwise just acknowledge."""
        if self._stopping.is_set():
            return
        if self.state == "streaming":
            self._acknowledge(force=False)
            return
        if not self._session.acquire(blocking=False):
            return
        try:
            if self._pull_session(follow=False):
                self._acknowledge(force=True)
        finally:
            self._session.release()

    def _pull_session(self, follow: bool) -> bool:
        """One PullChanges call until it ends; returns False if it failed."""
        link = self._store.link(self.child.code)
        checkpoint = link.checkpoint if link else 0
        request = pb.PullRequest(
            parent_code=self._config.code,
            after_seq=checkpoint,
            follow=follow,
            max_batch_changes=self._config.sync.batch_changes,
            heartbeat_ms=round(self._config.sync.heartbeat_seconds * 1000),
        )
        received: queue.Queue[Any] = queue.Queue(maxsize=8)
        try:
            self._check_identity()
            call = self._stub.PullChanges(request, timeout=None if follow else 3600)
        except (grpc.RpcError, UserError) as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # a bug or a broken file must not end the link's thread
            if _describe(exc) != self.error:  # with its traceback, once per problem
                log.exception(
                    "child %s: identity check failed unexpectedly",
                    self.child.code,
                    extra=self._log,
                )
            self._failed(exc)
            return False
        self._call = call
        done = threading.Event()
        receiver = threading.Thread(
            target=self._receive,
            args=(call, received, done),
            name=f"recv-{self.child.code}",
            daemon=True,
        )
        receiver.start()
        try:
            # Revoked after the check but before cut() could see the call: end it here.
            if self._cut is not None:
                raise UserError(self._cut)
            self.state = "streaming" if follow else "polling"
            self._apply_stream(received, follow)
            if follow:
                self.state = "reconnecting"
                self._trusted = False  # the next session checks the child again
            elif not self._config.sync.subscribe:
                self.state = "idle"
            self.error = None
            return True
        except grpc.RpcError as exc:
            self._failed(exc)
            return False
        except (BatchRejected, UserError) as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # a link must outlive any one bad session
            log.exception("child %s: pull failed unexpectedly", self.child.code, extra=self._log)
            self._failed(exc)
            return False
        finally:
            done.set()
            call.cancel()
            self._call = None
            receiver.join(timeout=5)

    def _check_identity(self) -> None:
        """Refuse to pull from an address that serves some other node."""
        self._trusted = False
        # Cleared before the register is read: a cut() landing from here on stays set.
        self._cut = None
        # The child's certificate: names it, issued here, not revoked (mTLS only).
        verify_child(self._security, self.child.code, self.child.address, refusals=self._refusals)
        info = self._stub.GetInfo(pb.GetInfoRequest(caller_code=self._config.code), timeout=5)
        if info.code != self.child.code:
            raise UserError(
                f"child {self.child.code}: {self.child.address} serves node {info.code} "
                f"({info.name}), not {self.child.code}; fix the address with `children add`"
            )
        known = self._store.link_node_id(self.child.code)
        if known is None:
            self._store.set_link_node_id(self.child.code, info.node_id)
        elif known != info.node_id:
            raise UserError(
                f"child {self.child.code}: its store was replaced (node id {known} is now "
                f"{info.node_id}); its change log restarted, so pulling on would skip or shadow "
                "its changes — refusing until the link is reset"
            )
        if self._cut is not None:  # revoked while we checked
            raise UserError(self._cut)
        # Trusted only now that it is the child we know (scheduled pulls need it); before
        # the deliveries below, which neither need it nor may keep those jobs from running.
        self._trusted = True
        if self._cut is not None:  # cut() between the check above and the line above
            self._trusted = False
            raise UserError(self._cut)
        self._pull_model(info.model_digest)
        self._child_rules = (info.rules_digest, info.rules_since_seq)
        self._deliver_downward(info)
        # Grant requests up and grants down (cheap, skipped if a round is on); the return
        # flows themselves leave from their worker, never from here.
        self._take_grant_info(info)

    def _pull_model(self, child_digest: str) -> None:
        """Upward, pulled: keep the child's model (its proposal) when it changed."""
        models = self._store.models
        if child_digest == models.child_model_digest(self.child.code):
            return
        try:
            reply = self._stub.GetModel(
                pb.GetModelRequest(caller_code=self._config.code), timeout=10
            )
            # Checked like a model file: calibration and diffs read its names.
            where = f"model of child {self.child.code}"
            model = check_document(json.loads(reply.model_json), where)
        except (grpc.RpcError, ValueError, UserError) as exc:
            log.warning(
                "child %s: pulling its model failed: %s",
                self.child.code,
                _describe(exc) if isinstance(exc, grpc.RpcError) else exc,
                extra=self._log,
            )
            return
        models.save_child_model(self.child.code, model)
        log.info("child %s: works with model %s", self.child.code, model.label(), extra=self._log)

    def _await_trust(self, timeout: float = TRUST_WAIT_SECONDS) -> bool:
        """For scheduled jobs that talk to the child: whether a session's identity checks
        have passed, waiting a little for one under way (a job that fires at a link's
        start would otherwise skip its first run and wait a whole period)."""
        deadline = time.monotonic() + timeout
        while not self._trusted:
            if self._stopping.is_set() or time.monotonic() >= deadline:
                return False
            self._stopping.wait(0.05)
        return not self._stopping.is_set()

    def anchor_audit(self) -> None:
        """Scheduled job, upward: verify the child's new audit entries and record its head
        in this node's own chain (node/security/audit.py). Off the apply path."""
        if not self._await_trust():
            return
        try:
            self._auditor.run(self._stub)
        except UserError as exc:
            log.warning("child %s: %s", self.child.code, exc, extra=self._log)

    def pull_quality(self) -> None:
        """Scheduled job, upward: the child's quality report (its subtree's scores), so
        scores roll up county → city → province. Off the apply path: a child computing
        its report never delays its changes."""
        if not self._await_trust():
            return
        scores = self._store.scores
        try:
            reply = self._stub.GetQuality(
                pb.GetQualityRequest(caller_code=self._config.code), timeout=10
            )
            if reply.digest == scores.child_report_digest(self.child.code):
                return
            report = check_report_document(reply.report_json, self.child.code)
        except (grpc.RpcError, UserError, RecursionError) as exc:
            problem = _describe(exc)
            if problem != self._quality_problem:  # once per problem, not every period
                log.warning(
                    "child %s: pulling its quality report failed: %s",
                    self.child.code,
                    problem,
                    extra=self._log,
                )
            self._quality_problem = problem
            return
        self._quality_problem = None
        scores.save_child_report(self.child.code, report, reply.digest)

    def _deliver_downward(self, info: pb.NodeInfo | None = None) -> None:
        """Downward on the same link: this node's standard items, its model (with its
        names for the child's), its rule library, and the discrepancies and feedback items
        about the child's subtree, each when the child's copy differs. Called at every
        connection (with the digests the child reports) and, while streaming, whenever one
        of them changed here."""
        store = self._store
        self._deliver(
            "standards",
            store.catalog.standards_generation,
            info.standards_digest if info else None,
            self._send_standards,
        )
        self._deliver(
            "model",
            store.models.generation,
            info.parent_model_digest if info else None,
            self._send_model,
        )
        self._deliver(
            "discrepancies",
            store.sources.generation,
            info.discrepancies_digest if info else None,
            self._send_discrepancies,
        )
        self._deliver(
            "rules",
            store.quality.generation,
            info.rules_digest if info else None,
            self._send_rules,
        )
        self._deliver(
            "feedback",
            store.feedback.generation,
            info.feedback_digest if info else None,
            self._send_feedback,
        )

    def _deliver(
        self,
        kind: str,
        generation: int,
        child_digest: str | None,
        send: Callable[[str | None], None],
    ) -> None:
        if child_digest is None and (
            generation == self._delivered.get(kind)
            or time.monotonic() < self._retry_at.get(kind, 0.0)
        ):
            return
        try:
            send(child_digest)
            self._delivered[kind] = generation
        except grpc.RpcError as exc:
            # Retried at the next connection or after a pause; data keeps flowing.
            self._retry_at[kind] = time.monotonic() + 30
            log.warning(
                "child %s: delivering %s failed: %s",
                self.child.code,
                kind,
                _describe(exc),
                extra=self._log,
            )

    # ----- grants and return flows ----------------------------------------------------

    def sync_grants(self) -> None:
        """Scheduled job: the child's new grant requests and its return checkpoints (the
        change stream carries neither) and the grants decided here; then the return
        worker is woken to send the slices the child lacks."""
        if self._stopping.is_set() or not self._trusted:
            return
        try:
            info = self._stub.GetInfo(pb.GetInfoRequest(caller_code=self._config.code), timeout=5)
        except grpc.RpcError as exc:
            log.debug("child %s: grant check failed: %s", self.child.code, _describe(exc))
            return
        if info.code == self.child.code:
            self._take_grant_info(info)

    def _take_grant_info(self, info: pb.NodeInfo) -> None:
        """Pull the child's requests when their digest changed and deliver the grants
        decided here when the child's differ (skipped while another thread is on it);
        note the child's return checkpoints and wake the return worker."""
        if self._grant_round.acquire(blocking=False):
            try:
                self._pull_grant_requests(info.grant_requests_digest)
                self._deliver(
                    "grants",
                    self._store.grants.generation,
                    info.grants_digest,
                    self._send_grants,
                )
            except Exception:  # grants must never take the change stream down with them
                log.exception("child %s: grants round failed", self.child.code, extra=self._log)
            finally:
                self._grant_round.release()
        # The child is the authority on what it holds; a checkpoint older than one a
        # receipt gave since only makes the next window overlap (taken idempotently).
        self._returned = {c.grant_id: c.seq for c in info.return_checkpoints}
        self._returns_known = True
        self._returns_wake.set()

    def _returns_forever(self) -> None:
        """The return worker: a round whenever our head moved (a change may enter or
        leave a slice), the grants decided here changed, or it was woken; at most a few
        rounds a second, so slices stay in step within about a second."""
        seen = (-1, -1)
        while not self._stopping.is_set():
            head = self._store.wait_for_head(seen[0], 0.5)
            if self._stopping.is_set():
                break
            moment = (head, self._store.grants.generation)
            if moment == seen and not self._returns_wake.is_set():
                if self._store.db.closed:
                    self._stopping.wait(0.5)
                continue
            self._returns_wake.clear()
            seen = moment
            try:
                more = self._returns_round()
            except Exception:  # the worker must outlive any one bad round
                log.exception(
                    "child %s: return flow round failed", self.child.code, extra=self._log
                )
                more = False
            if more:
                self._returns_wake.set()  # capped: go on after a breath
            self._stopping.wait(0.2)

    def _active_for_child(self) -> list[dict[str, Any]]:
        """Grants in force for the child, re-read only when the grants changed here."""
        grants = self._store.grants
        generation, active = self._active_grants
        if generation != grants.generation:
            generation = grants.generation
            active = grants.active_for(self.child.code)
            self._active_grants = (generation, active)
        now = datetime.now(UTC)
        return [g for g in active if g["expires_at"] > now]

    def _returns_round(self) -> bool:
        """One round: for each grant in force, the windows of its slice after the child's
        checkpoint, at most RETURN_ROUND_WINDOWS each. A window with no rows is sent only
        to keep the child's checkpoint from lagging far (a full window of changes, or a
        minute). Checked before every window (expired or revoked: nothing more leaves).
        Returns True if a grant has more to send now."""
        if self._stopping.is_set() or not self._trusted or not self._returns_known:
            return False
        active = self._active_for_child()
        if not active:
            return False
        store = self._store
        grants = store.grants
        # A grant is delivered before any window of it (the child refuses otherwise).
        self._deliver("grants", grants.generation, None, self._send_grants)
        batch = self._config.sync.batch_changes
        more = False
        for grant in active:
            grant_id = grant["id"]
            at = self._returned.get(grant_id, 0)
            if 0 < at < store.compacted_through():
                at = 0  # deletes since `at` are compacted away: the whole slice again
            first, windows, rows, departures = at, 0, 0, 0
            try:
                # Before every window: still trusted, not cut, the grant still in force.
                while (
                    not self._stopping.is_set()
                    and self._trusted
                    and self._cut is None
                    and grants.in_force(grant_id)
                ):
                    if windows >= RETURN_ROUND_WINDOWS:
                        more = True
                        break
                    found = grants.next_window(grant, at, batch, MAX_WINDOW_BYTES)
                    if found is None:
                        break
                    window, payload = found
                    quiet = time.monotonic() - self._returns_sent_at.get(grant_id, 0.0)
                    if not window.table.num_rows and (
                        window.last_seq - window.after_seq < batch and quiet < 60
                    ):
                        break  # nothing for this slice: the checkpoint may lag a little
                    if not grants.note_sending(window):
                        break  # revoked or expired since the check above: nothing leaves
                    seq = self._deliver_return(window, payload)
                    # Sent: counted now, whatever fails after (the evidence covers it).
                    windows += 1
                    rows += window.live
                    departures += window.departures
                    self._returns_sent_at[grant_id] = time.monotonic()
                    moved = seq > window.after_seq  # from 0 when sent again
                    if moved:
                        at = seq
                    grants.confirm_return(window, seq)
                    self._returned[grant_id] = seq
                    if not moved:
                        break  # the child did not move on: ask again next round
                self._grant_problems.pop(grant_id, None)
            except Exception as exc:  # one grant's failure never stops the others
                if not self._stopping.is_set() and self._cut is None:
                    self._grant_failed(grant_id, exc)
            finally:
                if rows or departures:
                    self._record_sent(grant, first, at, rows, departures, windows)
        return more

    def _deliver_return(self, window: ReturnWindow, payload: bytes) -> int:
        """One window to the child; returns the sequence it holds the slice through. The
        call is published first, so stop() and cut() can cancel it while in flight."""
        call = self._stub.DeliverReturn.future(
            pb.ReturnDelivery(
                parent_code=self._config.code,
                grant_id=window.grant_id,
                after_seq=window.after_seq,
                last_seq=window.last_seq,
                entity=window.entity,
                arrow_ipc=payload,
                rows=window.table.num_rows,
            ),
            timeout=30,
        )
        self._return_call = call
        try:
            if self._stopping.is_set() or self._cut is not None:
                call.cancel()  # stop() or cut() came before the call was published
            return int(call.result().seq)
        finally:
            self._return_call = None

    def _grant_failed(self, grant_id: str, exc: BaseException) -> None:
        """Log a grant's return-flow failure once per problem, not every round."""
        expected = isinstance(exc, grpc.RpcError | UserError)
        problem = f"grant {grant_id}: return flow failed: {_describe(exc)}"
        if not expected:
            problem = f"{problem} ({type(exc).__name__})"
        if problem == self._grant_problems.get(grant_id):
            return
        self._grant_problems[grant_id] = problem
        if expected:
            log.warning("child %s: %s", self.child.code, problem, extra=self._log)
        else:
            log.exception("child %s: %s", self.child.code, problem, extra=self._log)

    def _record_sent(
        self, grant: dict[str, Any], first: int, at: int, rows: int, departures: int, windows: int
    ) -> None:
        try:
            self._store.grants.record_sent(
                grant, self.child.code, first, at, rows, departures, windows
            )
        except Exception:  # logged with what was sent, so the evidence is not lost silently
            log.exception(
                "child %s: grant %s: could not record sending %d rows and %d departures "
                "(seq %d to %d) in the audit chain",
                self.child.code,
                grant["id"],
                rows,
                departures,
                first,
                at,
                extra=self._log,
            )
            return
        log.info(
            "child %s: grant %s: sent %d rows and %d departures, held through seq %d",
            self.child.code,
            grant["id"],
            rows,
            departures,
            at,
            extra=self._log,
        )

    def _pull_grant_requests(self, child_digest: str) -> None:
        """Upward, pulled: the child's requests addressed to us, when they changed."""
        grants = self._store.grants
        if child_digest == grants.child_requests_digest(self.child.code):
            return
        try:
            reply = self._stub.GetGrantRequests(
                pb.GetGrantRequestsRequest(caller_code=self._config.code), timeout=10
            )
            added, problems = grants.receive_requests(
                self.child.code,
                reply.requests_json,
                reply.digest,
                functools.partial(check_request, self._store, self.child.code),
            )
        except (grpc.RpcError, UserError) as exc:
            log.warning(
                "child %s: pulling its grant requests failed: %s",
                self.child.code,
                _describe(exc),
                extra=self._log,
            )
            return
        for problem in problems:
            log.warning("child %s: grant requests: %s", self.child.code, problem, extra=self._log)
        if added:
            log.info(
                "child %s: %d new grant requests (`tongyuan grant list`)",
                self.child.code,
                added,
                extra=self._log,
            )

    def _send_grants(self, child_digest: str | None) -> None:
        digest, grants_json = self._store.grants.downward_set(self.child.code)
        if digest == child_digest:
            return
        self._stub.DeliverGrants(
            pb.GrantsDelivery(
                parent_code=self._config.code, grants_json=grants_json, digest=digest
            ),
            timeout=10,
        )
        log.info("child %s: delivered its grants", self.child.code, extra=self._log)

    def _send_standards(self, child_digest: str | None) -> None:
        digest, items = self._store.catalog.downward_set()
        if digest == child_digest:
            return
        self._stub.DeliverStandards(
            pb.StandardsDelivery(
                parent_code=self._config.code,
                digest=digest,
                items=[standard_to_message(i) for i in items],
            ),
            timeout=10,
        )
        log.info(
            "child %s: delivered %d standard items", self.child.code, len(items), extra=self._log
        )

    def _send_model(self, child_digest: str | None) -> None:
        model = self._store.model
        mapping = self._store.models.child_mapping(self.child.code)
        digest = delivery_digest(model, mapping)
        if digest == child_digest:
            return
        self._stub.DeliverModel(
            pb.ModelDelivery(
                parent_code=self._config.code,
                model_json=model.to_json(),
                mapping_json=json.dumps(mapping.document(), ensure_ascii=False),
                digest=digest,
            ),
            timeout=10,
        )
        log.info("child %s: offered model %s", self.child.code, model.label(), extra=self._log)

    def _send_discrepancies(self, child_digest: str | None) -> None:
        digest, table = self._store.sources.downward_set(self.child.code)
        self._send_set(
            "discrepancies", child_digest, digest, table, self._stub.DeliverDiscrepancies,
            pb.DiscrepancyDelivery,
        )  # fmt: skip

    def _send_set(
        self,
        what: str,
        child_digest: str | None,
        digest: str,
        table: pa.Table,
        deliver: Callable[..., Any],
        message: Callable[..., Any],
    ) -> None:
        """Deliver a set about the child's subtree as Arrow IPC, unless it holds it already."""
        if digest == child_digest:
            return
        deliver(
            message(
                parent_code=self._config.code,
                arrow_ipc=encode_table(table),
                rows=table.num_rows,
                digest=digest,
            ),
            timeout=10,
        )
        log.info(
            "child %s: delivered %d %s about its subtree",
            self.child.code,
            table.num_rows,
            what,
            extra=self._log,
        )

    def _send_rules(self, child_digest: str | None) -> None:
        digest, library_json = self._store.quality.downward_library()
        if digest == child_digest:
            return
        receipt = self._stub.DeliverRules(
            pb.RulesDelivery(
                parent_code=self._config.code, library_json=library_json, digest=digest
            ),
            timeout=10,
        )
        # The child screens with it what it logs after `since_seq` (QualityStore.must_screen).
        self._child_rules = (digest, receipt.since_seq)
        log.info("child %s: delivered the rule library", self.child.code, extra=self._log)

    def _send_feedback(self, child_digest: str | None) -> None:
        digest, table = self._store.feedback.downward_set(self.child.code)
        self._send_set(
            "feedback items", child_digest, digest, table, self._stub.DeliverFeedback,
            pb.FeedbackDelivery,
        )  # fmt: skip

    @staticmethod
    def _receive(call: Any, received: queue.Queue[Any], done: threading.Event) -> None:
        """Read the stream into a bounded queue (back-pressure) until the session ends."""

        def put(item: Any) -> bool:
            while not done.is_set():
                try:
                    received.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for message in call:
                if not put(message):
                    return
            put(_END)
        except Exception as exc:  # RpcError or a broken message: the applier reports it
            put(exc)

    def _apply_stream(self, received: queue.Queue[Any], follow: bool) -> None:
        silence = max(3 * self._config.sync.heartbeat_seconds, 2.0) if follow else 600.0
        max_rows = self._config.sync.apply_max_rows
        pending: Any = None
        while not self._stopping.is_set():
            if pending is None:
                try:
                    pending = received.get(timeout=silence)
                except queue.Empty:
                    raise UserError(
                        f"child {self.child.code}: no data or heartbeat for {silence:.0f}s"
                    ) from None
            item, pending = pending, None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            group = [self._decode(item)]
            rows = group[0].rows
            while rows < max_rows and len(group) < 64:
                try:
                    nxt = received.get_nowait()
                except queue.Empty:
                    break
                if nxt is _END or isinstance(nxt, BaseException):
                    pending = nxt
                    break
                batch = self._decode(nxt)
                group.append(batch)
                rows += batch.rows
            self._apply(group)

    def _decode(self, message: pb.ChangeBatch) -> IncomingBatch:
        return decode_batch(message, self._store.log_entities, self.child.code)

    def _apply(self, group: list[IncomingBatch]) -> None:
        if self._cut is not None:  # revoked: nothing more of this child's is applied
            raise UserError(self._cut)
        self._deliver_downward()
        if group[-1].model_digest:
            self._pull_model(group[-1].model_digest)
        last = group[-1]
        self.child_head = last.head_seq
        self.last_heartbeat = time.time()
        self.error = None
        if any(b.last_seq > b.after_seq for b in group):
            result = self._store.apply_batches(
                self.child.code,
                self._config.code,
                group,
                screen=self._store.quality.must_screen(
                    self._child_rules[0], self._child_rules[1], group[0].after_seq
                ),
            )
            if result.applied:
                log.debug(
                    "child %s: applied %d of %d rows, checkpoint %d",
                    self.child.code,
                    result.applied,
                    result.received,
                    result.checkpoint,
                    extra={
                        **self._log,
                        "batch": {"after_seq": group[0].after_seq, "last_seq": last.last_seq},
                    },
                )
        self._acknowledge(force=False)

    def _acknowledge(self, force: bool) -> None:
        """Tell the child how far we have applied: when it moved, and at least every
        minute (the child counts a parent silent for long as gone when compacting)."""
        now = time.monotonic()
        if not force and now - self._last_ack < self._config.sync.ack_interval_seconds:
            return
        link = self._store.link(self.child.code)
        unchanged = link is not None and link.checkpoint == self._acked
        if link is None or (unchanged and not force and now - self._last_ack_sent < 60):
            self._last_ack = now
            return
        try:
            self._stub.Acknowledge(
                pb.AckRequest(parent_code=self._config.code, applied_seq=link.checkpoint),
                timeout=5,
            )
            self._acked = link.checkpoint
            self._last_ack_sent = now
        except grpc.RpcError as exc:
            log.debug(
                "child %s: acknowledge failed: %s",
                self.child.code,
                _describe(exc),
                extra=self._log,
            )
        self._last_ack = now

    def _failed(self, exc: BaseException) -> None:
        self._trusted = False  # unchecked until a session's checks pass again
        if self._stopping.is_set():
            return
        message = self._cut or _describe(exc)
        changed = message != self.error
        self.state = "down"
        self.error = message
        self.pull_errors += 1
        if not isinstance(exc, grpc.RpcError | QuietRefusal):
            log.warning("child %s: %s", self.child.code, message, extra=self._log)
            self._store.record_link_error(self.child.code, message)
        elif changed:
            log.info("child %s unreachable: %s", self.child.code, message, extra=self._log)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return f"{code.name if code else 'RPC error'}: {details}"
    return str(exc)


class LinkManager:
    """All of a parent's child links; children can be added and removed while serving."""

    def __init__(self, config: NodeConfig, store: Store, security: Security | None = None) -> None:
        self._config = config
        self._store = store
        self._security = security or load_security(config)
        self._links: dict[str, ChildLink] = {}
        self._lock = threading.Lock()
        self._on_change: list[Callable[[str, ChildLink | None], None]] = []

    def on_change(self, callback: Callable[[str, ChildLink | None], None]) -> None:
        self._on_change.append(callback)

    def start(self, children: tuple[Child, ...]) -> None:
        for child in children:
            self.add(child)

    def add(self, child: Child) -> None:
        with self._lock:
            old = self._links.pop(child.code, None)
        if old is not None:
            old.stop()
        link = ChildLink(child, self._config, self._store, self._security)
        with self._lock:
            self._links[child.code] = link
        link.start(replacing=old)
        for callback in self._on_change:
            callback(child.code, link)

    def remove(self, code: str) -> bool:
        with self._lock:
            link = self._links.pop(code, None)
        if link is None:
            return False
        link.stop()
        for callback in self._on_change:
            callback(code, None)
        return True

    def cut(self, code: str, reason: str) -> bool:
        """End a child's current session at once (its certificate was revoked)."""
        with self._lock:
            link = self._links.get(code)
        if link is None:
            return False
        link.cut(reason)
        return True

    def statuses(self) -> dict[str, LinkStatus]:
        with self._lock:
            links = list(self._links.values())
        return {link.child.code: link.status() for link in links}

    def stop(self) -> None:
        with self._lock:
            links = list(self._links.values())
            self._links.clear()
        for link in links:
            link.stop()
