"""Node identity: the federation's certificates, kept as files under `DIR/security/`.

A node's identity is an X.509 certificate naming its division code, issued by its
parent; the province holds the federation's root. Files (PEM unless said otherwise):

    security/node.key        this node's private key (ECDSA P-256, PKCS#8), mode 0600
    security/node.csr        the last certificate request `pki request` wrote
    security/node.crt        this node's certificate: CN = code, OU = tier, SAN DNS
                             `node-CODE.ISSUER.tongyuan` (ISSUER: the code of the node that
                             issued it; the name its parent verifies), serverAuth and
                             clientAuth; a city's is a CA (path length 0) so it can issue its
                             counties' certificates, constrained (NameConstraints, critical)
                             to DNS names under `CITY.tongyuan`: a city cannot mint a name
                             another parent would accept
    security/parent.crt      the certificate of the node that issued node.crt (its parent):
                             a caller claiming to be the parent must hold its key
    security/chain.pem       the certificates between node.crt and the root (empty when the
                             root issued node.crt)
    security/fullchain.pem   node.crt followed by chain.pem (what TLS stacks present)
    security/root.crt        the federation root (self-signed, path length 1)
    security/root.key        the root's private key: only at the node that created it
    security/federation.key  the federation's pseudonym key: 64 hex digits and a newline
                             (32 random bytes), mode 0600; created with the root and handed
                             down in every bundle
    security/issued/register.json
                             what this node issued: {"certificates": [{code, serial (hex),
                             fingerprint (SHA-256 hex), not_before, not_after, issued_at,
                             revoked_at (null until revoked)}]}
    security/issued/CODE-SERIAL.crt
                             each certificate this node issued

A bundle (`pki issue` writes it, `pki install` reads it; mode 0600) is JSON:
{"format": "tongyuan-pki-bundle/1", "code", "issuer_code", "certificate" (PEM),
"chain" (PEM, the issuer's certificate and those above it, root excluded), "root" (PEM),
"parent" (PEM, the issuing node's own certificate), "federation_key" (hex), "issued_at"}.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.divisions import Tier, is_within, lookup_division, tier_of
from node.errors import UserError
from node.security.paths import (
    FEDERATION_KEY,
    parse_federation_key,
    security_dir,
)
from node.security.paths import read_federation_key as _read_federation_key

NODE_KEY = "node.key"
NODE_CSR = "node.csr"
NODE_CERT = "node.crt"
CHAIN = "chain.pem"
FULLCHAIN = "fullchain.pem"
ROOT_CERT = "root.crt"
PARENT_CERT = "parent.crt"
ROOT_KEY = "root.key"
ISSUED_DIR = "issued"
REGISTER = "register.json"
BUNDLE_FORMAT = "tongyuan-pki-bundle/1"
ORGANIZATION = "Tongyuan federation"
ROOT_PREFIX = "tongyuan-root-"
DNS_SUFFIX = ".tongyuan"
DEFAULT_DAYS = 365
ROOT_DAYS = 3650
# Issued certificates start a little in the past: clocks between tiers are not exact.
CLOCK_MARGIN = timedelta(minutes=5)

_TIER_RANK = {Tier.COUNTY: 0, Tier.CITY: 1, Tier.PROVINCE: 2}


def dns_name(code: str, issuer_code: str) -> str:
    """The name a node's certificate carries and its parent verifies: the node's code under
    its issuer's (`node-320102.320100.tongyuan`). A city's certificate may certify only
    names under `320100.tongyuan` (`name_domain`), so no city can mint a name that another
    city or the province would accept for one of its own children."""
    return f"node-{code}.{name_domain(issuer_code)}"


def name_domain(issuer_code: str) -> str:
    """The DNS subtree under which node `issuer_code` certifies its children."""
    return f"{issuer_code}{DNS_SUFFIX}"


def dns_names_of(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in names.get_values_for_type(x509.DNSName)]


def own_dns_name(security: Path) -> str:
    """The DNS name in the certificate installed in `security` (what its node answers to)."""
    cert = load_certificate(_read(security / NODE_CERT, "certificate"), str(security / NODE_CERT))
    names = dns_names_of(cert)
    if not names:
        raise UserError(f"{security / NODE_CERT} names no DNS name")
    return names[0]


def now_utc() -> datetime:
    return datetime.now(UTC)


# ----- files ---------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, readable by this user alone from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_certificate(data: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise UserError(f"{where}: not a PEM certificate ({exc})") from None


def load_certificates(data: bytes, where: str) -> list[x509.Certificate]:
    if not data.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise UserError(f"{where}: not PEM certificates ({exc})") from None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"{path}: not an ECDSA key")
    return key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def code_of(cert: x509.Certificate) -> str:
    """The division code a node certificate names (its CN); the root's own code for a root."""
    cn = _cn(cert.subject)
    return cn.removeprefix(ROOT_PREFIX)


