"""Edges of the federation link with real node processes: a child that sends batches
which do not decode or do not fit, the wrong node at a child's address, re-delivery
over the wire, the admin API's token and loopback binding, the stock health and
reflection services, and `children add` refusing what cannot be a child.

The only fake is a misbehaving child: a small Federation server inside the test
process that sends crafted ChangeBatch messages to a real parent node.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import stat
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import Cluster, Node, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node._gen.tongyuan.v1 import federation_pb2_grpc as pb_grpc
from node.admin import AdminEndpoint, RemoteNode, read_endpoint
from node.demo_data import fake_people
from node.errors import UserError
from node.model import load_base_model
from node.wire import encode_table

CHILD = "320102"
CITY = "320100"

# ----- a misbehaving child ------------------------------------------------------------

PERSON = load_base_model().storage_entities()["person"]


def person_changes(first_seq: int, count: int, *, origin: str = CHILD) -> pa.Table:
    """`count` person changes with origin_seq first_seq.., in the wire schema."""
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "id_number": f"3201021990{seq:08d}",
            "name": f"居民{seq}",
            "sex": "1",
            "birth_date": dt.date(1990, 1, 1),
            "phone": f"1380000{seq:04d}",
            "address": f"南京市玄武区{seq}号",
            "division_code": CHILD,
            "_deleted": False,
            "origin_node": origin,
            "origin_seq": seq,
            "origin_dept": "公安局",
            "origin_batch": "fakebatch",
            "origin_time": now,
        }
        for seq in range(first_seq, first_seq + count)
    ]
    return pa.Table.from_pylist(rows, schema=PERSON.wire_schema())


def change_batch(
    after: int, last: int, table: pa.Table | None = None, *, entity: str = "person"
) -> pb.ChangeBatch:
    """The window (after, last]; by default its changes are persons after+1..last."""
    if table is None:
        table = person_changes(after + 1, last - after)
    return pb.ChangeBatch(
        after_seq=after,
        last_seq=last,
        head_seq=last,
        sent_at_us=time.time_ns() // 1000,
        entities=[pb.EntityChanges(entity=entity, arrow_ipc=encode_table(table), rows=len(table))],
    )


class FakeChild(pb_grpc.FederationServicer):
    """Answers as node `code` and sends the scripted windows on every PullChanges,
    whatever `after_seq` the parent asks for; then heartbeats, or ends the stream."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.address = ""
        self._lock = threading.Lock()
        self._script: list[pb.ChangeBatch] = []
        self._end_stream = False
        self.pulls: list[int] = []
        self.acks: list[int] = []
        self.closed = threading.Event()

    def send(self, batches: list[pb.ChangeBatch], *, end_stream: bool = False) -> None:
        with self._lock:
            self._script = list(batches)
            self._end_stream = end_stream

    @property
    def head(self) -> int:
        with self._lock:
            return max((b.last_seq for b in self._script), default=0)

    def pulled_after(self) -> list[int]:
        with self._lock:
            return list(self.pulls)

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        return pb.NodeInfo(code=self.code, name="fake", tier="county", head_seq=self.head)

    def Acknowledge(self, request: pb.AckRequest, context: grpc.ServicerContext) -> pb.AckReply:
        with self._lock:
            self.acks.append(request.applied_seq)
        return pb.AckReply(head_seq=self.head)

    def PullChanges(
        self, request: pb.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ChangeBatch]:
        with self._lock:
            self.pulls.append(request.after_seq)
            script, end_stream = list(self._script), self._end_stream
        yield from script
        if end_stream or not request.follow:
            return
        while context.is_active() and not self.closed.wait(0.3):
            head = self.head
            yield pb.ChangeBatch(after_seq=head, last_seq=head, head_seq=head)


@contextmanager
def fake_child(code: str = CHILD) -> Iterator[FakeChild]:
    fake = FakeChild(code)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_FederationServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    fake.address = f"127.0.0.1:{port}"
    server.start()
    try:
        yield fake
    finally:
        fake.closed.set()
        server.stop(grace=None).wait()


# ----- what an operator looks at ------------------------------------------------------


def child_status(parent: Node) -> dict[str, Any]:
    (child,) = parent.fetch_status()["children"]
    return dict(child)


