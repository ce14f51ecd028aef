"""`tongyuan pki` on files: what a root, a request, an issue and an install write, and bad
input refused with one line and nothing written."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.cli import cli
from node.errors import UserError
from node.security import pki
from node.security.identity import (
    ChildRefused,
    FederationGuard,
    Refusals,
    Security,
    SecurityMode,
    check_child_certificate,
    open_channel,
    verify_child,
)


def files(directory: Path) -> dict[str, bytes]:
    security = directory / "security"
    return {str(p): p.read_bytes() for p in security.rglob("*") if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def federation(tmp_path: Path) -> dict[str, Path]:
    """A province root, a city certified by it, and a county's request to the city."""
    dirs = {name: tmp_path / name for name in ("province", "city", "county")}
    pki.init_root(dirs["province"], "320000")
    csr = pki.request(dirs["city"], "320100")
    province = pki.load_identity(dirs["province"], "320000")
    assert province is not None
    issued = pki.issue(province, csr, "city.csr")
    pki.install(dirs["city"], "320100", json.dumps(issued.bundle), "city.bundle")
    (tmp_path / "county.csr").write_bytes(pki.request(dirs["county"], "320102"))
    return dirs


def identity(directory: Path, code: str) -> pki.Identity:
    found = pki.load_identity(directory, code)
    assert found is not None
    return found


def test_files_formats_and_modes(federation: dict[str, Path], tmp_path: Path) -> None:
    province, city, county = federation["province"], federation["city"], federation["county"]
    key_text = (province / "security" / "federation.key").read_text()
    assert len(key_text) == 65 and key_text.endswith("\n") and int(key_text, 16) >= 0
    for secret in ("federation.key", "node.key", "root.key"):
        assert mode(province / "security" / secret) == 0o600, secret
    assert (city / "security" / "federation.key").read_text() == key_text
    assert not (city / "security" / "root.key").exists()

    city_id = identity(city, "320100")
    assert city_id.parent_code == "320000"
    cert = city_id.certificate
    assert cert.subject.rfc4514_string().startswith("O=Tongyuan federation,OU=city,CN=320100")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["node-320100.320000.tongyuan"]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)  # it certifies its counties

    bundle = pki.issue(city_id, (tmp_path / "county.csr").read_bytes(), "county.csr", days=30)
    leaf = x509.load_pem_x509_certificate(bundle.bundle["certificate"].encode())
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert timedelta(days=29) < leaf.not_valid_after_utc - pki.now_utc() <= timedelta(days=30)
    pki.install(county, "320102", json.dumps(bundle.bundle), "county.bundle")
    county_id = identity(county, "320102")
    assert county_id.parent_code == "320100"
    assert county_id.parent_issuer == identity(province, "320000").root
    assert (county / "security" / "fullchain.pem").read_bytes() == county_id.fullchain_pem()
    register = pki.Register(city).records()
    assert [(r["code"], r["revoked_at"]) for r in register] == [("320102", None)]
    check_child_certificate(city_id, "320102", leaf)  # issued here, current: accepted
    pki.Register(city).revoke("320102")
    with pytest.raises(UserError, match="was revoked at"):
        check_child_certificate(city_id, "320102", leaf)


def test_issue_refuses_what_is_not_below(federation: dict[str, Path], tmp_path: Path) -> None:
    city = identity(federation["city"], "320100")
    before = files(federation["city"])
    elsewhere = pki.request(tmp_path / "suzhou", "320500")  # a city, and not below 320100
    with pytest.raises(UserError, match="not below node 320100"):
        pki.issue(city, elsewhere, "x.csr")
    other_county = pki.request(tmp_path / "wuxi", "320205")
    with pytest.raises(UserError, match="not below node 320100"):
        pki.issue(city, other_county, "x.csr")
    with pytest.raises(UserError, match="not a PEM certificate request"):
        pki.issue(city, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "x.csr")
    assert files(federation["city"]) == before
    with pytest.raises(UserError, match="a county"):
        pki.init_root(tmp_path / "county-root", "320102")


