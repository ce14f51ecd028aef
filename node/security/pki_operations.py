"""`tongyuan pki` as node operations (named calls), so they work the same whether the node
serves or not; a serving node cuts a revoked child's link at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node.config import NodeConfig
from node.errors import UserError
from node.security import pki
from node.security.identity import SecurityMode, load_security

if TYPE_CHECKING:
    from node.federation.links import LinkManager
    from node.store import Store


class PkiService:
    def __init__(self, config: NodeConfig, store: Store, links: LinkManager | None) -> None:
        self._config = config
        self._store = store
        self._links = links

    def _identity(self) -> pki.Identity:
        identity = pki.load_identity(self._config.directory, self._config.code)
        if identity is None:
            raise UserError(
                f"node {self._config.code} has no certificate: run `tongyuan pki init-root` "
                "(top node) or `tongyuan pki request` and install what the parent issues"
            )
        return identity

    def _audit(self, kind: str, detail: dict[str, Any], actor: str) -> None:
        self._store.audit.record(kind, detail, actor=actor)

    def summary(self) -> dict[str, Any]:
        """Security mode and identity, for `status` (never fails: a broken identity is shown)."""
        try:
            doc = load_security(self._config).describe()
        except UserError as exc:
            return {"mode": SecurityMode.NO_CERTIFICATE.value, "problem": str(exc)}
        federation_key = pki.security_dir(self._config.directory) / pki.FEDERATION_KEY
        doc["federation_key"] = federation_key.exists()
        return doc

    def show(self) -> dict[str, Any]:
        doc = self.summary()
        doc["serving"] = self._links is not None
        return doc

    def list_issued(self) -> list[dict[str, Any]]:
        now = pki.now_utc().isoformat()
        return [
            {
                **r,
                "status": "revoked"
                if r.get("revoked_at")
                else ("expired" if r["not_after"] < now else "valid"),
            }
            for r in pki.Register(self._config.directory).records()
        ]

    def init_root(self, days: float = pki.DEFAULT_DAYS, actor: str = "") -> dict[str, Any]:
        _check_days(days)
        identity = pki.init_root(self._config.directory, self._config.code, days)
        self._audit(
            "pki.root_created",
            {
                "root": pki.fingerprint(identity.root),
                "certificate": pki.serial_hex(identity.certificate),
            },
            actor,
        )
        return self.show()

    def request(self, new_key: bool = False) -> dict[str, Any]:
        csr = pki.request(self._config.directory, self._config.code, new=new_key)
        return {
            "code": self._config.code,
            "csr": csr.decode(),
            "key": str(pki.security_dir(self._config.directory) / pki.NODE_KEY),
        }

    def issue(
        self, csr: str, where: str = "request", days: float = pki.DEFAULT_DAYS, actor: str = ""
    ) -> dict[str, Any]:
        _check_days(days)
        issued = pki.issue(self._identity(), csr.encode(), where, days=days)
        self._audit("pki.issued", issued.record, actor)
        return {"bundle": issued.bundle, "record": issued.record}

    def install(self, bundle: str, where: str = "bundle", actor: str = "") -> dict[str, Any]:
        identity = pki.install(self._config.directory, self._config.code, bundle, where)
        self._audit(
            "pki.installed",
            {
                "parent": identity.parent_code,
                # The parent's certificate whose key alone may call this node.
                "parent_certificate": pki.fingerprint(identity.parent) if identity.parent else None,
                "serial": pki.serial_hex(identity.certificate),
                "fingerprint": pki.fingerprint(identity.certificate),
                "not_after": identity.certificate.not_valid_after_utc.isoformat(),
            },
            actor,
        )
        return self.show() | {"restart_needed": self._links is not None}

    def revoke(self, code: str, actor: str = "") -> dict[str, Any]:
        """Revoke every certificate this node issued to `code`; a serving node ends the
        child's session now, and every later session is refused."""
        revoked = pki.Register(self._config.directory).revoke(code)
        if not revoked:
            issued = {r["code"] for r in pki.Register(self._config.directory).records()}
            if code in issued:
                raise UserError(
                    f"every certificate node {self._config.code} issued to {code} is revoked "
                    "already"
                )
            raise UserError(f"node {self._config.code} has issued no certificate to {code}")
        self._audit("pki.revoked", {"code": code, "serials": [r["serial"] for r in revoked]}, actor)
        cut = False
        if self._links is not None:
            cut = self._links.cut(code, f"child {code}: its certificate was revoked")
        return {"code": code, "revoked": revoked, "link_cut": cut}


def _check_days(days: float) -> None:
    if not days > 0:
        raise UserError(f"--days must be above 0, got {days}")
