"""Mutual TLS between tiers: the node's security mode, gRPC credentials, the check every
Federation call passes at the child, and the parent's check of a child's certificate.

Modes: `mtls` (an identity is installed: the federation port requires a client
certificate from the federation root, and only the registered parent may call);
`plaintext-dev` (`[security] plaintext_dev = true`: no TLS, no identity checks, for
development only); `no-certificate` (neither: the node serves health and its admin
API, but refuses every Federation call and pulls from no child).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
from cryptography import x509

from node.config import NodeConfig
from node.errors import UserError
from node.security.pki import (
    Identity,
    Register,
    code_of,
    dns_name,
    is_expired,
    issued_by,
    load_identity,
    same_public_key,
    serial_hex,
    validity_problem,
)

log = logging.getLogger(__name__)

FEDERATION_PREFIX = "/tongyuan.v1.Federation/"
# gRPC handler kinds, and whether the handler receives one request message.
_HANDLER_KINDS = (
    ("unary_unary", True),
    ("unary_stream", True),
    ("stream_unary", False),
    ("stream_stream", False),
)
# The same refusal (caller and reason) is logged and audited at most once per this period.
REFUSAL_REPORT_SECONDS = 60.0
# And at most this many refusals in all per period (callers without a certificate are
# told apart by address, so many addresses would each write one): the rest are counted
# and written as one summary entry when the period ends (or with the next entry).
REFUSAL_REPORT_MAX = 30
# Fields a Federation request names its caller by.
_CALLER_FIELDS = ("parent_code", "caller_code")


class QuietRefusal(UserError):
    """A session that cannot start for a reason that holds until something changes (the
    child does not answer, this node has no certificate): logged once, not stored per try."""


class ChildRefused(UserError):
    """A child's address answered, and what it presented is not this node's child."""


class SecurityMode(StrEnum):
    MTLS = "mtls"
    PLAINTEXT_DEV = "plaintext-dev"
    NO_CERTIFICATE = "no-certificate"


@dataclass(frozen=True)
class Security:
    """How this node's federation traffic is protected, and its identity when it has one."""

    mode: SecurityMode
    identity: Identity | None
    code: str

    def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mode": self.mode.value}
        if self.identity is not None:
            doc |= self.identity.summary()
        return doc


def no_certificate_message(code: str) -> str:
    return (
        f"node {code} has no certificate: run `tongyuan pki request` there, have its parent "
        "run `tongyuan pki issue`, then `tongyuan pki install BUNDLE` and restart it "
        "(or `init --plaintext-dev` for development)"
    )