def test_install_refuses_bad_bundles(federation: dict[str, Path], tmp_path: Path) -> None:
    city = identity(federation["city"], "320100")
    county = federation["county"]
    csr = (tmp_path / "county.csr").read_bytes()
    good = pki.issue(city, csr, "county.csr").bundle
    before = files(county)

    def refused(bundle: dict[str, object] | str, match: str, code: str = "320102") -> None:
        text = bundle if isinstance(bundle, str) else json.dumps(bundle)
        with pytest.raises(UserError, match=match):
            pki.install(county, code, text, "b.json")
        assert files(county) == before

    refused("{not json", "not a certificate bundle")
    refused(good, "the bundle is for node 320102, but this node is 320104", code="320104")
    # A certificate for another request (another key) of the same node.
    other = pki.issue(city, pki.request(tmp_path / "again", "320102"), "again.csr").bundle
    refused(other, "does not match this node's key")
    # Expired (and, separately, signed by a root outside the federation).
    key = pki.load_private_key(county / "security" / "node.key")
    city_key = pki.load_private_key(federation["city"] / "security" / "node.key")
    now = pki.now_utc()
    stale = pki.issue_certificate(
        "320102", key.public_key(), city.certificate, city_key,
        not_before=now - timedelta(days=10), not_after=now - timedelta(days=1),
    )  # fmt: skip
    refused(good | {"certificate": pki.pem(stale).decode()}, "expired")
    foreign_key = pki.new_key()
    foreign = pki.build_root("330000", foreign_key)
    refused(good | {"root": pki.pem(foreign).decode()}, "does not lead to the root")
    refused(good | {"federation_key": "xyz"}, "64 lower-case hex")


def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    """The commands, run in process (the same click commands as `tongyuan`)."""
    city = tmp_path / "city"

    def tongyuan(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--dir", str(city), *args])

    assert tongyuan("init", "--code", "320100", "--plaintext-dev").exit_code == 0
    missing = tongyuan("pki", "issue", str(tmp_path / "nope.csr"), "-o", "b")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        f"error: certificate request {tmp_path / 'nope.csr'} does not exist"
    )
    (tmp_path / "county.csr").write_bytes(pki.request(tmp_path / "county", "320102"))
    no_identity = tongyuan("pki", "issue", str(tmp_path / "county.csr"), "-o", str(tmp_path / "b"))
    assert no_identity.exit_code == 1 and no_identity.stderr.count("\n") == 1
    assert "node 320100 has no certificate" in no_identity.stderr
    assert not (tmp_path / "b").exists()
    revoke = tongyuan("pki", "revoke", "320102")
    assert revoke.exit_code == 1
    assert "node 320100 has issued no certificate to 320102" in revoke.stderr
    shown = json.loads(tongyuan("pki", "show", "--json").stdout)
    assert shown["mode"] == "plaintext-dev"


# ----- names and name constraints, in process: what gRPC (BoringSSL) and verify_child
# (OpenSSL) accept from an address ---------------------------------------------------------


class _Answering(pb_grpc.FederationServicer):
    def __init__(self, code: str) -> None:
        self.code = code

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        return pb.NodeInfo(code=self.code)


