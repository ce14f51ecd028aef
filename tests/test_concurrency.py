"""Concurrent writers at one node, and kill -9 across two hops with deletes in flight."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
from conftest import Cluster, Node, wait_until

from node.demo_data import bench_people, fake_legal_entities

PEOPLE_COLUMNS = "origin_node, origin_seq, id_number, name, phone"
ENTITY_COLUMNS = "origin_node, origin_seq, uscc, name"


def rows(node: Node, sql: str) -> set[tuple[object, ...]]:
    return {tuple(r.values()) for r in node.fetch(sql)}


def same_people(parent: Node, *children: Node) -> bool:
    expected: set[tuple[object, ...]] = set()
    for child in children:
        expected |= rows(child, f"SELECT {PEOPLE_COLUMNS} FROM person")
    return rows(parent, f"SELECT {PEOPLE_COLUMNS} FROM person") == expected


def test_concurrent_imports_and_applies_at_one_node_reach_the_top_complete(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A city applies two counties' streams while importing its own data, all at once;
    every change of both entities must reach the province, none twice."""
    province = cluster.node("320000", "province").start()
    city = cluster.node("320100", "city").start()
    counties = [cluster.node(code, f"c{code}").start() for code in ("320102", "320104")]
    for county in counties:
        city.cli("children", "add", county.code, county.address)
    province.cli("children", "add", city.code, city.address)

    def import_batches(node: Node, resource: str, files: list[Path]) -> None:
        for path in files:
            node.ingest(resource, path)

    work: list[tuple[Node, str, list[Path]]] = []
    for i, node in enumerate([*counties, city]):
        division = node.code if node is not city else "320102"
        people, companies = [], []
        for batch in range(4):
            seed = 1000 * i + batch
            path = tmp_path / f"{node.code}-p{batch}.csv"
            pacsv.write_csv(bench_people(1500, division, seed=seed), path)
            people.append(path)
            path = tmp_path / f"{node.code}-e{batch}.csv"
            pacsv.write_csv(fake_legal_entities(division, 40, seed=seed), path)
            companies.append(path)
        work += [(node, "person", people), (node, "legal_entity", companies)]
    threads = [threading.Thread(target=import_batches, args=item) for item in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everyone = [*counties, city]
    wait_until(lambda: same_people(province, *everyone), timeout=60, what="people at the top")
    expected = set().union(
        *(rows(n, f"SELECT {ENTITY_COLUMNS} FROM legal_entity") for n in everyone)
    )
    assert rows(province, f"SELECT {ENTITY_COLUMNS} FROM legal_entity") == expected
    (dups,) = province.fetch(
        "SELECT count(*) - count(DISTINCT (origin_node, id_number)) AS n FROM tongyuan.rows_person"
    )
    assert dups["n"] == 0


def test_kill9_across_two_hops_with_deletes_ends_identical(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node("320102", "county")
    base = bench_people(20_000, "320102", seed=5)
    full = tmp_path / "full.csv"
    pacsv.write_csv(base, full)
    county.ingest("person", full)
    county.start()
    city = cluster.node("320100", "city")
    city.configure("sync", batch_changes=1000, apply_max_rows=2000, pull_interval_seconds=0.5)
    city.start()
    province = cluster.node("320000", "province")
    province.configure("sync", batch_changes=1000, apply_max_rows=2000, pull_interval_seconds=0.5)
    province.start()
    city.cli("children", "add", county.code, county.address)
    province.cli("children", "add", city.code, city.address)

    rng = random.Random(7)
    kept = base
    for round_ in range(8):
        time.sleep(rng.uniform(0.1, 0.5))
        victim = rng.choice([county, city, province])
        victim.kill9()
        if county is not victim:
            # The county drops a slice (snapshot deletes) and edits another while a link is down.
            keep = sorted(rng.sample(range(kept.num_rows), kept.num_rows - 500))
            kept = kept.take(pa.array(keep))
            snapshot = tmp_path / f"snap{round_}.csv"
            pacsv.write_csv(kept, snapshot)
            county.ingest("person", snapshot, "--snapshot")
        victim.start()

    def settled() -> bool:
        top = province.fetch_status()["children"]
        mid = city.fetch_status()["children"]
        return bool(top and mid and top[0]["lag"] == 0 and mid[0]["lag"] == 0)

    wait_until(settled, timeout=120, what="both links caught up")
    wait_until(lambda: same_people(city, county), timeout=30, what="city equals county")
    wait_until(lambda: same_people(province, county), timeout=30, what="province equals county")
    assert len(province.fetch("SELECT 1 FROM person")) == kept.num_rows