def person_count(node: Node) -> int:
    return int(node.fetch("SELECT count(*) AS n FROM tongyuan.rows_person")[0]["n"])


def doubled_identities(node: Node) -> int:
    (row,) = node.fetch(
        "SELECT count(*) - count(DISTINCT (origin_node, id_number)) AS n FROM tongyuan.rows_person"
    )
    return int(row["n"])


# ----- 1. batches that do not decode or do not fit ------------------------------------


def _garbage() -> pb.ChangeBatch:
    batch = change_batch(0, 3)
    batch.entities[0].arrow_ipc = b"\x00\x01 this is not an Arrow IPC stream \xff"
    return batch


def _missing_column() -> pb.ChangeBatch:
    # An attribute this node's model added may be missing (it arrives empty); the
    # lineage a change needs may not.
    return change_batch(0, 3, person_changes(1, 3).drop_columns(["origin_dept"]))


def _extra_column() -> pb.ChangeBatch:
    table = person_changes(1, 3)
    return change_batch(0, 3, table.append_column("gender", pa.array(["1"] * 3, pa.string())))


def _wrong_type() -> pb.ChangeBatch:
    table = person_changes(1, 3)
    index = table.schema.get_field_index("birth_date")
    as_text = pa.array(["1990-01-01"] * 3, pa.string())
    return change_batch(0, 3, table.set_column(index, "birth_date", as_text))


def _unknown_entity() -> pb.ChangeBatch:
    return change_batch(0, 3, entity="vehicle")


def _empty_origin_seq() -> pb.ChangeBatch:
    table = person_changes(1, 3)
    index = table.schema.get_field_index("origin_seq")
    return change_batch(0, 3, table.set_column(index, "origin_seq", pa.array([1, None, 3])))


def _gap() -> pb.ChangeBatch:
    return change_batch(2, 3)  # the parent's checkpoint is 0: changes 1..2 would be skipped


def _empty_key() -> pb.ChangeBatch:
    table = person_changes(1, 3)
    index = table.schema.get_field_index("id_number")
    keys = pa.array(["320102199000000001", None, "320102199000000003"])
    return change_batch(0, 3, table.set_column(index, "id_number", keys))


def _nanosecond_time() -> pb.ChangeBatch:
    table = person_changes(1, 3)
    index = table.schema.get_field_index("origin_time")
    ns = pa.array([1_700_000_000_000_000_001] * 3, pa.timestamp("ns", tz="UTC"))
    return change_batch(0, 3, table.set_column(index, "origin_time", ns))


BAD_BATCHES: list[Any] = [
    pytest.param(_garbage, "not valid Arrow IPC", id="garbage-bytes"),
    pytest.param(_missing_column, "missing column(s) origin_dept", id="missing-column"),
    pytest.param(_extra_column, "gender not in this node's model", id="extra-column"),
    pytest.param(_wrong_type, "column birth_date: type string does not fit date32", id="type"),
    pytest.param(_unknown_entity, "'vehicle' is not in this node's model", id="unknown-entity"),
    pytest.param(_empty_origin_seq, "column origin_seq: has empty values", id="empty-origin"),
    pytest.param(_gap, "refusing to skip changes", id="gap"),
    # A record without its key cannot be matched on re-delivery: it would be doubled.
    pytest.param(_empty_key, "id_number", id="empty-key"),
    # Sub-microsecond times do not fit the wire's microsecond timestamps.
    pytest.param(_nanosecond_time, "origin_time", id="nanosecond-time"),
]