def issuer_code_of(cert: x509.Certificate) -> str:
    """The code of the node that issued `cert` (the root's CN names the root's node)."""
    return _cn(cert.issuer).removeprefix(ROOT_PREFIX)


def is_root(cert: x509.Certificate) -> bool:
    return _cn(cert.subject).startswith(ROOT_PREFIX) and cert.issuer == cert.subject


def is_expired(cert: x509.Certificate, at: datetime | None = None) -> bool:
    moment = at or now_utc()
    return not (cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc)


def validity_problem(cert: x509.Certificate, what: str) -> str | None:
    """Why `cert` is not valid now (expired or not yet valid), or None."""
    moment = now_utc()
    if moment > cert.not_valid_after_utc:
        return f"{what} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if moment < cert.not_valid_before_utc:
        return f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """`cert` carries `issuer`'s name and a valid signature by its key."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def same_public_key(a: x509.Certificate | ec.EllipticCurvePrivateKey, b: Any) -> bool:
    def spki(obj: Any) -> bytes:
        public = obj.public_key()
        return bytes(
            public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    return spki(a) == spki(b)


def _federation_key_text(data: bytes, where: str) -> str:
    return parse_federation_key(data, where).hex()


# ----- certificates ---------------------------------------------------------------------


def _subject(code: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, code),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, tier_of(code).value),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build_root(
    code: str, key: ec.EllipticCurvePrivateKey, days: float = ROOT_DAYS
) -> x509.Certificate:
    """The federation root: self-signed, may sign cities which may sign counties."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_PREFIX + code),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "root"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    start = now_utc() - CLOCK_MARGIN
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def issue_certificate(
    code: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    days: float = DEFAULT_DAYS,
) -> x509.Certificate:
    """A node certificate for `code`: a city's may issue its counties' (CA, path length
    0); a county's and a province's own may not. Never valid beyond its issuer."""
    start = not_before or now_utc() - CLOCK_MARGIN
    end = not_after or now_utc() + timedelta(days=days)
    end = min(end, issuer_cert.not_valid_after_utc)
    ca = tier_of(code) is Tier.CITY
    builder = x509.CertificateBuilder()
    if ca:
        # What a city may certify: names under its own domain only (RFC 5280 name
        # constraints, enforced by OpenSSL and by gRPC's BoringSSL while building the path).
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(name_domain(code))], excluded_subtrees=None
            ),
            critical=True,
        )
    return (
        builder.subject_name(_subject(code))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(_key_usage(ca=ca), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns_name(code, code_of(issuer_cert)))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def build_request(code: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    # No names beyond the subject: the issuer decides the DNS name (it names itself in it).
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(code))
        .sign(key, hashes.SHA256())
    )


