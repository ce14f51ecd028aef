"""`tongyuan serve`: wires the store, the gRPC servers, the child links and the scheduler,
and shuts them down in order on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from types import FrameType

import grpc
from apscheduler.schedulers.background import BackgroundScheduler
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node._gen.tongyuan.v1 import admin_pb2_grpc, federation_pb2, federation_pb2_grpc
from node.admin import (
    AdminEndpoint,
    AdminServicer,
    ServeLock,
    TokenInterceptor,
    new_token,
    write_endpoint,
)
from node.config import NodeConfig
from node.errors import UserError
from node.federation.links import ChildLink, LinkManager
from node.federation.servicer import FederationServicer
from node.observe.http import HttpEndpoint, Observer
from node.observe.metrics import CONTENT_TYPE, NodeMetrics
from node.observe.view import build_view
from node.security.identity import (
    FederationGuard,
    SecurityMode,
    load_security,
    server_credentials,
)
from node.service import NodeService
from node.store import Store
from node.wire import GRPC_MESSAGE_OPTIONS

log = logging.getLogger(__name__)

FEDERATION_SERVICE = federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name
# Lag samples older than this are dropped (the status page shows the last six hours).
LAG_SAMPLES_KEPT = timedelta(days=7)


class StartingFederation(federation_pb2_grpc.FederationServicer):
    """The Federation service while the store opens (and migrates): UNAVAILABLE until
    `ready` gets the real servicer, so the port can answer health checks meanwhile."""

    def __init__(self) -> None:
        self._servicer: FederationServicer | None = None

    def ready(self, servicer: FederationServicer) -> None:
        self._servicer = servicer

    def _target(self, context: grpc.ServicerContext) -> FederationServicer:
        if self._servicer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "node is starting (opening its store)")
        assert self._servicer is not None
        return self._servicer

    def GetInfo(
        self, request: federation_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> federation_pb2.NodeInfo:
        return self._target(context).GetInfo(request, context)

    def PullChanges(
        self, request: federation_pb2.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.ChangeBatch]:
        return self._target(context).PullChanges(request, context)

    def Acknowledge(
        self, request: federation_pb2.AckRequest, context: grpc.ServicerContext
    ) -> federation_pb2.AckReply:
        return self._target(context).Acknowledge(request, context)

    def DeliverStandards(
        self, request: federation_pb2.StandardsDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.StandardsReceipt:
        return self._target(context).DeliverStandards(request, context)

    def GetModel(
        self, request: federation_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> federation_pb2.ModelDocument:
        return self._target(context).GetModel(request, context)

    def DeliverModel(
        self, request: federation_pb2.ModelDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.ModelReceipt:
        return self._target(context).DeliverModel(request, context)

    def DeliverDiscrepancies(
        self, request: federation_pb2.DiscrepancyDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.DiscrepancyReceipt:
        return self._target(context).DeliverDiscrepancies(request, context)

    def DeliverRules(
        self, request: federation_pb2.RulesDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.RulesReceipt:
        return self._target(context).DeliverRules(request, context)

    def DeliverFeedback(
        self, request: federation_pb2.FeedbackDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.FeedbackReceipt:
        return self._target(context).DeliverFeedback(request, context)

    def GetQuality(
        self, request: federation_pb2.GetQualityRequest, context: grpc.ServicerContext
    ) -> federation_pb2.QualityDocument:
        return self._target(context).GetQuality(request, context)

    def GetGrantRequests(
        self, request: federation_pb2.GetGrantRequestsRequest, context: grpc.ServicerContext
    ) -> federation_pb2.GrantRequestsDocument:
        return self._target(context).GetGrantRequests(request, context)

    def DeliverGrants(
        self, request: federation_pb2.GrantsDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.GrantsReceipt:
        return self._target(context).DeliverGrants(request, context)

    def DeliverReturn(
        self, request: federation_pb2.ReturnDelivery, context: grpc.ServicerContext
    ) -> federation_pb2.ReturnReceipt:
        return self._target(context).DeliverReturn(request, context)

    def GetAudit(
        self, request: federation_pb2.GetAuditRequest, context: grpc.ServicerContext
    ) -> Iterator[federation_pb2.AuditSegment]:
        return self._target(context).GetAudit(request, context)


class NodeServer:
    """A running node. `start()` then `wait()`; `stop()` from any thread or a signal.

    The federation port (with health) comes up first and says NOT_SERVING while the
    store opens and migrates; it says SERVING once `start()` has wired everything, and
    NOT_SERVING again from the moment a stop is asked for."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.serve_lock = ServeLock(config.admin_file.parent)
        self.http: HttpEndpoint | None = None
        try:
            self._open_health()
        except BaseException:
            self.serve_lock.release()
            raise
        try:
            self.store = Store.open(config.store_path, memory_limit=config.store.memory_limit)
        except BaseException:
            self.federation.stop(None)
            self.serve_lock.release()
            raise
        try:
            self._wire()
        except BaseException:
            if self.http is not None:
                self.http.stop()
            self.federation.stop(None)
            self.store.close()
            self.serve_lock.release()
            raise

    def _open_health(self) -> None:
        """Start the federation port with health NOT_SERVING, before the store opens."""
        config = self.config
        # mTLS with an installed identity; plaintext only when the config says so.
        self.security = load_security(config)
        self.guard = FederationGuard(config, self.security)
        self.health = health.HealthServicer()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.federation = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="federation"),
            options=GRPC_MESSAGE_OPTIONS,
            interceptors=[self.guard],
        )
        self.starting_federation = StartingFederation()
        federation_pb2_grpc.add_FederationServicer_to_server(
            self.starting_federation, self.federation
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.federation)
        reflection.enable_server_reflection(
            (FEDERATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.federation
        )
        identity = self.security.identity
        credentials = server_credentials(identity) if identity is not None else None
        port = self._bind(self.federation, config.listen, credentials)
        host = config.listen.rpartition(":")[0]
        self.listen = f"{host}:{port}"
        self.federation.start()

    def _wire(self) -> None:
        config = self.config
        self.links = LinkManager(config, self.store, self.security)
        self.guard.attach_audit(lambda kind, detail: self.store.audit.record(kind, detail))
        self.scheduler = BackgroundScheduler(timezone="UTC")
        if config.http.enabled:
            self.http = HttpEndpoint(config.http.listen)
        self.service = NodeService(
            config,
            self.store,
            self.links,
            listen=self.listen,
            http=self.http.address if self.http else None,
        )
        self.federation_servicer = FederationServicer(
            config, self.store, self.stopping, self.service.reporter
        )
        self.token = new_token()
        self.admin = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="admin"),
            options=GRPC_MESSAGE_OPTIONS,
            interceptors=[TokenInterceptor(self.token)],
        )
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.service), self.admin)
        self.admin_port = self._bind(self.admin, "127.0.0.1:0")

    def _bind(
        self, server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None = None
    ) -> int:
        try:
            if credentials is not None:
                port = int(server.add_secure_port(address, credentials))
            else:
                port = int(server.add_insecure_port(address))
        except RuntimeError as exc:
            port = 0
            log.debug("bind %s failed: %s", address, exc)
        if port == 0:
            raise UserError(f"cannot listen on {address} (address in use or not local?)")
        return port

    def _set_health(self, status: int) -> None:
        for name in ("", FEDERATION_SERVICE):
            self.health.set(name, status)

    def _schedule_child(self, code: str, link: ChildLink | None) -> None:
        """Per child: the fallback pull, and the pull of its quality report (first at
        once, so a new child's scores show without waiting a period)."""
        jobs = (
            (f"pull-{code}", "poll", self.config.sync.pull_interval_seconds, None),
            (
                f"quality-{code}",
                "pull_quality",
                self.config.quality.report_pull_seconds,
                datetime.now(UTC),
            ),
            # Grant requests up, grants and return flows down (see ChildLink.sync_grants).
            (f"grants-{code}", "sync_grants", self.config.sync.grant_check_seconds, None),
            # The child's audit chain verified and its head anchored in ours (first at once).
            (
                f"audit-{code}",
                "anchor_audit",
                self.config.sync.audit_anchor_seconds,
                datetime.now(UTC),
            ),
        )
        for job_id, method, seconds, first in jobs:
            if self.scheduler.get_job(job_id):
                self.scheduler.remove_job(job_id)
            if link is not None:
                self.scheduler.add_job(
                    getattr(link, method),
                    "interval",
                    seconds=seconds,
                    id=job_id,
                    max_instances=1,
                    coalesce=True,
                    **({"next_run_time": first} if first else {}),
                )

    def start(self) -> None:
        self.starting_federation.ready(self.federation_servicer)
        self.admin.start()
        write_endpoint(
            self.config.admin_file,
            AdminEndpoint(
                pid=os.getpid(),
                address=f"127.0.0.1:{self.admin_port}",
                token=self.token,
                listen=self.listen,
            ),
        )
        store_settings = self.config.store
        self.scheduler.add_job(
            self.store.checkpoint,
            "interval",
            seconds=store_settings.checkpoint_interval_seconds,
            id="checkpoint",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._compact,
            "interval",
            seconds=store_settings.compact_interval_seconds,
            id="compact",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._end_grants,
            "interval",
            seconds=self.config.sync.grant_check_seconds,
            id="grants",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._crosscheck,
            "interval",
            seconds=store_settings.crosscheck_interval_seconds,
            id="crosscheck",
            max_instances=1,
            coalesce=True,
        )
        self.links.on_change(self._schedule_child)
        self.scheduler.start()
        # Children configured before the node tree existed (or edited in the file) join it.
        self.service.record_children()
        self.links.start(self.config.children)
        if self.http is not None:
            self._start_http(self.http)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        mode = self.security.mode
        if mode is SecurityMode.PLAINTEXT_DEV:
            log.warning("PLAINTEXT federation: development only, callers are not authenticated")
        elif mode is SecurityMode.NO_CERTIFICATE:
            log.warning(
                "node %s has no certificate: every federation call is refused and no child is "
                "pulled until `tongyuan pki install` (and a restart)",
                self.config.code,
            )
        log.info(
            "node %s (%s, %s) serving federation on %s (%s)%s",
            self.config.code,
            self.config.tier.value,
            self.config.name,
            self.listen,
            {
                SecurityMode.MTLS: "mutual TLS",
                SecurityMode.PLAINTEXT_DEV: "PLAINTEXT, development only",
                SecurityMode.NO_CERTIFICATE: "no certificate: federation refused",
            }[mode],
            f", metrics and status page on http://{self.http.address}/" if self.http else "",
        )

    def _start_http(self, http: HttpEndpoint) -> None:
        """Serve metrics and the status page; sample lag now (the page has a point at
        once) and then on a timer."""
        metrics = NodeMetrics(self.service)
        http.start(
            Observer(
                metrics=lambda: (metrics.render(), CONTENT_TYPE),
                view_json=lambda: json.dumps(build_view(self.service), ensure_ascii=False).encode(),
                view=lambda: build_view(self.service),
            )
        )
        self._sample_lag()
        self.scheduler.add_job(
            self._sample_lag,
            "interval",
            seconds=self.config.http.lag_sample_seconds,
            id="lag-sample",
            max_instances=1,
            coalesce=True,
        )
        run_file = self.config.http_file
        run_file.write_text(json.dumps({"address": http.address}) + "\n", encoding="utf-8")

    def _sample_lag(self) -> None:
        """Record every child's lag; drop samples older than a week."""
        now = datetime.now(UTC)
        samples = [(c["code"], c["lag"], c["lag_seconds"]) for c in self.service.list_children()]
        self.store.record_lag_samples(now, samples, keep_since=now - LAG_SAMPLES_KEPT)

    def _end_grants(self) -> None:
        """Grants given here that expired are noted (the child learns it with the next
        grant set); returned slices held here whose grant expired or was revoked are
        purged and the purge recorded."""
        grants = self.store.grants
        for grant_id in grants.expire_given():
            log.info("grant %s expired: no more return flow for it", grant_id)
        for purge in grants.purge_ended():
            log.info(
                "grant %s %s: purged %d returned rows",
                purge["id"],
                purge["ended"],
                purge["rows_purged"],
            )

    def _crosscheck(self) -> None:
        changed = self.store.sources.crosscheck()
        if changed:
            log.info("cross-check: %d discrepancies opened, changed or resolved", changed)

    def _compact(self) -> None:
        settings = self.config.store
        removed = self.store.compact(
            timedelta(days=settings.parent_ack_timeout_days),
            timedelta(hours=settings.tombstone_min_age_hours),
        )
        if removed:
            log.info("compacted %d acknowledged tombstones", removed)

    def stop(self) -> None:
        # First of all, health checks and load balancers hear the node is going.
        self.health.enter_graceful_shutdown()
        self.stopping.set()

    def wait(self) -> None:
        self.stopping.wait()
        self._shutdown()

    def _shutdown(self) -> None:
        self.health.enter_graceful_shutdown()  # NOT_SERVING, and no later change
        log.info("node %s shutting down", self.config.code)
        if self.http is not None:
            self.http.stop()
            self.config.http_file.unlink(missing_ok=True)
        self.store.db.notify_head()  # subscribe streams see `stopping` now, not at a heartbeat
        self.links.stop()
        self.scheduler.shutdown(wait=True)
        self.federation.stop(grace=2).wait()
        self.admin.stop(grace=5).wait()
        self.store.close()
        self.config.admin_file.unlink(missing_ok=True)
        self.serve_lock.release()
        log.info("node %s stopped", self.config.code)


def serve(config: NodeConfig) -> None:
    """Run a node until SIGTERM or SIGINT."""
    # Python threads (gRPC, decoding) otherwise hold the GIL long enough to slow
    # DuckDB calls in this process many times over.
    sys.setswitchinterval(0.0005)
    server = NodeServer(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    server.wait()
