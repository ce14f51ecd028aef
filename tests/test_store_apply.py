"""Applying a child's change windows to a parent's store, in-process on real DuckDB files.

Windows travel the real wire encoding (`encode_window` → `decode_batch`) so that what
is applied is exactly what a parent would receive. Re-delivery, overlap and arrival by
another path must be no-ops; gaps must be refused; deletes travel as tombstones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from node._gen.tongyuan.v1 import federation_pb2 as pb
from node.entities import Column, Entity
from node.model import load_base_model
from node.store import BatchGap, IncomingBatch, IngestResult, Store
from node.wire import BatchRejected, decode_batch, decode_table, encode_table, encode_window

COUNTY, CITY, PROVINCE = "320102", "320100", "320000"
ENTITIES: dict[str, Entity] = load_base_model().storage_entities()
PERSON = ENTITIES["person"]
COLUMNS = PERSON.column_names


def person(i: int, phone: str | None = None) -> dict[str, str]:
    """One person as a file would hold it: every value a string."""
    return {
        "id_number": f"3201021990{i:08d}",
        "name": f"居民{i}",
        "sex": str(1 + i % 2),
        "birth_date": "1990-01-01",
        "phone": phone or f"1380000{i:04d}",
        "address": f"南京市玄武区{i}号",
        "division_code": COUNTY,
    }


def people(rows: list[dict[str, str]]) -> pa.Table:
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in COLUMNS})


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, Store]]:
    """A county, a city and a province store, each its own DuckDB file."""
    opened = {
        code: Store.create(
            tmp_path / f"{code}.duckdb", code=code, name=name, tier=tier, model=load_base_model()
        )
        for code, name, tier in (
            (COUNTY, "玄武区", "county"),
            (CITY, "南京市", "city"),
            (PROVINCE, "江苏省", "province"),
        )
    }
    try:
        yield opened
    finally:
        for store in opened.values():
            store.close()


def ingest(
    store: Store,
    rows: list[dict[str, str]],
    *,
    origin: str = COUNTY,
    snapshot: bool = False,
) -> IngestResult:
    return store.ingest(
        PERSON,
        people(rows),
        file_label="people.csv",
        locate=lambda i: f"row {i + 1}",
        origin_node=origin,
        department="d",
        snapshot=snapshot,
    )


def received(store: Store, after: int, max_changes: int, child: str) -> IncomingBatch:
    """A window of `store`'s log as its parent receives it over the wire."""
    window = store.read_window(after, max_changes)
    return decode_batch(encode_window(window), ENTITIES, child)


def rows(store: Store, sql: str) -> list[dict[str, Any]]:
    return list(store.query(sql).to_pylist())


def live(store: Store) -> set[tuple[Any, ...]]:
    return {
        tuple(r.values())
        for r in rows(store, "SELECT origin_node, origin_seq, id_number, name, phone FROM person")
    }


def doubled_identities(store: Store) -> int:
    (row,) = rows(
        store,
        "SELECT count(*) - count(DISTINCT (origin_node, id_number)) AS n FROM tongyuan.rows_person",
    )
    return int(row["n"])


def versions_since(store: Store, seq: int) -> list[tuple[str, int]]:
    """(origin_node, origin_seq) of the versions this store logged after its sequence `seq`."""
    found = rows(
        store,
        "SELECT origin_node, origin_seq FROM tongyuan.rows_person "
        f"WHERE _seq > {int(seq)} ORDER BY origin_node, origin_seq",
    )
    return [(r["origin_node"], r["origin_seq"]) for r in found]


def assert_log_consistent(store: Store) -> None:
    """Every stored version has its own sequence number, none beyond the head."""
    (row,) = rows(
        store,
        "SELECT count(*) - count(DISTINCT _seq) AS shared, coalesce(max(_seq), 0) AS top "
        "FROM tongyuan.rows_person",
    )
    assert row["shared"] == 0, "two versions share a sequence number"
    assert row["top"] <= store.head_seq, f"a version has _seq {row['top']} > head"


def checkpoint(store: Store, child: str) -> int:
    link = store.link(child)
    assert link is not None, f"no link for {child}"
    return link.checkpoint