@pytest.mark.parametrize(("bad_batch", "what"), BAD_BATCHES)
def test_a_batch_that_does_not_fit_is_rejected_and_the_next_good_one_goes_through(
    cluster: Cluster, bad_batch: Callable[[], pb.ChangeBatch], what: str
) -> None:
    city = cluster.node(CITY, "city").start()
    with fake_child() as fake:
        fake.send([bad_batch()])
        city.cli("children", "add", CHILD, fake.address)

        wait_until(
            lambda: what in (child_status(city)["error"] or ""),
            timeout=20,
            what=f"the child's error to say {what!r}",
        )
        # The parent keeps retrying from where it was: its checkpoint never moved.
        wait_until(lambda: len(fake.pulled_after()) >= 2, timeout=20, what="a retry")
        assert set(fake.pulled_after()) == {0}
        wait_until(lambda: child_status(city)["state"] == "down", what="the link down")
        assert child_status(city)["checkpoint"] == 0
        assert person_count(city) == 0
        assert city.fetch_status()["head_seq"] == 1  # only the node tree's record of the child
        rejected = [line for line in city.log().splitlines() if what in line]
        assert rejected, f"the parent's log does not mention {what!r}:\n{city.log()}"
        assert f"child {CHILD}" in rejected[-1]
        assert 3 not in fake.acks

        fake.send([change_batch(0, 3)])
        wait_until(lambda: child_status(city)["checkpoint"] == 3, timeout=20, what="checkpoint 3")
        assert person_count(city) == 3
        rows = city.fetch("SELECT origin_node, origin_seq, origin_dept FROM person ORDER BY 2")
        assert rows == [
            {"origin_node": CHILD, "origin_seq": seq, "origin_dept": "公安局"} for seq in (1, 2, 3)
        ]
        wait_until(lambda: child_status(city)["state"] == "streaming", what="streaming again")
        wait_until(lambda: 3 in fake.acks, timeout=10, what="the parent to acknowledge 3")
        status = child_status(city)
        assert (status["lag"], status["rows"]) == (0, 3)


def test_a_healthy_stream_clears_the_last_error(cluster: Cluster) -> None:
    """After a rejected batch, a stream that now carries good windows shows no error."""
    city = cluster.node(CITY, "city").start()
    with fake_child() as fake:
        fake.send([_missing_column()])
        city.cli("children", "add", CHILD, fake.address)
        wait_until(lambda: child_status(city)["error"] is not None, timeout=20, what="an error")
        fake.send([change_batch(0, 3)])
        wait_until(lambda: child_status(city)["checkpoint"] == 3, timeout=20, what="checkpoint")
        wait_until(lambda: child_status(city)["state"] == "streaming", what="streaming")
        wait_until(
            lambda: child_status(city)["error"] is None,
            timeout=5,
            what=f"the error to clear (still {child_status(city)['error']!r})",
        )


# ----- 2. the wrong node at a child's address -----------------------------------------


def test_a_child_address_that_serves_another_node_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node(CHILD, "xuanwu").start()
    pacsv.write_csv(fake_people(CHILD, 20, seed=3), tmp_path / "p.csv")
    county.ingest("person", tmp_path / "p.csv")
    city = cluster.node(CITY, "city").start()
    city.cli("children", "add", "320104", county.address)  # qinhuai's entry, xuanwu's address

    wait_until(
        lambda: f"serves node {CHILD}" in (child_status(city)["error"] or ""),
        timeout=20,
        what="the identity error",
    )
    status = child_status(city)
    assert status["code"] == "320104"
    assert status["address"] in status["error"]
    assert "not 320104" in status["error"]
    assert (status["checkpoint"], status["rows"]) == (0, 0)
    assert status["state"] == "down"
    assert person_count(city) == 0
    assert county.fetch_status()["parents"] == [], "the parent must not pull from a stranger"


# ----- 3. re-delivery through the real wire -------------------------------------------


def test_a_replayed_window_is_applied_once(cluster: Cluster) -> None:
    city = cluster.node(CITY, "city").start()
    with fake_child() as fake:
        # The child forgets the parent's checkpoint: every pull replays from 0.
        fake.send([change_batch(0, 3)], end_stream=True)
        city.cli("children", "add", CHILD, fake.address)
        wait_until(lambda: child_status(city)["checkpoint"] == 3, timeout=20, what="first apply")
        head = city.fetch_status()["head_seq"]
        assert head >= 3
        # The parent reconnects with its checkpoint, and gets (0, 3] again, several times.
        wait_until(
            lambda: fake.pulled_after().count(3) >= 3, timeout=20, what="three replays of (0, 3]"
        )
        assert fake.pulled_after()[0] == 0
        assert person_count(city) == 3
        assert doubled_identities(city) == 0
        assert city.fetch_status()["head_seq"] == head, "a replay must not produce changes"
        status = child_status(city)
        assert (status["checkpoint"], status["rows_applied"], status["error"]) == (3, 3, None)

        # A replay that overlaps and goes further applies only what is new.
        fake.send([change_batch(0, 5)], end_stream=True)
        wait_until(lambda: child_status(city)["checkpoint"] == 5, timeout=20, what="checkpoint 5")
        wait_until(lambda: fake.pulled_after().count(5) >= 2, timeout=20, what="a replay of (0, 5]")
        assert person_count(city) == 5
        assert doubled_identities(city) == 0
        new_versions = city.fetch(
            f"SELECT origin_seq FROM tongyuan.rows_person WHERE _seq > {head} ORDER BY 1"
        )
        assert new_versions == [{"origin_seq": 4}, {"origin_seq": 5}]


