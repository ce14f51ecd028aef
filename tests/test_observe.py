"""What operators watch, against real node processes: Prometheus metrics, the status
JSON, JSON logs, the read-only HTTP endpoint, and gRPC health while a node migrates its
store and while it shuts down."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow.csv as pacsv
import pytest
from conftest import ROOT, Cluster, Node, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from node.config import load_config
from node.demo_data import fake_people
from node.observe.logs import JsonFormatter

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def people_file(tmp_path: Path, division: str, count: int, seed: int = 1) -> Path:
    path = tmp_path / f"people-{division}-{seed}.csv"
    pacsv.write_csv(fake_people(division, count, seed=seed), path)
    return path


def start_with(node: Node, *serve_args: str) -> Node:
    """Start `serve` with extra flags (conftest's `start` takes none)."""
    log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the process
    node.process = subprocess.Popen(
        [sys.executable, "-m", "node", "--dir", str(node.directory), "serve", *serve_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    node.wait_serving()
    return node


def http_address(node: Node) -> str:
    return str(json.loads((node.directory / "run" / "http.json").read_text())["address"])


def get(node: Node, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request to the node's HTTP endpoint."""
    request = urllib.request.Request(f"http://{http_address(node)}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` parsed by Prometheus' own parser: {(sample name, labels): value}."""
    status, content_type, text = get(node, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def child_value(metrics: dict[Any, float], name: str, child: str) -> float | None:
    return metrics.get((name, (("child", child),)))


def chain(cluster: Cluster, tmp_path: Path, rows: int, *serve_args: str) -> tuple[Node, Node]:
    """A county with `rows` people (if any) and a city pulling it, both serving."""
    county = cluster.node("320102", "county")
    if rows:
        county.ingest("person", people_file(tmp_path, "320102", rows))
    start_with(county, "--log-level", "DEBUG", *serve_args)
    city = cluster.node("320100", "city")
    city.configure("http", lag_sample_seconds=0.5)
    city.cli("children", "add", "320102", county.address)
    start_with(city, "--log-level", "DEBUG", *serve_args)
    return county, city


def test_metrics_follow_a_child_through_catch_up_and_loss(cluster: Cluster, tmp_path: Path) -> None:
    county, city = chain(cluster, tmp_path, 300)
    resource = county.resource("person")

    def caught_up() -> bool:
        m = scrape(city)
        return (
            child_value(m, "tongyuan_child_lag_sequences", "320102") == 0
            and (child_value(m, "tongyuan_child_rows_applied_total", "320102") or 0) >= 300
        )

    wait_until(caught_up, what="the city to catch up with the county")
    m = scrape(city)

    # Quality: the county's resource scored at the city; nothing held, no feedback open.
    def score(node: str, resource: str, measure: str) -> float:
        labels = (("measure", measure), ("node", node), ("resource", resource))
        return m[("tongyuan_quality_score", labels)]

    assert score("320102", resource, "validity") == 1.0
    assert 0 < score("320102", resource, "completeness") <= 1
    assert 0 < score("320100", "", "overall") <= 1
    assert not [k for k in m if k[0] == "tongyuan_quarantine_rows"]
    feedback = {
        labels[0][1]: value
        for (name, labels), value in m.items()
        if name == "tongyuan_feedback_items"
    }
    assert feedback == {"open": 0, "acknowledged": 0, "closed": 0, "overdue": 0}
    info = [labels for (name, labels) in m if name == "tongyuan_node_info"]
    assert info == [
        (("code", "320100"), ("name", "南京市"), ("tier", "city"), ("version", "0.1.0"))
    ]
    assert child_value(m, "tongyuan_child_up", "320102") == 1
    assert child_value(m, "tongyuan_child_lag_seconds", "320102") == 0
    # Each of the county's records applied once: 300 people and the latest version of its
    # catalogue entry (the change log keeps latest versions only).
    assert child_value(m, "tongyuan_child_rows_applied_total", "320102") == 300 + 1
    assert (child_value(m, "tongyuan_child_batches_applied_total", "320102") or 0) >= 1
    assert child_value(m, "tongyuan_child_pull_errors_total", "320102") == 0
    assert m[("tongyuan_entity_rows", (("entity", "person"),))] == 300
    assert m[("tongyuan_change_log_head_sequence", ())] == city.fetch_status()["head_seq"] > 0
    labels = (("origin_node", "320102"), ("resource", resource))
    assert m[("tongyuan_resource_freshness", (*labels, ("state", "fresh")))] == 1
    assert m[("tongyuan_resource_freshness", (*labels, ("state", "stale")))] == 0
    assert m[("tongyuan_resources", (("state", "fresh"),))] == 1
    assert m[("process_resident_memory_bytes", ())] > 10_000_000
    # The county sees its parent's acknowledgements.
    wait_until(
        lambda: (
            scrape(county).get(("tongyuan_parent_acked_sequence", (("parent", "320100"),)))
            == county.fetch_status()["head_seq"]
        ),
        what="the county to hear the city's acknowledgement",
    )

    county.kill9()

    def lost() -> bool:
        m = scrape(city)
        errors = child_value(m, "tongyuan_child_pull_errors_total", "320102") or 0
        return child_value(m, "tongyuan_child_up", "320102") == 0 and errors >= 2

    wait_until(lost, what="the city to report the county down with pull errors")
    m = scrape(city)
    # Counters kept in the store survive the loss; the lag is still known (nothing new).
    assert child_value(m, "tongyuan_child_rows_applied_total", "320102") == 301


def test_status_json_and_the_read_only_endpoint(cluster: Cluster, tmp_path: Path) -> None:
    county, city = chain(cluster, tmp_path, 50)
    wait_until(lambda: city.fetch_status()["children"][0]["lag"] == 0, what="the city to catch up")

    def sampled_caught_up() -> dict[str, Any] | None:
        status, content_type, body = get(city, "/status.json")
        assert status == 200 and content_type.startswith("application/json")
        view = json.loads(body)
        points = view["lag_history"].get("320102", [])
        return view if any(p[1] == 0 for p in points) else None

    wait_until(lambda: sampled_caught_up() is not None, what="a lag sample at 0")
    view = sampled_caught_up()
    assert view is not None
    assert set(view) == {
        "node",
        "lag_history",
        "catalog",
        "discrepancies",
        "quality",
        "quality_weights",
        "feedback",
        "generated_at",
    }
    # `node` is exactly what `tongyuan status --json` prints (give or take moving figures).
    cli_status = city.status()
    assert set(view["node"]) == set(cli_status)
    assert view["node"]["code"] == "320100" and view["node"]["http"] == http_address(city)
    assert cli_status["http"] == http_address(city)
    assert [c["code"] for c in view["node"]["children"]] == ["320102"]
    points = view["lag_history"]["320102"]
    assert all(len(p) == 3 for p in points)
    assert [p[0] for p in points] == sorted(p[0] for p in points)  # oldest first
    assert points[0][0] <= time.time() and isinstance(points[-1][1], int)
    # The catalogue without drafts: the county's published resource, with its freshness.
    assert [(e["code"], e["status"], e["freshness"]) for e in view["catalog"]] == [
        (county.resource("person"), "published", "fresh")
    ]
    assert view["discrepancies"] == [] and view["feedback"] == []  # nothing disputed
    # The county's resource scored at the city, under the county's line.
    assert [(r["node"], r["kind"]) for r in view["quality"]] == [
        ("320100", "rollup"),
        ("320102", "rollup"),
        ("320102", "resource"),
    ]
    assert view["generated_at"].endswith("+00:00")
    # Nothing secret: the admin token of run/admin.json appears nowhere.
    token = json.loads((city.directory / "run" / "admin.json").read_text())["token"]
    for path in ("/status.json", "/metrics", "/"):
        assert token not in get(city, path)[2]
    # Read-only: anything but GET (and HEAD) is refused.
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, _ = get(city, "/metrics", method=method)
        assert status == 405, method
    assert get(city, "/nothing-here")[0] == 404
    # The page is the renderer's (another module); without it, a one-line 503.
    status, content_type, body = get(city, "/")
    assert (status, content_type) in (
        (200, "text/html; charset=utf-8"),
        (503, "text/plain; charset=utf-8"),
    )
    if status == 503:
        assert body.count("\n") == 1 and "status page unavailable" in body


def test_json_logs_carry_node_child_and_batch_fields(cluster: Cluster, tmp_path: Path) -> None:
    county, city = chain(cluster, tmp_path, 40, "--log-format", "json")
    wait_until(lambda: city.fetch_status()["children"][0]["lag"] == 0, what="the city to catch up")
    assert city.stop() == 0
    assert county.stop() == 0
    city_lines = [json.loads(line) for line in city.log().splitlines() if line.strip()]
    county_lines = [json.loads(line) for line in county.log().splitlines() if line.strip()]
    for line in city_lines + county_lines:
        assert {"ts", "level", "logger", "msg", "node"} <= set(line), line
        assert line["ts"].endswith("+00:00")
    assert {line["node"] for line in city_lines} == {"320100"}
    assert any(line["msg"].startswith("node 320100") for line in city_lines)
    applied = [line for line in city_lines if "batch" in line]
    assert applied, "no line about an applied batch"
    assert all(line["child"] == "320102" for line in applied)
    assert applied[0]["batch"]["after_seq"] == 0
    assert applied[-1]["batch"]["last_seq"] == county.status()["head_seq"]
    pulls = [line for line in county_lines if line.get("parent") == "320100"]
    assert any("pulls after seq 0" in line["msg"] for line in pulls)


def test_json_log_lines_render_exceptions() -> None:
    formatter = JsonFormatter("320102")
    try:
        raise ValueError("broken window")
    except ValueError:
        record = logging.LogRecord(
            "node.federation.links", logging.ERROR, __file__, 1, "child %s: %s", ("320102", "x"),
            sys.exc_info(),
        )  # fmt: skip
    record.child = "320102"
    line = json.loads(formatter.format(record))
    assert line["msg"] == "child 320102: x" and line["child"] == "320102"
    assert line["level"] == "ERROR" and line["node"] == "320102"
    assert "ValueError: broken window" in line["exc"] and "\n" not in formatter.format(record)


def watch_health(address: str, seen: list[int], ended: threading.Event) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                seen.append(reply.status)
        except grpc.RpcError:
            pass
    ended.set()


def test_health_says_not_serving_during_a_graceful_stop(cluster: Cluster, tmp_path: Path) -> None:
    _county, city = chain(cluster, tmp_path, 0)
    seen: list[int] = []
    ended = threading.Event()
    watcher = threading.Thread(target=watch_health, args=(city.address, seen, ended), daemon=True)
    watcher.start()
    wait_until(lambda: seen == [SERVING], what="the health watch to start")
    assert city.process is not None
    city.process.send_signal(signal.SIGTERM)
    assert ended.wait(30), "the health watch did not end with the node"
    assert seen == [SERVING, NOT_SERVING]
    assert city.process.wait(timeout=30) == 0
    city.process = None
    assert not (city.directory / "run" / "http.json").exists()


@pytest.fixture
def slow_migration(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, ...]]:
    """Hold the store's migrations until released: the real migrations, only later."""
    import node.store.store as store_module

    migrating, release = threading.Event(), threading.Event()
    real = store_module.apply_migrations

    def held(cur: Any) -> list[str]:
        migrating.set()
        release.wait(30)
        return real(cur)

    monkeypatch.setattr(store_module, "apply_migrations", held)
    yield migrating, release
    release.set()


def test_health_says_not_serving_while_the_store_migrates(
    cluster: Cluster, slow_migration: tuple[threading.Event, ...]
) -> None:
    """In-process (the only way to hold a migration open): the federation port answers
    health NOT_SERVING, and Federation calls UNAVAILABLE, until the store is ready."""
    from node._gen.tongyuan.v1 import federation_pb2, federation_pb2_grpc
    from node.server import NodeServer

    migrating, release = slow_migration
    county = cluster.node("320102", "county")
    config = load_config(county.directory)
    built: list[NodeServer] = []
    opener = threading.Thread(target=lambda: built.append(NodeServer(config)), daemon=True)
    opener.start()
    assert migrating.wait(30)
    with grpc.insecure_channel(county.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        assert health.Check(request, timeout=5).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            federation_pb2_grpc.FederationStub(channel).GetInfo(
                federation_pb2.GetInfoRequest(caller_code="320100"), timeout=5
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        release.set()
        opener.join(30)
        server = built[0]
        server.start()
        try:
            assert health.Check(request, timeout=5).status == SERVING
        finally:
            server.stop()
            server.wait()


def test_http_settings_errors_are_one_line(cluster: Cluster) -> None:
    county = cluster.node("320102", "county")
    county.configure("http", listen="no port")
    result = county.cli("serve", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "[http] listen" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        county.configure("http", listen=f"127.0.0.1:{port}")
        result = county.cli("serve", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"[http] listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    # The failed starts released everything; with HTTP off the node serves without it.
    county.configure("http", enabled=False)
    county.start()
    assert county.status()["http"] is None
    assert not (county.directory / "run" / "http.json").exists()