def test_applying_the_same_batch_twice_is_a_no_op(stores: dict[str, Store]) -> None:
    county, city = stores[COUNTY], stores[CITY]
    ingest(county, [person(i) for i in range(5)])
    batch = received(county, 0, 100, COUNTY)
    assert (batch.after_seq, batch.last_seq, batch.rows) == (0, 5, 5)

    first = city.apply_batches(COUNTY, CITY, [batch])
    assert (first.checkpoint, first.applied, first.redelivered) == (5, 5, False)
    assert live(city) == live(county)
    head = city.head_seq
    assert head >= 5

    again = city.apply_batches(COUNTY, CITY, [batch])
    assert (again.checkpoint, again.applied, again.redelivered) == (5, 0, True)
    assert city.head_seq == head, "a redelivered window must not produce changes"
    assert versions_since(city, head) == []
    assert checkpoint(city, COUNTY) == 5
    assert live(city) == live(county)
    assert doubled_identities(city) == 0
    assert_log_consistent(city)


def test_the_same_window_twice_in_one_group_applies_once(stores: dict[str, Store]) -> None:
    county, city = stores[COUNTY], stores[CITY]
    ingest(county, [person(i) for i in range(4)])
    batch = received(county, 0, 100, COUNTY)
    result = city.apply_batches(COUNTY, CITY, [batch, batch])
    assert (result.checkpoint, result.applied) == (4, 4)
    assert doubled_identities(city) == 0
    assert live(city) == live(county)
    assert_log_consistent(city)


def test_overlapping_windows_apply_idempotently(stores: dict[str, Store]) -> None:
    county, city = stores[COUNTY], stores[CITY]
    ingest(county, [person(i) for i in range(10)])
    first = received(county, 0, 6, COUNTY)
    overlapping = received(county, 3, 100, COUNTY)
    assert (first.last_seq, overlapping.after_seq, overlapping.last_seq) == (6, 3, 10)

    assert city.apply_batches(COUNTY, CITY, [first]).applied == 6
    head = city.head_seq
    result = city.apply_batches(COUNTY, CITY, [overlapping])
    assert (result.checkpoint, result.applied, result.redelivered) == (10, 4, False)
    assert versions_since(city, head) == [(COUNTY, s) for s in (7, 8, 9, 10)], (
        "changes 4..6 arrived twice but must be applied once"
    )
    assert live(city) == live(county)
    assert doubled_identities(city) == 0
    assert_log_consistent(city)


def test_a_window_after_the_checkpoint_is_refused_and_changes_nothing(
    stores: dict[str, Store],
) -> None:
    county, city = stores[COUNTY], stores[CITY]
    ingest(county, [person(i) for i in range(5)])
    city.apply_batches(COUNTY, CITY, [received(county, 0, 100, COUNTY)])
    ingest(county, [person(i) for i in range(5, 12)])  # seq 6..12
    before = (live(city), city.head_seq, checkpoint(city, COUNTY))

    with pytest.raises(BatchGap, match=r"320102.*after seq 8.*checkpoint is 5"):
        city.apply_batches(COUNTY, CITY, [received(county, 8, 100, COUNTY)])
    assert (live(city), city.head_seq, checkpoint(city, COUNTY)) == before

    # A group whose first window fits but whose second skips changes is refused whole.
    contiguous = received(county, 5, 2, COUNTY)  # (5, 7]
    skipping = received(county, 9, 100, COUNTY)  # (9, 12]
    with pytest.raises(BatchGap, match="non-contiguous"):
        city.apply_batches(COUNTY, CITY, [contiguous, skipping])
    assert (live(city), city.head_seq, checkpoint(city, COUNTY)) == before

    result = city.apply_batches(COUNTY, CITY, [received(county, 5, 100, COUNTY)])
    assert (result.checkpoint, result.applied) == (12, 7)
    assert live(city) == live(county)
    assert_log_consistent(city)