def load_security(config: NodeConfig) -> Security:
    """The mode this node runs in: plaintext only when the config says so explicitly."""
    if config.security.plaintext_dev:
        return Security(SecurityMode.PLAINTEXT_DEV, None, config.code)
    identity = load_identity(config.directory, config.code)
    if identity is None:
        return Security(SecurityMode.NO_CERTIFICATE, None, config.code)
    return Security(SecurityMode.MTLS, identity, config.code)


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS that requires a client certificate chaining to the federation root."""
    return grpc.ssl_server_credentials(
        [(identity.key_bytes(), identity.fullchain_pem())],
        root_certificates=identity.root_pem(),
        require_client_auth=True,
    )


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=identity.root_pem(),
        private_key=identity.key_bytes(),
        certificate_chain=identity.fullchain_pem(),
    )


def open_channel(
    security: Security, address: str, peer_code: str, options: list[tuple[str, Any]]
) -> grpc.Channel:
    """A channel to child `peer_code` at `address`: with mTLS, the peer must present a
    certificate for the full name this node gives its children (`node-CHILD.SELF.tongyuan`),
    whatever answers on the address; name constraints keep other CAs from minting it."""
    if security.identity is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(
        address,
        channel_credentials(security.identity),
        options=[
            *options,
            ("grpc.ssl_target_name_override", dns_name(peer_code, security.identity.code)),
        ],
    )


# ----- refusals: logged and audited, each at most once a minute ---------------------------


AuditSink = Callable[[str, dict[str, Any]], object]


class Refusals:
    """Logs and audits (`login.refused`) refused logins, each distinct refusal (who,
    reason) at most once per REFUSAL_REPORT_SECONDS: a peer retrying every second is one
    entry a minute, not thousands. Used on both sides: the guard and each child link."""

    def __init__(
        self, sink: AuditSink | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._reported: dict[tuple[str, str], float] = {}
        # The global cap: when the current period began, refusals recorded in it, and
        # those beyond the cap (counted, summarised once the period ends).
        self._period_start: float | None = None
        self._period_count = 0
        self._suppressed = 0
        self._timer: threading.Timer | None = None

    def attach(self, sink: AuditSink) -> None:
        self._sink = sink

    def report(self, who: str, reason: str, detail: dict[str, Any]) -> bool:
        """Record the refusal unless the same one was recorded within the period, or
        REFUSAL_REPORT_MAX were this period (then it is counted for the summary); returns
        whether it was recorded."""
        now = self._clock()
        key = (who, reason)
        with self._lock:
            last = self._reported.get(key)
            if last is not None and now - last < REFUSAL_REPORT_SECONDS:
                return False
            summary = self._roll(now)
            if self._period_count >= REFUSAL_REPORT_MAX:
                self._suppressed += 1
                if self._suppressed == 1:
                    self._schedule_flush(now)
                recorded = False
            else:
                self._period_count += 1
                if len(self._reported) > 1024:
                    self._reported.clear()
                self._reported[key] = now
                recorded = True
        self._summarise(summary)
        if not recorded:
            return False
        log.warning("refused %s: %s", who, reason)
        self._write(detail | {"reason": reason})
        return True

    def flush(self) -> None:
        """Write the summary of the refusals beyond the cap once their period has ended."""
        with self._lock:
            summary = self._roll(self._clock())
        self._summarise(summary)

    def _roll(self, now: float) -> int:
        """Start a new period if the current one ended (lock held); returns the count of
        the ended period's refusals beyond the cap, to summarise."""
        start = self._period_start
        if start is not None and now - start < REFUSAL_REPORT_SECONDS:
            return 0
        summary, self._suppressed = self._suppressed, 0
        self._period_start, self._period_count = now, 0
        return summary

    def _schedule_flush(self, now: float) -> None:
        """(Lock held.) The summary is written when the period ends even if no other
        refusal comes to carry it."""
        start = self._period_start if self._period_start is not None else now
        delay = max(start + REFUSAL_REPORT_SECONDS - now, 0.0) + 0.5
        timer = threading.Timer(delay, self.flush)
        timer.daemon = True
        timer.start()
        self._timer = timer

    def _summarise(self, count: int) -> None:
        if not count:
            return
        reason = (
            f"{count} more refusals within {REFUSAL_REPORT_SECONDS:.0f}s beyond the "
            f"{REFUSAL_REPORT_MAX} recorded one by one"
        )
        log.warning("refused %s", reason)
        self._write({"summary": True, "more": count, "reason": reason})

    def _write(self, detail: dict[str, Any]) -> None:
        if self._sink is not None:
            try:
                self._sink("login.refused", detail)
            except Exception:  # the refusal stands whatever the audit log does
                log.exception("could not record a refused login in the audit log")


# ----- child side: who may call ----------------------------------------------------------


