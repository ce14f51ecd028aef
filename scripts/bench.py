"""Benchmarks for the node's sync path, printed as a table (medians; machines are noisy).

(a) backfill of N Person records county → city, against a raw ceiling measured in the
    same run: DuckDB → Arrow IPC → gRPC → DuckDB in two processes, no Tongyuan code;
(b) subscribe-mode latency of single-row changes county → city → province;
(c) peak memory (RSS) of the city process during a large backfill;
(d) one source: an observing import of N values of another department's records, and the
    cross-check of them against the N authoritative records (in process, one store);
(e) quality: the base rule library over N Person rows (1 in 100 with a wrong check digit):
    the rules alone (one screening query over the staged rows), and a whole import with
    the library against the same import without rules (in process, fresh stores);
(f) sharing: the backfill of (a) for a conditional resource (ID numbers pseudonymised,
    names and addresses masked at the county before they leave), against (a);
(g) identity: one-hop latency county → city over mutual TLS (certificates from
    `tongyuan pki`) against the same hop in plaintext development mode.

Run through `scripts/bench` (which installs what it needs); `--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from node._gen.tongyuan.v1 import federation_pb2 as fpb
from node._gen.tongyuan.v1 import federation_pb2_grpc as fpb_grpc
from node.admin import RemoteNode, read_endpoint
from node.demo_data import bench_people
from node.errors import NodeUnavailable
from node.model import load_base_model
from node.quality.files import load_rules
from node.store import Store
from node.wire import GRPC_MESSAGE_OPTIONS

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tongyuan(directory: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "node", "--dir", str(directory), *args],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


_STARTED: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    """A benchmark that fails half-way must not leave nodes running."""
    for process in _STARTED:
        if process.poll() is None:
            process.kill()


# (f): the people resource shared on conditions: ID numbers leave pseudonymised, names
# and addresses masked (the default treatments of the core and important grades).
CONDITIONAL_PEOPLE = """
code = "{code}"
name = "户籍人口信息"
summary = "benchmark people, shared on conditions"
department = "公安局"
entity = "person"
update_frequency = "daily"
sharing = "conditional"
sharing_conditions = "仅限政务部门履职使用"
[[fields]]
name = "id_number"
sensitivity = "core"
[[fields]]
name = "name"
sensitivity = "important"
[[fields]]
name = "address"
sensitivity = "important"
[[fields]]
name = "sex"
[[fields]]
name = "phone"
[[fields]]
name = "birth_date"
[[fields]]
name = "division_code"
"""


class BenchNode:
    def __init__(
        self,
        directory: Path,
        code: str,
        *,
        plaintext: bool = True,
        conditional: bool = False,
        **sync: object,
    ) -> None:
        self.directory = directory
        self.code = code
        self.address = f"127.0.0.1:{free_port()}"
        mode = ("--plaintext-dev",) if plaintext else ()
        tongyuan(directory, "init", "--code", code, "--listen", self.address, *mode)
        # The published resource every import goes into.
        self.people = f"{code}-GA-001"
        if conditional:
            entry = directory.parent / f"{directory.name}-entry.toml"
            entry.write_text(CONDITIONAL_PEOPLE.format(code=self.people), encoding="utf-8")
            tongyuan(directory, "catalog", "add", str(entry), "--publish")
        else:
            tongyuan(
                directory, "catalog", "add", "--code", self.people, "--name", "户籍人口信息",
                "--summary", "benchmark people", "--department", "公安局", "--entity", "person",
                "--frequency", "daily", "--sharing", "unconditional", "--publish",
            )  # fmt: skip
        if sync:
            config = directory / "tongyuan.toml"
            text = config.read_text(encoding="utf-8")
            for key, value in sync.items():
                text = text.replace(f"\n{key} = ", f"\n{key} = {json.dumps(value)}  # bench: ", 1)
            config.write_text(text, encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BenchNode:
        log = open(self.directory.parent / f"{self.directory.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node", "--dir", str(self.directory), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        _STARTED.append(self.process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if read_endpoint(self.directory / "run" / "admin.json") is not None:
                    return self
            except NodeUnavailable:
                pass  # starting
            time.sleep(0.05)
        raise RuntimeError(f"node {self.code} did not start")

    def api(self) -> RemoteNode:
        endpoint = read_endpoint(self.directory / "run" / "admin.json")
        assert endpoint is not None
        return RemoteNode(endpoint)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)
            self.process = None


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----- (a) backfill -----------------------------------------------------------------------


def wait_caught_up(parent: RemoteNode, child_code: str, head: int, poll: float = 0.02) -> None:
    sql = f"SELECT checkpoint FROM tongyuan.links WHERE child_code = '{child_code}'"
    while True:
        rows = parent.query(sql).to_pylist()
        if rows and rows[0]["checkpoint"] >= head:
            return
        time.sleep(poll)


def backfill_once(work: Path, county: BenchNode, head: int, run: int) -> tuple[float, float]:
    """Seconds for a fresh city to backfill the county, and the city's peak RSS in bytes."""
    city = BenchNode(work / f"city{run}", "320100").start()
    peak = [0]
    done = threading.Event()
    assert city.process is not None
    process = psutil.Process(city.process.pid)

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    api = city.api()
    try:
        started = time.perf_counter()
        api.add_child(county.code, county.address)
        wait_caught_up(api, county.code, head)
        elapsed = time.perf_counter() - started
    finally:
        done.set()
        sampler.join()
        api.close()
        city.stop()
        shutil.rmtree(work / f"city{run}", ignore_errors=True)
    return elapsed, float(peak[0])