@pytest.mark.parametrize("county_first", [True, False], ids=["direct-first", "via-city-first"])
def test_the_higher_origin_seq_wins_whichever_path_delivers_first(
    stores: dict[str, Store], county_first: bool
) -> None:
    """The province hears of the county's records directly and through the city."""
    county, city, province = stores[COUNTY], stores[CITY], stores[PROVINCE]
    ingest(county, [person(i) for i in range(5)])  # seq 1..5
    city.apply_batches(COUNTY, CITY, [received(county, 0, 100, COUNTY)])
    # Two records change at the county after the city last pulled: seq 6, 7.
    ingest(county, [person(0, phone="13911110000"), person(1, phone="13911110001")])
    direct = received(county, 0, 100, COUNTY)
    via_city = received(city, 0, 100, CITY)
    assert via_city.rows == 5 and {
        r["origin_node"] for r in via_city.tables["person"].to_pylist()
    } == {COUNTY}

    if county_first:
        assert province.apply_batches(COUNTY, PROVINCE, [direct]).applied == 5
        head = province.head_seq
        stale = province.apply_batches(CITY, PROVINCE, [via_city])
        assert stale.applied == 0, "older versions arriving later must not overwrite newer"
        assert province.head_seq == head
    else:
        assert province.apply_batches(CITY, PROVINCE, [via_city]).applied == 5
        head = province.head_seq
        newer = province.apply_batches(COUNTY, PROVINCE, [direct])
        assert newer.applied == 2, "only the two records with a higher origin_seq are new"
        assert versions_since(province, head) == [(COUNTY, 6), (COUNTY, 7)]

    assert live(province) == live(county)
    phones = rows(
        province,
        "SELECT phone FROM person WHERE id_number IN ('320102199000000000', "
        "'320102199000000001') ORDER BY id_number",
    )
    assert phones == [{"phone": "13911110000"}, {"phone": "13911110001"}]
    assert doubled_identities(province) == 0
    assert_log_consistent(province)
    assert (checkpoint(province, COUNTY), checkpoint(province, CITY)) == (7, 5)


def test_a_delete_travels_as_a_tombstone_and_compaction_waits_for_the_ack(
    stores: dict[str, Store],
) -> None:
    county, city = stores[COUNTY], stores[CITY]
    ingest(county, [person(i) for i in range(3)])  # seq 1..3
    city.apply_batches(COUNTY, CITY, [received(county, 0, 100, COUNTY)])
    gone = person(1)["id_number"]

    result = ingest(county, [person(0), person(2)], snapshot=True)
    assert (result.deleted, result.last_seq) == (1, 4)
    window = received(county, 3, 100, COUNTY)
    (tombstone,) = window.tables["person"].to_pylist()
    assert (tombstone["id_number"], tombstone["_deleted"], tombstone["origin_seq"]) == (
        gone,
        True,
        4,
    )

    assert city.apply_batches(COUNTY, CITY, [window]).applied == 1
    assert rows(city, f"SELECT * FROM person WHERE id_number = '{gone}'") == []
    assert live(city) == live(county)
    assert rows(city, "SELECT id_number, origin_seq FROM tongyuan.rows_person WHERE _deleted") == [
        {"id_number": gone, "origin_seq": 4}
    ]
    assert doubled_identities(city) == 0

    def county_tombstones() -> int:
        return len(rows(county, "SELECT 1 FROM tongyuan.rows_person WHERE _deleted"))

    # The city has acknowledged only up to 3: it still needs the tombstone (seq 4).
    county.record_parent_ack(CITY, 3)
    assert county.compact(timedelta(days=30), timedelta(0)) == 0
    assert county_tombstones() == 1
    assert received(county, 3, 100, COUNTY).rows == 1

    county.record_parent_ack(CITY, 4)
    # Acknowledged, but younger than the minimum age: kept.
    assert county.compact(timedelta(days=30), timedelta(hours=1)) == 0
    assert county.compacted_through() == 0
    assert county.compact(timedelta(days=30), timedelta(0)) == 1
    assert county_tombstones() == 0
    # A parent below this point may have missed the delete; the servicer refuses it.
    assert county.compacted_through() == 4
    assert live(county) == live(city)