class FederationGuard(grpc.ServerInterceptor):
    """Every Federation call passes here first: the caller's certificate must be the
    registered parent's (its key the one of the parent's certificate installed here, issued
    by the CA that issued the parent, not expired) and the request must name that parent.
    Health and reflection stay open."""

    def __init__(self, config: NodeConfig, security: Security) -> None:
        self._config = config
        self._security = security
        self._refusals = Refusals()
        self._certs: dict[bytes, x509.Certificate] = {}
        self._lock = threading.Lock()

    def attach_audit(self, sink: AuditSink) -> None:
        self._refusals.attach(sink)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if (
            handler is None
            or not method.startswith(FEDERATION_PREFIX)
            or self._security.mode is SecurityMode.PLAINTEXT_DEV
        ):
            return handler
        name = method.removeprefix(FEDERATION_PREFIX)
        # Client-streaming calls (none today) fail closed: certificate checked, no fields.
        for kind, request_has_fields in _HANDLER_KINDS:
            inner = getattr(handler, kind)
            if inner is not None:
                return handler._replace(**{kind: self._guarded(name, inner, request_has_fields)})
        return handler

    def _guarded(
        self, name: str, inner: Callable[[Any, Any], Any], request_has_fields: bool
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """`inner` behind `_authorize`; the request's caller fields are checked when it is
        one message (a stream of requests is checked by certificate alone)."""

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self._authorize(name, request if request_has_fields else None, context)
            return inner(request, context)

        return guarded

    def _certificate(self, pem_bytes: bytes) -> x509.Certificate:
        with self._lock:
            cert = self._certs.get(pem_bytes)
            if cert is None:
                cert = x509.load_pem_x509_certificate(pem_bytes)
                if len(self._certs) > 64:
                    self._certs.clear()
                self._certs[pem_bytes] = cert
            return cert

    def _authorize(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        code = self._config.code
        peer = context.peer()
        identity = self._security.identity
        if identity is None:
            self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED, no_certificate_message(code),
                peer, method, "",
            )  # fmt: skip
            return
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED,
                f"node {code} serves only its parent, over mutual TLS: no client certificate",
                peer, method, "",
            )  # fmt: skip
            return
        cert = self._certificate(pems[0])
        caller = code_of(cert)
        parent = identity.parent_code
        if parent is None:
            self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED,
                f"node {caller} may not call node {code}: node {code} holds the federation "
                "root and has no parent",
                peer, method, caller,
            )  # fmt: skip
            return
        if caller != parent:
            self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED,
                f"node {caller} is not the parent of node {code} (its parent is {parent}); "
                "refused",
                peer, method, caller,
            )  # fmt: skip
            return
        pinned = identity.parent
        if pinned is None or not same_public_key(cert, pinned):
            self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate naming node {caller} does not hold the key of node {code}'s "
                f"parent (security/parent.crt"
                + (", missing: install the parent's bundle again" if pinned is None else "")
                + "); refused",
                peer, method, caller,
            )  # fmt: skip
            return
        if not issued_by(cert, identity.parent_issuer):
            self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate naming node {caller} was not issued by the CA that issued "
                f"node {code}'s parent; refused",
                peer, method, caller,
            )  # fmt: skip
            return
        problem = validity_problem(cert, f"node {caller}'s certificate")
        if problem:
            self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED, f"{problem}; refused by node {code}",
                peer, method, caller,
            )  # fmt: skip
            return
        for field in _CALLER_FIELDS if request is not None else ():
            if field in request.DESCRIPTOR.fields_by_name:
                named = getattr(request, field)
                if named != caller:
                    self._refuse(
                        context, grpc.StatusCode.PERMISSION_DENIED,
                        f"the request names node {named or '(none)'} as {field}, but the "
                        f"certificate is node {caller}'s; refused by node {code}",
                        peer, method, caller,
                    )  # fmt: skip
                    return

    def _refuse(
        self,
        context: grpc.ServicerContext,
        status: grpc.StatusCode,
        reason: str,
        peer: str,
        method: str,
        caller: str,
    ) -> None:
        self._refusals.report(
            caller or peer.rpartition(":")[0],
            reason,
            {"peer": peer, "caller": caller, "method": method},
        )
        context.abort(status, reason)


# ----- parent side: is this really my child? ----------------------------------------------


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def verify_child(
    security: Security,
    child_code: str,
    address: str,
    timeout: float = 5,
    refusals: Refusals | None = None,
) -> None:
    """Before a session: the address must answer with a certificate for `child_code`,
    issued by this node and not revoked in its register. gRPC Python does not show the
    server's certificate, so a short TLS handshake (ALPN h2, our client certificate)
    fetches it; gRPC then checks the root and the full name again on its own connection
    (name constraints: no other CA can mint that name). A refusal of the child's
    certificate (not an unreachable address) is recorded with `refusals`."""
    try:
        _verify_child(security, child_code, address, timeout)
    except QuietRefusal:
        raise
    except ChildRefused as exc:
        if refusals is not None:
            refusals.report(
                child_code,
                str(exc),
                {"peer": address, "caller": child_code, "method": "parent: child certificate"},
            )
        raise