RAW_SERVER = r"""
import sys, duckdb, grpc, pyarrow as pa
from concurrent import futures
path, port, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = duckdb.connect(path, read_only=True)
opts = [("grpc.max_send_message_length", 1 << 28), ("grpc.max_receive_message_length", 1 << 28)]
def pull(request, context):
    cur = db.cursor()
    reader = cur.sql(
        "SELECT id_number, name, sex, birth_date, phone, address, division_code, _deleted, "
        "origin_node, origin_seq, origin_dept, origin_batch, origin_time, origin_resource "
        "FROM tongyuan.rows_person").to_arrow_reader(batch)
    for rb in reader:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rb.schema) as w:
            w.write_batch(rb)
        yield sink.getvalue().to_pybytes()
handler = grpc.method_handlers_generic_handler("raw.Raw", {
    "Pull": grpc.unary_stream_rpc_method_handler(pull)})
server = grpc.server(futures.ThreadPoolExecutor(4), options=opts)
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""


def insert(db: Any, tables: list[pa.Table]) -> None:
    if tables:
        incoming = pa.concat_tables(tables)  # noqa: F841 - read by DuckDB by name
        db.execute("INSERT INTO person SELECT * FROM incoming")


def raw_ceiling_once(
    work: Path, county_store: Path, batch: int, insert_rows: int, run: int
) -> float:
    """DuckDB → Arrow IPC → gRPC → DuckDB, no Tongyuan code: seconds for the whole table.

    Same shapes as Tongyuan's defaults: `batch` rows per message (batch_changes) and
    one INSERT per `insert_rows` received (apply_max_rows).
    """
    import duckdb

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", RAW_SERVER, str(county_store), str(port), str(batch)],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        target = work / f"raw{run}.duckdb"
        db = duckdb.connect(str(target))
        db.execute(
            "CREATE TABLE person (id_number VARCHAR, name VARCHAR, sex VARCHAR, birth_date DATE, "
            "phone VARCHAR, address VARCHAR, division_code VARCHAR, _deleted BOOLEAN, "
            "origin_node VARCHAR, origin_seq BIGINT, origin_dept VARCHAR, origin_batch VARCHAR, "
            "origin_time TIMESTAMPTZ, origin_resource VARCHAR)"
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_MESSAGE_OPTIONS) as channel:
            pull = channel.unary_stream("/raw.Raw/Pull")
            started = time.perf_counter()
            pending: list[pa.Table] = []
            buffered = 0
            for message in pull(b""):
                with pa.ipc.open_stream(pa.py_buffer(message)) as reader:
                    pending.append(reader.read_all())
                buffered += pending[-1].num_rows
                if buffered >= insert_rows:
                    insert(db, pending)
                    pending, buffered = [], 0
            insert(db, pending)
            elapsed = time.perf_counter() - started
        db.close()
        target.unlink()
        return elapsed
    finally:
        server.kill()
        server.wait()


# ----- (b) latency --------------------------------------------------------------------------


def latency(work: Path, changes: int, preload: int, rules: bool = False) -> list[float]:
    """County commit → province commit for single-row changes, subscribe mode, in ms; with
    `rules`, the province's base rule library in force at every tier."""
    name = "lat-rules" if rules else "lat"
    province = BenchNode(work / f"{name}-province", "320000").start()
    city = BenchNode(work / f"{name}-city", "320100").start()
    county = BenchNode(work / f"{name}-county", "320102").start()
    try:
        people = bench_people(preload, "320102", seed=3)
        data = work / "lat-people.parquet"
        pq.write_table(people, data)
        county_api, city_api, province_api = county.api(), city.api(), province.api()
        county_api.ingest(county.people, data)
        city_api.add_child(county.code, county.address)
        province_api.add_child(city.code, city.address)
        head = county_api.status()["head_seq"]
        wait_caught_up(city_api, county.code, head)
        wait_caught_up(province_api, city.code, city_api.status()["head_seq"])
        if rules:
            rules_file = str(ROOT / "config" / "base-rules.toml")
            province_api.call("quality.rules_publish", {"path": rules_file, "actor": "bench"})
            deadline = time.monotonic() + 30
            while not county_api.call("quality.rules_show", {})["layers"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the rule library did not reach the county")
                time.sleep(0.05)

        # Watch the province's change stream as its parent would: a change is seen
        # as soon as the province commits it.
        province_head = province_api.status()["head_seq"]
        channel = grpc.insecure_channel(province.address, options=GRPC_MESSAGE_OPTIONS)
        results = changes_seen(work, county, county_api, people, channel, province_head, changes)
        channel.close()
        for api in (county_api, city_api, province_api):
            api.close()
        return results
    finally:
        for node in (county, city, province):
            node.stop()


def changes_seen(
    work: Path,
    county: BenchNode,
    county_api: RemoteNode,
    people: pa.Table,
    channel: grpc.Channel,
    after: int,
    changes: int,
) -> list[float]:
    """Milliseconds from each single-row change committed at the county until it shows in
    the change stream of the node `channel` reaches (pulled as that node's parent would,
    from its sequence `after`)."""
    seen: dict[str, float] = {}
    arrived = threading.Condition()
    parent_code = "320000"
    stream = fpb_grpc.FederationStub(channel).PullChanges(
        fpb.PullRequest(parent_code=parent_code, after_seq=after, follow=True)
    )

    def watch() -> None:
        try:
            for batch in stream:
                now = time.perf_counter()
                for part in batch.entities:
                    if part.entity != "person":
                        continue  # the resource's catalogue entry (its last change)
                    with pa.ipc.open_stream(pa.py_buffer(part.arrow_ipc)) as reader:
                        table = reader.read_all()
                    with arrived:
                        for phone in table.column("phone").to_pylist():
                            seen[phone] = now
                        arrived.notify_all()
        except grpc.RpcError:
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results = []
    one = people.slice(0, 1).to_pylist()[0]
    for i in range(changes):
        phone = f"199{i:08d}"
        row = {**one, "phone": phone}
        path = work / "change.csv"
        pacsv.write_csv(pa.Table.from_pylist([row], schema=people.schema), path)
        county_api.ingest(county.people, path)
        committed = time.perf_counter()
        with arrived:
            arrived.wait_for(lambda p=phone: p in seen, timeout=30)  # type: ignore[misc]
        if phone not in seen:
            raise RuntimeError(f"change {i} did not arrive within 30 s")
        results.append((seen[phone] - committed) * 1000)
        time.sleep(0.01)
    stream.cancel()
    return results


def certify(work: Path, parent: BenchNode, child: BenchNode) -> None:
    """`pki request` at the child, `pki issue` at the parent, `pki install` at the child."""
    csr, bundle = work / f"{child.code}.csr", work / f"{child.code}.bundle"
    tongyuan(child.directory, "pki", "request", "-o", str(csr))
    tongyuan(parent.directory, "pki", "issue", str(csr), "-o", str(bundle))
    tongyuan(child.directory, "pki", "install", str(bundle))


def hop_latency(work: Path, changes: int, preload: int, tls: bool) -> list[float]:
    """County commit → city commit for single-row changes over one link, in ms: with
    `tls` over mutual TLS (certificates from `tongyuan pki`), else in plaintext
    development mode. The stream is watched as the city's parent (the province) would,
    with the province's certificate."""
    name = "hop-tls" if tls else "hop"
    province = BenchNode(work / f"{name}-province", "320000", plaintext=not tls)
    city = BenchNode(work / f"{name}-city", "320100", plaintext=not tls)
    county = BenchNode(work / f"{name}-county", "320102", plaintext=not tls)
    if tls:
        tongyuan(province.directory, "pki", "init-root")
        certify(work, province, city)
        certify(work, city, county)
    city.start()
    county.start()
    try:
        people = bench_people(preload, "320102", seed=3)
        data = work / "hop-people.parquet"
        pq.write_table(people, data)
        county_api, city_api = county.api(), city.api()
        county_api.ingest(county.people, data)
        city_api.add_child(county.code, county.address)
        wait_caught_up(city_api, county.code, county_api.status()["head_seq"])
        city_head = city_api.status()["head_seq"]
        if tls:
            security = province.directory / "security"
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(security / "root.crt").read_bytes(),
                private_key=(security / "node.key").read_bytes(),
                certificate_chain=(security / "fullchain.pem").read_bytes(),
            )
            options = [
                *GRPC_MESSAGE_OPTIONS,
                # The city's name under its issuer, the province (node-CODE.ISSUER.tongyuan).
                ("grpc.ssl_target_name_override", "node-320100.320000.tongyuan"),
            ]
            channel = grpc.secure_channel(city.address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(city.address, options=GRPC_MESSAGE_OPTIONS)
        results = changes_seen(work, county, county_api, people, channel, city_head, changes)
        channel.close()
        county_api.close()
        city_api.close()
        return results
    finally:
        for node in (county, city):
            node.stop()


# ----- driver ------------------------------------------------------------------------------


def sources_once(county: BenchNode, rows: int, run: int) -> tuple[float, float, int]:
    """(d) on the stopped county's store: another department's copy of every address, one in
    a hundred different, imported as observations; then the cross-check. Returns (import
    seconds, cross-check seconds, discrepancies found)."""
    resource = f"{county.code}-RS-{run:03d}"
    tongyuan(
        county.directory, "catalog", "add", "--code", resource, "--name", "参保人员地址",
        "--summary", "benchmark observations", "--department", "人社局", "--entity", "person",
        "--fields", "id_number,address", "--source-department", "公安局",
        "--frequency", "daily", "--sharing", "unconditional", "--publish",
    )  # fmt: skip
    people = bench_people(rows, county.code, seed=1).select(["id_number", "address"])
    addresses = people.column("address").to_numpy(zero_copy_only=False).copy()
    addresses[::100] = "另一地址"
    copy = people.set_column(1, "address", pa.array(addresses, pa.string()))
    store = Store.open(county.directory / "store.duckdb", memory_limit="4GB")
    try:
        entity = store.entities["person"]
        started = time.perf_counter()
        store.ingest(
            entity,
            copy,
            file_label="bench",
            locate=lambda row: f"row {row + 1}",
            origin_node=county.code,
            department="人社局",
            snapshot=False,
            resource=resource,
            columns=["id_number", "address"],
            observing=(county.code, "公安局"),
        )
        imported = time.perf_counter() - started
        started = time.perf_counter()
        store.sources.crosscheck()
        checked = time.perf_counter() - started
        found = store.sources.counts()["open"]
    finally:
        store.close()
    return imported, checked, found


def quality_once(work: Path, people: pa.Table, run: int) -> tuple[float, float, float, int]:
    """(e): returns (rules-only seconds, import seconds with the base library, import seconds
    without rules, rows held)."""
    fields = list(people.column_names)
    seconds: dict[bool, float] = {}
    screen_seconds, held = 0.0, 0
    for with_rules in (False, True):
        path = work / f"quality-{run}-{with_rules}.duckdb"
        store = Store.create(
            path, code="320102", name="bench", tier="county", model=load_base_model()
        )
        try:
            entity = store.entities["person"]
            if with_rules:
                layer = load_rules(ROOT / "config" / "base-rules.toml", store.model, "320000",
                                   local=False)  # fmt: skip
                store.quality.set_own_layer("published", layer, "bench")
            started = time.perf_counter()
            result = store.ingest(
                entity,
                people,
                file_label="bench",
                locate=lambda row: f"row {row + 1}",
                origin_node="320102",
                department="公安局",
                snapshot=False,
                columns=fields,
            )
            seconds[with_rules] = time.perf_counter() - started
            if with_rules:
                held = result.quarantined
                screen = store.quality.screen(entity, fields)
                assert screen is not None
                arrow = {"bench_rows": people, **store.quality.relations()}
                with store.db.write(arrow=arrow) as cur:
                    # Staged as an import stages them: typed, with a row number.
                    cur.execute(
                        "CREATE TEMP TABLE bench_stage AS SELECT * REPLACE "
                        "(CAST(birth_date AS DATE) AS birth_date), '320102' AS origin_node, "
                        "row_number() OVER () AS _row FROM bench_rows"
                    )
                    started = time.perf_counter()
                    store.quality._evaluate(cur, screen, "bench_stage", "_row", "true")
                    screen_seconds = time.perf_counter() - started
        finally:
            store.close()
            path.unlink()
    return screen_seconds, seconds[True], seconds[False], held


def quality_people(rows: int) -> pa.Table:
    """Bench people as text (as files are read), one in a hundred with a wrong check digit."""
    people = bench_people(rows, "320102", seed=3)
    ids = people.column("id_number").to_numpy(zero_copy_only=False).copy()
    ids[::100] = [i[:-1] + ("0" if i[-1] != "0" else "1") for i in ids[::100]]
    people = people.set_column(0, "id_number", pa.array(ids, pa.string()))
    return pa.table({n: people.column(n).cast(pa.string()) for n in people.column_names})


def prepare_county(
    work: Path, rows: int, name: str, conditional: bool = False
) -> tuple[BenchNode, int]:
    county = BenchNode(work / name, "320102", conditional=conditional)
    data = work / f"{name}.parquet"
    pq.write_table(bench_people(rows, "320102", seed=1), data)
    tongyuan(county.directory, "ingest", county.people, str(data))
    data.unlink()
    county.start()
    api = county.api()
    head = int(api.status()["head_seq"])
    api.close()
    return county, head


def timed(label: str, fn: Callable[[], Any]) -> Any:
    print(f"  {label} …", file=sys.stderr, flush=True)
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="backfill size for (a)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=200, help="single-row changes for (b)")
    parser.add_argument("--memory-rows", type=int, default=5_000_000, help="backfill for (c)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--work", type=Path, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.runs, args.changes, args.memory_rows = 100_000, 1, 20, 200_000
    work = args.work or Path(tempfile.mkdtemp(prefix="tongyuan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; {os.cpu_count()} cores", file=sys.stderr)

    county, head = timed(
        f"loading {args.rows:,} people", lambda: prepare_county(work, args.rows, "county")
    )
    try:
        framework = [
            timed(f"backfill run {r + 1}", lambda r=r: backfill_once(work, county, head, r))[0]
            for r in range(args.runs)
        ]
    finally:
        county.stop()
    shared_county, shared_head = timed(
        f"loading {args.rows:,} people, shared on conditions",
        lambda: prepare_county(work, args.rows, "county-conditional", conditional=True),
    )
    try:
        conditional = [
            timed(
                f"conditional backfill run {r + 1}",
                lambda r=r: backfill_once(work, shared_county, shared_head, 10 + r),
            )[0]
            for r in range(args.runs)
        ]
    finally:
        shared_county.stop()
        shutil.rmtree(shared_county.directory, ignore_errors=True)
    raw = [
        timed(
            f"raw ceiling run {r + 1}",
            lambda r=r: raw_ceiling_once(work, county.directory / "store.duckdb", 32768, 262144, r),
        )
        for r in range(args.runs)
    ]
    # Upper bound: the same stream, but one INSERT of everything at the end (memory grows
    # with the table, so no node can work this way; it shows what batching costs).
    raw_one = [
        timed(
            f"raw single-INSERT run {r + 1}",
            lambda r=r: raw_ceiling_once(
                work, county.directory / "store.duckdb", 32768, 1 << 62, r
            ),
        )
        for r in range(args.runs)
    ]
    sources = [
        timed(
            f"observations and cross-check run {r + 1}",
            lambda r=r: sources_once(county, args.rows, r),
        )
        for r in range(args.runs)
    ]
    quality_rows = quality_people(args.rows)
    quality = [
        timed(f"quality rules run {r + 1}", lambda r=r: quality_once(work, quality_rows, r))
        for r in range(args.runs)
    ]
    lat = timed(f"{args.changes} single-row changes", lambda: latency(work, args.changes, 10_000))
    lat_rules = timed(
        f"{args.changes} single-row changes, rule library in force",
        lambda: latency(work, args.changes, 10_000, rules=True),
    )
    hop_plain = timed(
        f"{args.changes} single-row changes, one hop, plaintext",
        lambda: hop_latency(work, args.changes, 10_000, tls=False),
    )
    hop_tls = timed(
        f"{args.changes} single-row changes, one hop, mutual TLS",
        lambda: hop_latency(work, args.changes, 10_000, tls=True),
    )
    big, big_head = timed(
        f"loading {args.memory_rows:,} people",
        lambda: prepare_county(work, args.memory_rows, "big"),
    )
    try:
        big_seconds, peak = timed("large backfill", lambda: backfill_once(work, big, big_head, 99))
    finally:
        big.stop()

    quality_share = median([q[2] for q in quality]) / median([q[1] for q in quality])
    rate = args.rows / median(framework)
    ceiling = args.rows / median(raw)

    def p99(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    rows = [
        (
            "(a) backfill county → city",
            f"{args.rows:,} rows",
            f"{rate:,.0f} rows/s",
            f"median of {args.runs}: {median(framework):.2f} s",
        ),
        (
            "(a) raw ceiling DuckDB→IPC→gRPC→DuckDB",
            f"{args.rows:,} rows",
            f"{ceiling:,.0f} rows/s",
            f"median {median(raw):.2f} s; 32,768-row messages, 262,144-row INSERTs",
        ),
        ("(a) Tongyuan / ceiling", "", f"{rate / ceiling:.0%}", "goal ≥ 70%"),
        (
            "(a) raw, one INSERT of all rows",
            f"{args.rows:,} rows",
            f"{args.rows / median(raw_one):,.0f} rows/s",
            f"median {median(raw_one):.2f} s; Tongyuan at {rate * median(raw_one) / args.rows:.0%}",
        ),
        (
            "(b) latency county → city → province",
            f"{len(lat)} changes",
            f"p50 {median(lat):.1f} ms",
            f"p99 {p99(lat):.1f} ms (goal p50 < 50, p99 < 250)",
        ),
        (
            "(b) the same, base rule library in force",
            f"{len(lat_rules)} changes",
            f"p50 {median(lat_rules):.1f} ms",
            f"p99 {p99(lat_rules):.1f} ms; parents skip rules the child applied",
        ),
        (
            "(c) city peak RSS during backfill",
            f"{args.memory_rows:,} rows",
            f"{peak / 2**30:.2f} GiB",
            f"{args.memory_rows / big_seconds:,.0f} rows/s; goal < 1.5 GiB",
        ),
        (
            "(d) observing import (one source)",
            f"{args.rows:,} values",
            f"{args.rows / median([d[0] for d in sources]):,.0f} values/s",
            f"median {median([d[0] for d in sources]):.2f} s; observations, no record written",
        ),
        (
            "(d) cross-check against the source",
            f"{args.rows:,} values",
            f"{args.rows / median([d[1] for d in sources]):,.0f} values/s",
            f"median {median([d[1] for d in sources]):.2f} s; {sources[0][2]:,} discrepancies "
            "(1 in 100 differs)",
        ),
        (
            "(e) base rule library, rules alone",
            f"{args.rows:,} rows",
            f"{args.rows / median([q[0] for q in quality]):,.0f} rows/s",
            f"median {median([q[0] for q in quality]):.2f} s; goal ≥ 200,000 rows/s",
        ),
        (
            "(e) import with the base rule library",
            f"{args.rows:,} rows",
            f"{args.rows / median([q[1] for q in quality]):,.0f} rows/s",
            f"median {median([q[1] for q in quality]):.2f} s; {quality[0][3]:,} rows held",
        ),
        (
            "(e) the same import without rules",
            f"{args.rows:,} rows",
            f"{args.rows / median([q[2] for q in quality]):,.0f} rows/s",
            f"with rules at {quality_share:.0%} of this speed",
        ),
        (
            "(f) backfill county → city, conditional resource",
            f"{args.rows:,} rows",
            f"{args.rows / median(conditional):,.0f} rows/s",
            f"median {median(conditional):.2f} s; IDs pseudonymised, names and addresses "
            f"masked at the county; at {median(framework) / median(conditional):.0%} of (a)",
        ),
        (
            "(g) latency county → city, plaintext",
            f"{len(hop_plain)} changes",
            f"p50 {median(hop_plain):.1f} ms",
            f"p99 {p99(hop_plain):.1f} ms; one hop, development mode",
        ),
        (
            "(g) the same over mutual TLS",
            f"{len(hop_tls)} changes",
            f"p50 {median(hop_tls):.1f} ms",
            f"p99 {p99(hop_tls):.1f} ms; certificates from `tongyuan pki`",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measure", "size", "result", "notes")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
