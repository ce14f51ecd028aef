"""Node identity end to end: a province → city → county chain certified with `tongyuan pki`,
syncing over mutual TLS, and the attacks on identity refused: a sibling answering on a
registered child's address, a sibling calling as the parent, a certificate from another
root or for another key, an expired certificate (either way), a revoked child (without
restarting the parent). The certificate logic itself is tested in process in test_pki."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pyarrow.csv as pa_csv
import pytest
from click.testing import CliRunner
from conftest import Cluster, Node, free_port, wait_until
from test_setup import FAST, Setups

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.cli import cli
from node.client import NodeAPI, open_node
from node.config import Child
from node.demo_data import fake_people
from node.errors import UserError
from node.federation import links
from node.security import identity, pki
from node.security.identity import Refusals, Security, SecurityMode, verify_child


@contextmanager
def handle(node: Node) -> Iterator[NodeAPI]:
    """The node's own client in process: its admin API when it serves, else its store
    (the operations the CLI calls, without starting a process for each)."""
    api = open_node(node.directory, write=True)
    try:
        yield api
    finally:
        api.close()


def call(node: Node, method: str, **args: Any) -> Any:
    with handle(node) as api:
        return api.call(method, args)


def certify(parent: Node, *children: Node) -> None:
    """The operators' steps: `pki request` at each child, `pki issue` at the parent, `pki
    install` (the CLI around them: test_pki and the setup script test)."""
    with ThreadPoolExecutor() as pool:
        csrs = list(pool.map(lambda child: call(child, "pki.request")["csr"], children))
        with handle(parent) as api:
            bundles = [
                json.dumps(
                    api.call("pki.issue", {"csr": csr, "where": f"{child.code}.csr"})["bundle"]
                )
                for child, csr in zip(children, csrs, strict=True)
            ]
        list(
            pool.map(
                lambda pair: call(pair[0], "pki.install", bundle=pair[1]),
                zip(children, bundles, strict=True),
            )
        )


def nodes(cluster: Cluster, *codes: str, plaintext: bool = False) -> list[Node]:
    """Nodes initialised (without --plaintext-dev unless asked) by `tongyuan init` run in
    process: a few seconds less than a process each."""
    made = [cluster.node(code, init=False) for code in codes]
    for node in made:
        args = ["--dir", str(node.directory), "init", "--code", node.code]
        args += ["--listen", node.address, *(["--plaintext-dev"] if plaintext else [])]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    return made


def tls_stub(
    target: Node, key: bytes, chain: bytes, root: bytes | None = None
) -> tuple[grpc.Channel, pb_grpc.FederationStub]:
    """A Federation client presenting `chain` (with `key`) to `target`, verifying it by name."""
    security = target.directory / "security"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root or (security / "root.crt").read_bytes(),
        private_key=key,
        certificate_chain=chain,
    )
    channel = grpc.secure_channel(
        target.address,
        credentials,
        options=[("grpc.ssl_target_name_override", pki.own_dns_name(security))],
    )
    return channel, pb_grpc.FederationStub(channel)


def refused(stub: pb_grpc.FederationStub, caller_code: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetInfo(pb.GetInfoRequest(caller_code=caller_code), timeout=5)
    return caught.value


def child_row(node: Node, code: str) -> dict[str, Any]:
    return next(c for c in node.fetch_status()["children"] if c["code"] == code)


def people_csv(tmp_path: Path, name: str, count: int, seed: int) -> Path:
    path = tmp_path / name
    pa_csv.write_csv(fake_people("320102", count, seed=seed), path)
    return path


def test_chain_over_mutual_tls_refuses_impostors_and_revoked_children(
    cluster: Cluster, tmp_path: Path
) -> None:
    province, city, county, sibling = nodes(cluster, "320000", "320100", "320102", "320104")
    call(province, "pki.init_root")
    certify(province, city)
    certify(city, county, sibling)
    assert (county.directory / "security" / "federation.key").read_bytes() == (
        province.directory / "security" / "federation.key"
    ).read_bytes()
    with handle(city) as api:
        api.add_child(county.code, county.address)
    with handle(province) as api:
        api.add_child(city.code, city.address)
    resource = {
        "code": "320102-GA-001", "name": "户籍人口", "summary": "people",
        "department": "公安局", "entity": "person", "update_frequency": "daily",
        "sharing": "unconditional",
    }  # fmt: skip
    with handle(county) as api:
        api.call(
            "catalog.add",
            {"entries": [resource], "source": "test", "actor": "test", "publish": True,
             "fill_defaults": True},
        )  # fmt: skip
        api.ingest("320102-GA-001", people_csv(tmp_path, "a.csv", 20, seed=1))

    # The sibling's own certificate, then an expired one in its place: it will serve with
    # that, and its parent must refuse it.
    sibling_security = sibling.directory / "security"
    sibling_key = (sibling_security / "node.key").read_bytes()
    sibling_chain = (sibling_security / "fullchain.pem").read_bytes()
    city_ca = pki.load_identity(city.directory, "320100")
    assert city_ca is not None
    now = pki.now_utc()
    stale = pki.issue_certificate(
        "320104", pki.load_private_key(sibling_security / "node.key").public_key(),
        city_ca.certificate, pki.load_private_key(city_ca.key_path),
        not_before=now - timedelta(days=30), not_after=now - timedelta(seconds=1),
    )  # fmt: skip
    (sibling_security / "node.crt").write_bytes(pki.pem(stale))
    (sibling_security / "fullchain.pem").write_bytes(pki.pem(stale) + city_ca.fullchain_pem())

    for node in (county, city, province, sibling):
        node.start(wait=False)
    for node in (county, city, province):
        node.wait_serving()
    security = county.fetch_status()["security"]
    assert (security["mode"], security["parent"]) == ("mtls", "320100")
    count = "SELECT count(*) AS n FROM person"
    wait_until(lambda: province.fetch(count)[0]["n"] == 20, what="20 people at the province")

    # A sibling calling the county as if it were its parent: refused, naming both codes.
    channel, stub = tls_stub(county, sibling_key, sibling_chain)
    with channel:
        error = refused(stub, "320104")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node 320104 is not the parent of node 320102" in (error.details() or "")
        with pytest.raises(grpc.RpcError) as pulled:
            next(iter(stub.PullChanges(pb.PullRequest(parent_code="320100"), timeout=5)))
        assert pulled.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The real parent's certificate, but the request speaks for another node.
    city_security = city.directory / "security"
    channel, stub = tls_stub(
        county,
        (city_security / "node.key").read_bytes(),
        (city_security / "fullchain.pem").read_bytes(),
    )
    with channel:
        error = refused(stub, "320000")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "names node 320000" in (error.details() or "")
        assert stub.GetInfo(pb.GetInfoRequest(caller_code="320100"), timeout=5).code == "320102"

    # A certificate from another root: the TLS handshake refuses it.
    foreign_key = pki.new_key()
    foreign_root = pki.build_root("330000", foreign_key)
    impostor_key = pki.new_key()
    impostor = pki.issue_certificate("320100", impostor_key.public_key(), foreign_root, foreign_key)
    channel, stub = tls_stub(county, pki.key_pem(impostor_key), pki.pem(impostor))
    with channel:
        assert refused(stub, "320100").code() == grpc.StatusCode.UNAVAILABLE

    # An expired certificate of the real parent (its own key, signed by the real root).
    root_key = pki.load_private_key(province.directory / "security" / "root.key")
    root = pki.load_certificate((province.directory / "security" / "root.crt").read_bytes(), "root")
    city_key = pki.load_private_key(city_security / "node.key")
    expired = pki.issue_certificate(
        "320100", city_key.public_key(), root, root_key,
        not_before=now - timedelta(days=30), not_after=now - timedelta(days=1),
    )  # fmt: skip
    channel, stub = tls_stub(county, pki.key_pem(city_key), pki.pem(expired))
    with channel:
        assert refused(stub, "320100").code() == grpc.StatusCode.UNAVAILABLE
    # A valid certificate the root issued for the city's code, but for another key: the
    # county takes calls only from the key of its parent's certificate it installed.
    other_key = pki.new_key()
    other = pki.issue_certificate("320100", other_key.public_key(), root, root_key)
    channel, stub = tls_stub(county, pki.key_pem(other_key), pki.pem(other))
    with channel:
        error = refused(stub, "320100")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "does not hold the key of node 320102's parent" in (error.details() or "")

    # The sibling registered at the county's address: its valid certificate names another
    # node, so the city refuses to pull from it and nothing arrives by that link.
    with handle(city) as api:
        api.add_child("320104", county.address)
    wait_until(
        lambda: "valid certificate for node 320104" in str(child_row(city, "320104")["error"]),
        what="the impostor link refused",
    )
    assert child_row(city, "320104")["rows"] == 0
    assert child_row(city, "320104")["checkpoint"] == 0
    # At its own address, the sibling serves its expired certificate: refused too.
    with handle(city) as api:
        api.remove_child("320104")
        api.add_child("320104", sibling.address)
    wait_until(
        lambda: "expired" in str(child_row(city, "320104")["error"]),
        what="the expired child refused",
    )
    assert child_row(city, "320104")["checkpoint"] == 0

    # Revocation, while the city serves: the link is cut now and refused afterwards.
    pid = city.process.pid if city.process else None
    revoked = json.loads(city.cli("pki", "revoke", "320102", "--json").stdout)
    assert revoked["link_cut"] is True
    wait_until(
        lambda: "revoked" in str(child_row(city, "320102")["error"]),
        what="the revoked child's link error",
    )
    with handle(county) as api:
        api.ingest("320102-GA-001", people_csv(tmp_path, "b.csv", 25, seed=1))
    wait_until(lambda: county.fetch(count)[0]["n"] == 25, what="25 people at the county")
    with pytest.raises(AssertionError):
        wait_until(lambda: city.fetch(count)[0]["n"] != 20, timeout=1.5, what="no new rows")
    assert city.running and city.process is not None and city.process.pid == pid
    listed = call(city, "pki.list")
    assert {(r["code"], r["status"]) for r in listed} == {
        ("320102", "revoked"),
        ("320104", "valid"),
    }

    # Refusals and PKI actions are in the audit chains.
    county_kinds = {r["kind"] for r in county.fetch("SELECT kind FROM tongyuan.audit_chain")}
    assert "login.refused" in county_kinds and "pki.installed" in county_kinds
    city_kinds = {r["kind"] for r in city.fetch("SELECT kind FROM tongyuan.audit_chain")}
    assert {"pki.issued", "pki.revoked", "pki.installed"} <= city_kinds
    # The city's own refusals of children (the sibling on the county's address, expired at
    # its own, the revoked county): each once, though its links retried within the minute.
    reasons = Counter(
        (json.loads(r["detail"])["caller"], json.loads(r["detail"])["reason"])
        for r in city.fetch("SELECT detail FROM tongyuan.audit_chain WHERE kind = 'login.refused'")
    )
    assert set(reasons.values()) == {1}, reasons
    assert {caller for caller, _ in reasons} == {"320102", "320104"}
    texts = " | ".join(reason for _, reason in reasons)
    for expected in ("Hostname mismatch", "expired", "was revoked at"):
        assert expected in texts, reasons


def test_plaintext_shown_loudly_and_no_certificate_refuses_federation(cluster: Cluster) -> None:
    (dev,) = nodes(cluster, "320102", plaintext=True)
    (bare,) = nodes(cluster, "320104")
    assert dev.fetch_status()["security"]["mode"] == "plaintext-dev"
    assert bare.fetch_status()["security"]["mode"] == "no-certificate"
    shown = [CliRunner().invoke(cli, ["--dir", str(n.directory), "status"]) for n in (dev, bare)]
    assert "PLAINTEXT — development only" in shown[0].output
    assert "NO CERTIFICATE" in shown[1].output
    dev.start(wait=False)
    bare.start()  # health answers without a certificate
    with grpc.insecure_channel(bare.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.FederationStub(channel).GetInfo(pb.GetInfoRequest(caller_code="320100"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "node 320104 has no certificate: run `tongyuan pki request`" in (
        caught.value.details() or ""
    )
    # In plaintext development mode nothing is authenticated, but the model goes only to
    # a node above (the caller the request names).
    dev.wait_serving()
    with grpc.insecure_channel(dev.address) as channel:
        stub = pb_grpc.FederationStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModel(pb.GetModelRequest(caller_code="320104"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node 320104 is not above node 320102" in (caught.value.details() or "")
        assert stub.GetModel(pb.GetModelRequest(caller_code="320100"), timeout=5).digest


@pytest.fixture
def setups(tmp_path: Path) -> Iterator[Setups]:
    runs = Setups(tmp_path)
    try:
        yield runs
    finally:
        runs.cleanup()


def test_setup_script_requests_then_installs_a_certificate(
    setups: Setups, cluster: Cluster, tmp_path: Path
) -> None:
    """setup-county writes the node's request; run again with the parent's bundle, it
    installs it, restarts the node and checks its health over mutual TLS."""
    (city,) = nodes(cluster, "320100")
    call(city, "pki.init_root")
    directory, prefix = tmp_path / "county", tmp_path / "prefix"
    address = f"127.0.0.1:{free_port()}"
    args = [*FAST, "--code", "320102", "--listen", address, "--dir", str(directory),
            "--prefix", str(prefix)]  # fmt: skip
    first = setups.run("county", *args).stdout
    assert "[ok]   certificates: wrote the certificate request" in first
    request = directory / "security" / "node.csr"
    bundle = tmp_path / "county.bundle"
    issued = call(city, "pki.issue", csr=request.read_text(), where=str(request))
    pki.write_private(bundle, json.dumps(issued["bundle"]).encode())
    with handle(city) as api:
        api.add_child("320102", address)
    city.start(wait=False)
    second = setups.run("county", *args, "--pki-bundle", str(bundle)).stdout
    assert f"[ok]   certificates: installed {bundle}: federation is mutual TLS" in second
    assert f"node 320102 answers SERVING on {address}" in second
    city.wait_serving()
    wait_until(lambda: child_row(city, "320102")["state"] == "streaming", what="mTLS link")
    third = setups.run("county", *args, "--pki-bundle", str(bundle)).stdout
    assert "[skip] certificates: the bundle's certificate is installed" in third


def test_a_link_is_trusted_only_after_every_identity_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduled pulls (audit anchors, quality, grants) run only on a trusted link:
    it becomes trusted after the certificate *and* GetInfo's code and node id agree, and
    it still does when the deliveries that follow fail."""
    monkeypatch.setattr(links, "verify_child", lambda *args, **kwargs: None)
    answers = {"code": "320102", "node_id": "n-1"}

    class Stub:
        def GetInfo(self, request: pb.GetInfoRequest, timeout: float) -> pb.NodeInfo:
            return pb.NodeInfo(code=answers["code"], node_id=answers["node_id"])

    class Store:
        def link_node_id(self, code: str) -> str:
            return "n-1"

    link = object.__new__(links.ChildLink)  # just what _check_identity reads
    link.child = Child("320102", "127.0.0.1:1")
    link._config = SimpleNamespace(code="320100")  # type: ignore[assignment]
    link._security = Security(SecurityMode.MTLS, None, "320100")
    link._store = Store()  # type: ignore[assignment]
    link._stub = Stub()  # type: ignore[assignment]
    link._refusals = Refusals()
    link._cut = None
    link._call = None
    link._return_call = None
    link._trusted = False
    link._pull_model = lambda digest: None  # type: ignore[method-assign]

    def deliveries_fail(info: object) -> None:
        raise RuntimeError("delivery failed")

    link._deliver_downward = deliveries_fail  # type: ignore[method-assign]
    for wrong, match in (("code", "serves node 320104"), ("node_id", "store was replaced")):
        answers[wrong] = {"code": "320104", "node_id": "n-2"}[wrong]
        with pytest.raises(UserError, match=match):
            link._check_identity()
        assert link._trusted is False
        answers.update(code="320102", node_id="n-1")
    with pytest.raises(RuntimeError):
        link._check_identity()
    assert link._trusted is True
    link.cut("child 320102: its certificate was revoked")
    assert link._trusted is False


def _bare_link(calls: dict[str, Any]) -> links.ChildLink:
    """A ChildLink with just what a session reads: a child whose identity checks pass and
    whose PullChanges call is noted (cancelled or not), its store a stand-in."""

    class Call:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

        def __iter__(self) -> Iterator[Any]:
            return iter(())

    class Stub:
        def GetInfo(self, request: pb.GetInfoRequest, timeout: float) -> pb.NodeInfo:
            return pb.NodeInfo(code="320102", node_id="n-1")

        def PullChanges(self, request: pb.PullRequest, timeout: float | None) -> Call:
            calls["pull"] = Call()
            return calls["pull"]

    class Store:
        def link(self, code: str) -> None:
            return None

        def link_node_id(self, code: str) -> str:
            return "n-1"

        def record_link_error(self, code: str, message: str) -> None:
            calls.setdefault("errors", []).append(message)

    link = object.__new__(links.ChildLink)
    link.child = Child("320102", "127.0.0.1:1")
    link._config = SimpleNamespace(  # type: ignore[assignment]
        code="320100",
        sync=SimpleNamespace(
            batch_changes=100, heartbeat_seconds=1.0, subscribe=True, pull_interval_seconds=1.0
        ),
    )
    link._security = Security(SecurityMode.MTLS, None, "320100")
    link._store = Store()  # type: ignore[assignment]
    link._stub = Stub()  # type: ignore[assignment]
    link._refusals = Refusals()
    link._cut = None
    link._call = None
    link._return_call = None
    link._trusted = False
    link._stopping = threading.Event()
    link._session = threading.Lock()
    link._log = {"child": "320102"}
    link.state, link.error, link.pull_errors = "connecting", None, 0
    link._pull_model = lambda digest: None  # type: ignore[method-assign]
    link._deliver_downward = lambda info=None: None  # type: ignore[method-assign]
    link._take_grant_info = lambda info: None  # type: ignore[method-assign]

    def applied(received: Any, follow: bool) -> None:
        calls["applied"] = True

    link._apply_stream = applied  # type: ignore[method-assign]
    return link


def test_a_revocation_during_the_identity_check_is_never_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cut() while the register is read, or after the check passed but before the
    stream's call exists, ends the session: nothing of the child's is applied."""
    reason = "child 320102: its certificate was revoked"
    calls: dict[str, Any] = {}
    link = _bare_link(calls)

    def revoked_while_reading(*args: Any, **kwargs: Any) -> None:
        link.cut(reason)  # `pki revoke` lands while verify_child reads the register

    monkeypatch.setattr(links, "verify_child", revoked_while_reading)
    with pytest.raises(UserError, match="revoked"):
        link._check_identity()
    assert link._trusted is False and link._cut == reason

    monkeypatch.setattr(links, "verify_child", lambda *args, **kwargs: None)
    link._check_identity()  # a new session clears the old cut: checked again
    assert link._trusted is True and link._cut is None

    # Revoked during the deliveries after the check, when cut() finds no call to cancel.
    link._deliver_downward = lambda info=None: link.cut(reason)  # type: ignore[method-assign]
    assert link._pull_session(follow=True) is False
    assert "applied" not in calls and calls["pull"].cancelled
    assert link.error == reason and link._trusted is False and link.state == "down"

    # A batch arriving after a cut is refused, not applied.
    with pytest.raises(UserError, match="revoked"):
        link._apply([])


def test_an_unexpected_failure_of_a_session_never_ends_the_link(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: dict[str, Any] = {}
    link = _bare_link(calls)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("register.json")

    monkeypatch.setattr(links, "verify_child", broken)
    link._trusted = True
    with caplog.at_level("WARNING", logger=links.__name__):
        assert link._pull_session(follow=True) is False
        assert link._pull_session(follow=True) is False
    assert link.state == "down" and link.pull_errors == 2 and link._trusted is False
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # once per problem, with its traceback

    sessions: list[bool] = []

    def session(follow: bool) -> bool:
        sessions.append(follow)
        if len(sessions) == 1:
            raise RuntimeError("a bug outside the session's own handling")
        link._stopping.set()
        return True

    link._pull_session = session  # type: ignore[method-assign]
    link._stream_forever()  # survives the first session's exception
    assert sessions == [True, True]


def test_a_key_that_does_not_match_the_certificate_is_a_user_error(tmp_path: Path) -> None:
    own = pki.init_root(tmp_path, "320000")
    own.key_path.write_bytes(pki.key_pem(pki.new_key()))  # a key for another certificate
    with pytest.raises(UserError, match=r"node\.key does not match node\.crt"):
        verify_child(Security(SecurityMode.MTLS, own, "320000"), "320100", "127.0.0.1:1")
    own.key_path.unlink()
    with pytest.raises(UserError, match="cannot read"):
        verify_child(Security(SecurityMode.MTLS, own, "320000"), "320100", "127.0.0.1:1")


def test_a_replacing_link_waits_for_the_old_ones_threads() -> None:
    link = object.__new__(links.ChildLink)
    link._stopping = threading.Event()
    release, ran = threading.Event(), threading.Event()
    old = threading.Thread(target=release.wait, daemon=True)
    old.start()
    new = threading.Thread(target=link._after(old, ran.set), daemon=True)
    new.start()
    assert not ran.wait(0.3)  # the old worker still runs: the new one has not started
    release.set()
    new.join(5)
    assert ran.is_set()


def test_refusals_are_capped_per_minute_with_one_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers without certificates are told apart by address: many addresses write at
    most REFUSAL_REPORT_MAX entries a minute, and one entry for the rest."""
    monkeypatch.setattr(identity.threading, "Timer", _NoTimer)
    audited: list[dict[str, Any]] = []
    clock = [0.0]
    refusals = Refusals(lambda kind, detail: audited.append(detail), lambda: clock[0])
    cap = identity.REFUSAL_REPORT_MAX
    recorded = [refusals.report(f"10.0.{i}.1", "no client certificate", {}) for i in range(50)]
    assert recorded.count(True) == cap and len(audited) == cap
    assert _NoTimer.started == 1  # the summary is due when the minute ends
    clock[0] += 61
    assert refusals.report("10.1.0.1", "no client certificate", {}) is True
    summary, entry = audited[cap:]
    assert summary["more"] == 20 and summary["reason"].startswith("20 more refusals")
    assert entry["reason"] == "no client certificate"
    for i in range(cap + 4):  # the new minute: 1 recorded already, cap - 1 more, 5 over
        refusals.report(f"10.2.{i}.1", "no client certificate", {})
    clock[0] += 61
    refusals.flush()  # the minute ended with no refusal after it: the timer's call
    assert audited[-1]["more"] == 5 and len(audited) == 2 * cap + 2
    refusals.flush()
    assert len(audited) == 2 * cap + 2  # once


class _NoTimer:
    started = 0

    def __init__(self, interval: float, function: Any) -> None:
        self.daemon = False

    def start(self) -> None:
        _NoTimer.started += 1