def test_rows_that_originate_at_the_applying_node_are_ignored(stores: dict[str, Store]) -> None:
    county, city = stores[COUNTY], stores[CITY]
    ingest(city, [person(7, phone="13700000007")], origin=CITY)  # the city's own record
    city_head = city.head_seq
    ingest(county, [person(1), person(2)])  # seq 1, 2
    # The same identity, claiming the city as origin, comes back up from the child.
    ingest(county, [person(7, phone="13799999999")], origin=CITY)  # seq 3
    # The wire refuses it: a child speaks only for its own subtree …
    with pytest.raises(BatchRejected, match="origin node 320100, which is not inside child"):
        received(county, 0, 100, COUNTY)
    # … and the store, given it anyway, still never lets it overwrite the city's own record.
    window = county.read_window(0, 100)
    batch = IncomingBatch(window.after_seq, window.last_seq, window.head_seq, window.tables)
    assert batch.rows == 3

    result = city.apply_batches(COUNTY, CITY, [batch])
    assert (result.checkpoint, result.applied) == (3, 2)
    assert versions_since(city, city_head) == [(COUNTY, 1), (COUNTY, 2)]
    own = rows(city, f"SELECT phone, origin_seq FROM person WHERE origin_node = '{CITY}'")
    assert own == [{"phone": "13700000007", "origin_seq": 1}]
    assert rows(city, f"SELECT count(*) AS n FROM person WHERE origin_node = '{COUNTY}'") == [
        {"n": 2}
    ]
    assert doubled_identities(city) == 0
    assert_log_consistent(city)


def test_a_commit_is_published_before_the_next_writer_can_commit(tmp_path: Path) -> None:
    """Window readers trust the published head: if a later commit could publish before an
    earlier one, a window would skip the earlier commit's rows for good."""
    from node.store.database import Database

    db = Database(tmp_path / "order.duckdb")
    with db.write() as cur:
        cur.execute("CREATE TABLE t (v INTEGER)")
    published: list[str] = []
    first_publishing = threading.Event()
    release_first = threading.Event()

    def slow_publish() -> None:
        first_publishing.set()
        release_first.wait(5)
        published.append("first")

    def first() -> None:
        with db.write(on_commit=slow_publish) as cur:
            cur.execute("INSERT INTO t VALUES (1)")

    def second() -> None:
        with db.write(on_commit=lambda: published.append("second")) as cur:
            cur.execute("INSERT INTO t VALUES (2)")

    a = threading.Thread(target=first)
    a.start()
    assert first_publishing.wait(5)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.3)
    assert b.is_alive(), "the second writer must wait until the first has published"
    release_first.set()
    a.join(5)
    b.join(5)
    assert published == ["first", "second"]
    db.close()


def test_the_wire_fits_a_child_on_an_older_model_but_never_loses_required_values(
    stores: dict[str, Store],
) -> None:
    """A child that has not adopted the parent's latest compatible model still fits: an
    optional attribute it lacks arrives empty, a type the parent widened converts; a
    required attribute it lacks is refused."""
    ingest(stores[COUNTY], [person(1)])
    message = encode_window(stores[COUNTY].read_window(0, 100))
    (part,) = [p for p in message.entities if p.entity == "person"]
    table = decode_table(part.arrow_ipc)

    def resent(changed: pa.Table) -> pb.ChangeBatch:
        batch = pb.ChangeBatch()
        batch.CopyFrom(message)
        del batch.entities[:]
        batch.entities.append(
            pb.EntityChanges(entity="person", arrow_ipc=encode_table(changed), rows=1)
        )
        return batch

    without_phone = decode_batch(resent(table.drop_columns(["phone"])), ENTITIES, COUNTY)
    assert without_phone.tables["person"].column("phone").to_pylist() == [None]
    with pytest.raises(BatchRejected, match=r"missing column\(s\) name"):
        decode_batch(resent(table.drop_columns(["name"])), ENTITIES, COUNTY)
    widened = {
        **ENTITIES,
        "person": replace(
            PERSON,
            columns=tuple(
                Column(c.name, "timestamp") if c.name == "birth_date" else c for c in PERSON.columns
            ),
        ),
    }
    converted = decode_batch(message, widened, COUNTY).tables["person"]
    assert str(converted.column("birth_date")[0].as_py()) == "1990-01-01 00:00:00"