# ----- 4. the admin API --------------------------------------------------------------


def test_the_admin_api_wants_the_token_and_listens_on_loopback_only(cluster: Cluster) -> None:
    node = cluster.node(CHILD, "county").start()
    admin_file = node.directory / "run" / "admin.json"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    endpoint = read_endpoint(admin_file)
    assert endpoint is not None
    assert endpoint == AdminEndpoint(**json.loads(admin_file.read_text()))
    host, _, port = endpoint.address.rpartition(":")
    assert host == "127.0.0.1"

    assert node.process is not None
    sockets = [
        c
        for c in psutil.Process(node.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == int(port)
    ]
    assert sockets, f"nothing listens on the admin port {port}"
    for sock in sockets:
        ip = ipaddress.ip_address(sock.laddr.ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # gRPC may bind 127.0.0.1 as ::ffff:127.0.0.1
        assert ip.is_loopback, f"the admin API listens on {sock.laddr.ip}"

    for token in ("wrong-" + endpoint.token, ""):
        intruder = RemoteNode(AdminEndpoint(endpoint.pid, endpoint.address, token, endpoint.listen))
        try:
            with pytest.raises(UserError, match="token"):
                intruder.status()
            with pytest.raises(UserError, match="token"):
                intruder.query("SELECT 1 AS one")
            with pytest.raises(UserError, match="token"):
                intruder.add_child("320104", "127.0.0.1:1")
        finally:
            intruder.close()
    assert node.fetch_status()["children"] == []

    owner = RemoteNode(endpoint)
    try:
        assert owner.status()["code"] == CHILD
    finally:
        owner.close()


# ----- 5. stock tools: health and reflection ------------------------------------------


def test_health_and_reflection_answer_stock_clients(cluster: Cluster) -> None:
    node = cluster.node(CHILD, "county").start()
    with grpc.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tongyuan.v1.Federation"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tongyuan.v1.Federation"),
        ]
        listed, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=5))
        names = {s.name for s in listed.list_services_response.service}
        assert {"tongyuan.v1.Federation", "grpc.health.v1.Health"} <= names
        assert "tongyuan.v1.Admin" not in names, "the admin API is not on the federation port"
        protos = described.file_descriptor_response.file_descriptor_proto
        assert protos and any(b"PullChanges" in p for p in protos)


# ----- 6. `children add` refuses what cannot be a child -------------------------------


def refused(node: Node, *args: str) -> str:
    result = node.cli("children", "add", *args, check=False)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error:")
    return " ".join(result.stderr.split())


def test_children_add_refuses_codes_outside_the_subtree_and_bad_addresses(
    cluster: Cluster,
) -> None:
    city = cluster.node(CITY, "city").start()
    message = refused(city, "330102", "127.0.0.1:7400")
    assert "330102" in message and "not within 320100" in message

    message = refused(city, "320104", "no-port-here")
    assert "'no-port-here'" in message and "HOST:PORT" in message
    message = refused(city, "320104", "127.0.0.1:99999")
    assert "HOST:PORT" in message
    assert city.fetch_status()["children"] == []
    config = tomllib.loads((city.directory / "tongyuan.toml").read_text(encoding="utf-8"))
    assert config.get("children", []) == []

    county = cluster.node(CHILD, "county")  # not serving: the CLI opens the store itself
    message = refused(county, "320104", "127.0.0.1:7400")
    assert "county node" in message and "no children" in message
    assert county.fetch_status()["children"] == []