@contextmanager
def serving(key: bytes, chain: bytes, root: bytes, code: str) -> Iterator[str]:
    """A Federation port presenting `chain` (mutual TLS under `root`), answering GetInfo."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(_Answering(code), server)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=root, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def minted(
    code: str, names: list[str], issuer: pki.Identity
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate a (rogue) city signs with its own CA key, with any names."""
    key = pki.new_key()
    issuer_key = pki.load_private_key(issuer.key_path)
    # Without a SAN, gRPC matches the CN as the host name: put the wanted name there.
    common_name = code if names else pki.dns_name(code, "320500")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.now_utc() - timedelta(minutes=5))
        .not_valid_after(pki.now_utc() + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return key, builder.sign(issuer_key, hashes.SHA256())


def certified(directory: Path, code: str, parent: pki.Identity) -> pki.Identity:
    issued = pki.issue(parent, pki.request(directory, code), f"{code}.csr")
    return pki.install(directory, code, json.dumps(issued.bundle), f"{code}.bundle")


def test_a_city_cannot_mint_another_citys_county(tmp_path: Path) -> None:
    """Nanjing (320100) is a CA; it mints a certificate for 虎丘区 (320505), a county of
    Suzhou (320500), with the exact name Suzhou expects. Its name constraints
    (320100.tongyuan) make both TLS stacks refuse the path, and refusals are audited once
    a minute."""
    province = pki.init_root(tmp_path / "province", "320000")
    nanjing = certified(tmp_path / "nanjing", "320100", province)
    suzhou = certified(tmp_path / "suzhou", "320500", province)
    constraints = nanjing.certificate.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.DNSName("320100.tongyuan")]
    assert pki.dns_names_of(nanjing.certificate) == ["node-320100.320000.tongyuan"]
    huqiu = certified(tmp_path / "huqiu", "320505", suzhou)
    assert pki.dns_names_of(huqiu.certificate) == ["node-320505.320500.tongyuan"]
    assert huqiu.parent is not None and huqiu.parent == suzhou.certificate
    root = province.root_pem()
    parent = Security(SecurityMode.MTLS, suzhou, "320500")
    audited: list[tuple[str, dict[str, object]]] = []
    clock = [0.0]
    refusals = Refusals(lambda kind, detail: audited.append((kind, detail)), lambda: clock[0])

    def get_info(address: str) -> str:
        with open_channel(parent, address, "320505", []) as channel:
            stub = pb_grpc.FederationStub(channel)
            return stub.GetInfo(pb.GetInfoRequest(caller_code="320500"), timeout=5).code

    # The real county: both checks pass (the control).
    with serving(huqiu.key_bytes(), huqiu.fullchain_pem(), root, "320505") as address:
        verify_child(parent, "320505", address, refusals=refusals)
        assert get_info(address) == "320505"
    assert audited == []

    # Nanjing's forgeries: with the name in the SAN, or (no SAN) in the CN.
    for names in (["node-320505.320500.tongyuan"], []):
        key, forged = minted("320505", names, nanjing)
        chain = pki.pem(forged) + nanjing.fullchain_pem()
        with serving(pki.key_pem(key), chain, root, "320505") as address:
            with pytest.raises(grpc.RpcError) as caught:  # gRPC's own handshake
                get_info(address)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            # BoringSSL's own verdict: the path breaks Nanjing's name constraints.
            assert re.search(
                "CERTIFICATE_VERIFY_FAILED: (permitted subtree violation|Issuer has name "
                "constraints but leaf has no SANs)",
                caught.value.details() or "",
            )
            with pytest.raises(ChildRefused, match="permitted subtree violation"):  # OpenSSL
                verify_child(parent, "320505", address, refusals=refusals)
            with pytest.raises(ChildRefused):  # refused again: audited once a minute
                verify_child(parent, "320505", address, refusals=refusals)
        clock[0] += 61
    assert [kind for kind, _ in audited] == ["login.refused", "login.refused"]
    detail = audited[0][1]
    assert detail["caller"] == "320505" and "permitted subtree violation" in str(detail["reason"])


class _Aborted(Exception):
    pass


class _Context:
    """What FederationGuard reads of a gRPC call: the peer and its TLS certificate."""

    def __init__(self, cert: x509.Certificate) -> None:
        self._pem = pki.pem(cert)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def test_a_child_takes_calls_only_from_its_parents_key(tmp_path: Path) -> None:
    """The child pins its parent's key (security/parent.crt): another certificate for the
    parent's code, even one the root issued, is refused; a renewal with the same key
    passes. Both for a city (parent: the root's holder) and a county (parent: a city CA)."""
    province = pki.init_root(tmp_path / "province", "320000")
    city = certified(tmp_path / "city", "320100", province)
    county = certified(tmp_path / "county", "320102", city)
    assert city.parent == province.certificate and county.parent == city.certificate
    audited: list[dict[str, object]] = []
    root_key = pki.load_private_key(province.security / "root.key")

    def call(child: pki.Identity, caller: x509.Certificate, code: str) -> None:
        guard = FederationGuard(
            SimpleNamespace(code=child.code),  # type: ignore[arg-type]
            Security(SecurityMode.MTLS, child, child.code),
        )
        guard.attach_audit(lambda kind, detail: audited.append(detail | {"kind": kind}))
        guard._authorize("GetInfo", pb.GetInfoRequest(caller_code=code), _Context(caller))  # type: ignore[arg-type]

    for child, parent, issuer, issuer_key in (
        (city, province, province.root, root_key),
        (county, city, province.root, root_key),
    ):
        call(child, parent.certificate, parent.code)  # the real parent: accepted
        own_key = pki.load_private_key(parent.key_path)
        renewed = pki.issue_certificate(parent.code, own_key.public_key(), issuer, issuer_key)
        call(child, renewed, parent.code)  # same key, new certificate: accepted
        other = pki.issue_certificate(parent.code, pki.new_key().public_key(), issuer, issuer_key)
        with pytest.raises(_Aborted) as caught:
            call(child, other, parent.code)
        assert caught.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
        assert f"does not hold the key of node {child.code}'s parent" in caught.value.args[1]
    assert [d["kind"] for d in audited] == ["login.refused", "login.refused"]