def _verify_child(security: Security, child_code: str, address: str, timeout: float) -> None:
    identity = security.identity
    if security.mode is SecurityMode.PLAINTEXT_DEV:
        return
    if identity is None:
        raise QuietRefusal(
            f"cannot pull from child {child_code}: " + no_certificate_message(security.code)
        )
    own = validity_problem(identity.certificate, f"node {identity.code}'s own certificate")
    if own:
        raise UserError(f"cannot pull from child {child_code}: {own}; ask its parent for a new one")
    context = _client_context(identity, child_code)
    host, port = _host_port(address)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=dns_name(child_code, identity.code)) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise ChildRefused(
            f"child {child_code}: {address} does not present a valid certificate for node "
            f"{child_code}: {exc.verify_message}; refused"
        ) from None
    except ssl.SSLError as exc:
        raise UserError(f"child {child_code}: TLS to {address} failed: {exc}") from None
    except OSError as exc:
        raise QuietRefusal(f"child {child_code}: {address} does not answer: {exc}") from None
    if der is None:
        raise ChildRefused(f"child {child_code}: {address} presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        check_child_certificate(identity, child_code, cert)
    except UserError as exc:
        raise ChildRefused(str(exc)) from None


def _client_context(identity: Identity, child_code: str) -> ssl.SSLContext:
    """TLS for the handshake with a child, with this node's own certificate; a broken
    installation is a UserError naming the fix, never an exception the link cannot read."""
    where = f"cannot pull from child {child_code}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_verify_locations(cadata=identity.root_pem().decode())
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise UserError(
            f"{where}: the federation root certificate (security/root.crt) cannot be used: "
            f"{exc}; install the bundle again, `tongyuan pki install`"
        ) from None
    try:
        context.load_cert_chain(str(identity.fullchain_path), str(identity.key_path))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise UserError(
                f"{where}: node.key does not match node.crt: install the certificate issued "
                "for it, `tongyuan pki install`"
            ) from None
        raise UserError(
            f"{where}: node.key or fullchain.pem cannot be loaded ({exc}): install the "
            "certificate issued for node.key, `tongyuan pki install`"
        ) from None
    except OSError as exc:
        raise UserError(
            f"{where}: cannot read {exc.filename or 'node.key or fullchain.pem'}: "
            f"{exc.strerror or exc}; install the certificate again, `tongyuan pki install`"
        ) from None
    return context


def check_child_certificate(identity: Identity, child_code: str, cert: x509.Certificate) -> None:
    """The certificate must name `child_code`, be signed by this node and be current in
    its register (a revoked one is refused)."""
    named = code_of(cert)
    if named != child_code:
        raise UserError(
            f"child {child_code}: the address serves node {named}'s certificate; refused"
        )
    issuer, _ = identity.issuing_ca()
    if not issued_by(cert, issuer):
        raise UserError(
            f"child {child_code}: its certificate was not issued by node {identity.code}; "
            f"issue one with `tongyuan pki issue` here"
        )
    record = Register(identity.directory).find(serial_hex(cert))
    if record is None:
        raise UserError(
            f"child {child_code}: certificate serial {serial_hex(cert)} is not in node "
            f"{identity.code}'s register of issued certificates; refused"
        )
    if record.get("revoked_at"):
        raise UserError(
            f"child {child_code}: its certificate (serial {record['serial']}) was revoked at "
            f"{record['revoked_at']}; issue a new one to let it back in"
        )
    if is_expired(cert):
        raise UserError(
            f"child {child_code}: its certificate expired at {cert.not_valid_after_utc}"
        )