def load_request(data: bytes, where: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise UserError(f"{where}: not a PEM certificate request ({exc})") from None
    if not csr.is_signature_valid:
        raise UserError(f"{where}: the request's signature does not verify")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise UserError(f"{where}: the request's key is not an ECDSA key")
    return csr


# ----- the node's own identity ------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """This node's installed certificate, its chain and the federation root."""

    directory: Path
    code: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate
    # The parent's own certificate (security/parent.crt): the key a parent must call with.
    parent: x509.Certificate | None = None

    @property
    def security(self) -> Path:
        return security_dir(self.directory)

    @property
    def key_path(self) -> Path:
        return self.security / NODE_KEY

    @property
    def fullchain_path(self) -> Path:
        return self.security / FULLCHAIN

    @property
    def holds_root(self) -> bool:
        return (self.security / ROOT_KEY).exists()

    @property
    def parent_code(self) -> str | None:
        """The node that issued this one's certificate: its only trusted parent."""
        issuer = issuer_code_of(self.certificate)
        return None if issuer == self.code else issuer

    @property
    def parent_issuer(self) -> x509.Certificate:
        """The CA that issued the parent's own certificate: a caller claiming to be the
        parent must hold a certificate signed by it (so a sibling CA cannot mint one)."""
        return self.chain[1] if len(self.chain) >= 2 else self.root

    def issuing_ca(self) -> tuple[x509.Certificate, Path]:
        """The certificate and key this node signs its children's certificates with."""
        if self.holds_root:
            return self.root, self.security / ROOT_KEY
        return self.certificate, self.key_path

    def key_bytes(self) -> bytes:
        return _read(self.key_path, "private key")

    def chain_pem(self) -> bytes:
        return b"".join(pem(c) for c in self.chain)

    def fullchain_pem(self) -> bytes:
        return pem(self.certificate) + self.chain_pem()

    def root_pem(self) -> bytes:
        return pem(self.root)

    def summary(self) -> dict[str, Any]:
        cert = self.certificate
        return {
            "code": self.code,
            "parent": self.parent_code,
            "holds_root": self.holds_root,
            "issuer": _cn(cert.issuer),
            "dns_name": ", ".join(dns_names_of(cert)),
            "parent_certificate": fingerprint(self.parent) if self.parent else None,
            "serial": serial_hex(cert),
            "fingerprint": fingerprint(cert),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "expired": is_expired(cert),
            "root_fingerprint": fingerprint(self.root),
        }


def load_identity(directory: Path, code: str) -> Identity | None:
    """The installed identity, or None when node.crt is absent; a broken one is a UserError."""
    security = security_dir(directory)
    cert_path = security / NODE_CERT
    if not cert_path.exists():
        return None
    cert = load_certificate(_read(cert_path, "certificate"), str(cert_path))
    chain = load_certificates(
        (security / CHAIN).read_bytes() if (security / CHAIN).exists() else b"",
        str(security / CHAIN),
    )
    root_path = security / ROOT_CERT
    root = load_certificate(_read(root_path, "federation root"), str(root_path))
    parent_path = security / PARENT_CERT
    parent = (
        load_certificate(_read(parent_path, "parent certificate"), str(parent_path))
        if parent_path.exists()
        else None
    )
    if code_of(cert) != code:
        raise UserError(f"{cert_path} names node {code_of(cert)}, but this node is {code}")
    if not (security / NODE_KEY).exists():
        raise UserError(f"{cert_path} is installed but its key {security / NODE_KEY} is missing")
    return Identity(directory, code, cert, tuple(chain), root, parent)


def read_federation_key(directory: Path) -> str | None:
    """The federation key as hex (read by `node.security.paths`, the one reader)."""
    key = _read_federation_key(directory)
    return None if key is None else key.hex()


# ----- operations on files -------------------------------------------------------------


def init_root(directory: Path, code: str, days: float = DEFAULT_DAYS) -> Identity:
    """Create the federation root, this node's certificate under it and the federation's
    pseudonym key (kept if it exists already)."""
    security = security_dir(directory)
    for existing in (ROOT_KEY, NODE_CERT):
        if (security / existing).exists():
            raise UserError(
                f"{security / existing} already exists: node {code} already has an identity "
                "(see `tongyuan pki show`)"
            )
    if tier_of(code) is Tier.COUNTY:
        raise UserError(
            f"node {code} is a county: the federation root belongs at the top node (a province, "
            "or a city running alone)"
        )
    root_key = new_key()
    root = build_root(code, root_key)
    node_key = _existing_or_new_key(security / NODE_KEY)
    cert = issue_certificate(code, node_key.public_key(), root, root_key, days=days)
    write_private(security / ROOT_KEY, key_pem(root_key))
    write_private(security / NODE_KEY, key_pem(node_key))
    write_public(security / ROOT_CERT, pem(root))
    write_public(security / CHAIN, b"")
    (security / PARENT_CERT).unlink(missing_ok=True)
    write_public(security / FULLCHAIN, pem(cert))
    write_public(security / NODE_CERT, pem(cert))
    if read_federation_key(directory) is None:
        write_private(security / FEDERATION_KEY, (secrets.token_hex(32) + "\n").encode())
    identity = load_identity(directory, code)
    assert identity is not None
    return identity


def _existing_or_new_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return load_private_key(path) if path.exists() else new_key()


def request(directory: Path, code: str, new: bool = False) -> bytes:
    """This node's key (kept unless `new`) and a certificate request naming its code."""
    security = security_dir(directory)
    key = new_key() if new else _existing_or_new_key(security / NODE_KEY)
    csr_pem = build_request(code, key).public_bytes(serialization.Encoding.PEM)
    write_private(security / NODE_KEY, key_pem(key))
    write_public(security / NODE_CSR, csr_pem)
    return csr_pem


def check_child_code(parent_code: str, child_code: str) -> None:
    """A parent issues only for divisions below it, of a lower tier."""
    division = lookup_division(child_code)
    if division.retired:
        raise UserError(f"division code {child_code} ({division.name}) is retired")
    if tier_of(parent_code) is Tier.COUNTY:
        raise UserError(f"node {parent_code} is a county node: it has no children to certify")
    if child_code == parent_code or not is_within(child_code, parent_code):
        raise UserError(
            f"the request is for node {child_code} ({division.name}), which is not below node "
            f"{parent_code}; a parent issues certificates only for divisions below it"
        )
    if _TIER_RANK[division.tier] >= _TIER_RANK[tier_of(parent_code)]:
        raise UserError(
            f"node {child_code} is a {division.tier.value}, not below node {parent_code}"
        )


@dataclass(frozen=True)
class Issued:
    bundle: dict[str, Any]
    record: dict[str, Any]


def issue(
    identity: Identity,
    csr_data: bytes,
    where: str,
    *,
    days: float = DEFAULT_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """Sign a child's request and record it in the register; returns the bundle to hand
    over. Everything is checked before anything is written."""
    csr = load_request(csr_data, where)
    child = _cn(csr.subject)
    try:
        check_child_code(identity.code, child)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    ca_cert, ca_key_path = identity.issuing_ca()
    problem = validity_problem(identity.certificate, f"node {identity.code}'s own certificate")
    problem = problem or validity_problem(ca_cert, "the issuing certificate")
    if problem:
        raise UserError(f"cannot issue: {problem}; renew it first")
    if tier_of(child) is Tier.CITY and not identity.holds_root:
        raise UserError(
            f"node {identity.code} cannot issue a city's certificate: only the root can"
        )
    ca_key = load_private_key(ca_key_path)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    cert = issue_certificate(
        child, public, ca_cert, ca_key, days=days, not_before=not_before, not_after=not_after
    )
    chain = b"" if identity.holds_root else identity.fullchain_pem()
    federation_key = read_federation_key(identity.directory)
    if federation_key is None:
        raise UserError(
            f"{security_dir(identity.directory) / FEDERATION_KEY} is missing: this node cannot "
            "hand the federation's pseudonym key down"
        )
    issued_at = now_utc().isoformat()
    record = {
        "code": child,
        "serial": serial_hex(cert),
        "fingerprint": fingerprint(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "issued_at": issued_at,
        "revoked_at": None,
    }
    register = Register(identity.directory)
    register.add(record, pem(cert))
    bundle = {
        "format": BUNDLE_FORMAT,
        "code": child,
        "issuer_code": identity.code,
        "certificate": pem(cert).decode(),
        "chain": chain.decode(),
        "root": identity.root_pem().decode(),
        "parent": pem(identity.certificate).decode(),
        "federation_key": federation_key,
        "issued_at": issued_at,
    }
    return Issued(bundle=bundle, record=record)


def install(directory: Path, code: str, bundle_text: str, where: str) -> Identity:
    """Check a bundle against this node's key and code and install it; nothing is written
    unless every check passes."""
    try:
        bundle = json.loads(bundle_text)
    except ValueError as exc:
        raise UserError(f"{where}: not a certificate bundle (JSON: {exc})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{where}: not a certificate bundle (format {BUNDLE_FORMAT} expected)")
    fields = ("code", "issuer_code", "certificate", "chain", "root", "parent", "federation_key")
    missing = [f for f in fields if not isinstance(bundle.get(f), str)]
    if missing:
        raise UserError(f"{where}: the bundle lacks {', '.join(missing)}")
    security = security_dir(directory)
    cert = load_certificate(bundle["certificate"].encode(), f"{where}: certificate")
    chain = load_certificates(bundle["chain"].encode(), f"{where}: chain")
    root = load_certificate(bundle["root"].encode(), f"{where}: root")
    parent = load_certificate(bundle["parent"].encode(), f"{where}: parent")
    federation_key = _federation_key_text(bundle["federation_key"].encode(), where)
    named = code_of(cert)
    if bundle["code"] != code or named != code:
        raise UserError(
            f"{where}: the bundle is for node {named}, but this node is {code}; "
            "install it at that node"
        )
    key_path = security / NODE_KEY
    if not key_path.exists():
        raise UserError(
            f"{key_path} does not exist: run `tongyuan pki request` here first, and have the "
            "parent issue for that request"
        )
    if not same_public_key(cert, load_private_key(key_path)):
        raise UserError(
            f"{where}: the certificate does not match this node's key {key_path} "
            "(issued for another request?)"
        )
    problem = validity_problem(cert, "the certificate")
    if problem:
        raise UserError(f"{where}: {problem}; ask the parent for a new one")
    if not is_root(root) or not issued_by(root, root):
        raise UserError(f"{where}: the root is not a self-signed federation root")
    path = [cert, *chain, root]
    for lower, upper in itertools.pairwise(path):
        if not issued_by(lower, upper):
            raise UserError(
                f"{where}: {_cn(lower.subject)}'s certificate is not signed by "
                f"{_cn(upper.subject)}: the chain does not lead to the root"
            )
        problem = validity_problem(upper, f"{_cn(upper.subject)}'s certificate")
        if problem:
            raise UserError(f"{where}: {problem}")
    issuer = issuer_code_of(cert)
    if issuer != bundle["issuer_code"] or issuer == code or not is_within(code, issuer):
        raise UserError(f"{where}: issued by {issuer}, which is not a node above {code}")
    if dns_names_of(cert) != [dns_name(code, issuer)]:
        raise UserError(
            f"{where}: the certificate names {', '.join(dns_names_of(cert)) or 'no DNS name'}, "
            f"not {dns_name(code, issuer)}"
        )
    # The parent's own certificate: the only key this node will take calls from.
    parent_issuer = chain[1] if len(chain) >= 2 else root
    if (
        code_of(parent) != issuer
        or is_root(parent)
        or not issued_by(parent, parent_issuer)
        or (chain and not same_public_key(parent, chain[0]))
    ):
        raise UserError(
            f"{where}: the parent certificate is not node {issuer}'s own certificate under "
            "the federation root"
        )
    existing_root = security / ROOT_CERT
    if (security / ROOT_KEY).exists() and existing_root.exists():
        raise UserError(f"node {code} holds the federation root; it takes no parent's certificate")
    write_public(security / ROOT_CERT, pem(root))
    write_public(security / CHAIN, b"".join(pem(c) for c in chain))
    write_public(security / FULLCHAIN, pem(cert) + b"".join(pem(c) for c in chain))
    write_public(security / PARENT_CERT, pem(parent))
    write_public(security / NODE_CERT, pem(cert))
    write_private(security / FEDERATION_KEY, (federation_key + "\n").encode())
    identity = load_identity(directory, code)
    assert identity is not None
    return identity


class Register:
    """What this node issued and revoked (`security/issued/register.json`)."""

    def __init__(self, directory: Path) -> None:
        self.path = security_dir(directory) / ISSUED_DIR / REGISTER

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{self.path}: unreadable register of issued certificates: {exc}"
            ) from None
        return list(doc.get("certificates", []))

    def _save(self, records: list[dict[str, Any]]) -> None:
        text = json.dumps({"certificates": records}, indent=2, ensure_ascii=False) + "\n"
        write_public(self.path, text.encode())

    def add(self, record: dict[str, Any], cert_pem: bytes) -> None:
        write_public(self.path.parent / f"{record['code']}-{record['serial']}.crt", cert_pem)
        self._save([*self.records(), record])

    def find(self, serial: str) -> dict[str, Any] | None:
        return next((r for r in self.records() if r["serial"] == serial), None)

    def revoke(self, code: str) -> list[dict[str, Any]]:
        """Mark every unrevoked certificate issued to `code` revoked; returns them."""
        records = self.records()
        moment = now_utc().isoformat()
        revoked = []
        for record in records:
            if record["code"] == code and record.get("revoked_at") is None:
                record["revoked_at"] = moment
                revoked.append(record)
        if revoked:
            self._save(records)
        return revoked
