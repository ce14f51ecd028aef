"""`kill -9` of the child and of the parent at random points during a backfill loses
and duplicates nothing; SIGTERM shuts down cleanly."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pyarrow.csv as pacsv
from conftest import Cluster, wait_until

from node.demo_data import bench_people

ROUNDS = 20


def test_kill9_during_backfill_loses_and_duplicates_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node("320102", "county")
    data = tmp_path / "people.csv"
    pacsv.write_csv(bench_people(60_000, "320102", seed=7), data)
    county.ingest("person", data)
    county.start()
    city = cluster.node("320100", "city")
    # Small windows and transactions: many commit points to be killed between.
    city.configure("sync", batch_changes=1500, apply_max_rows=3000, pull_interval_seconds=0.5)
    city.start()
    city.cli("children", "add", county.code, county.address)

    rng = random.Random(20261123)
    victims = []
    for round_ in range(ROUNDS):
        time.sleep(rng.uniform(0.05, 0.6))
        victim = rng.choice([county, city])
        victim.kill9()
        victims.append(victim.code)
        if round_ % 5 == 4:
            # The child keeps changing while the link is broken.
            update = tmp_path / f"update{round_}.csv"
            pacsv.write_csv(bench_people(2_000, "320102", seed=100 + round_), update)
            if county.running:
                county.ingest("person", update)
        victim.start()
    assert {"320102", "320100"} <= set(victims)

    def caught_up() -> bool:
        children = city.fetch_status()["children"]
        return bool(children and children[0]["lag"] == 0 and children[0]["state"] == "streaming")

    wait_until(caught_up, timeout=120, what="city caught up after the kills")
    columns = "origin_node, origin_seq, id_number, name, phone, birth_date"
    expected = county.fetch(f"SELECT {columns} FROM person")
    got = city.fetch(f"SELECT {columns} FROM person")
    assert len(got) == len(expected)
    assert {tuple(r.values()) for r in got} == {tuple(r.values()) for r in expected}
    (dups,) = city.fetch(
        "SELECT count(*) - count(DISTINCT (origin_node, id_number)) AS n FROM tongyuan.rows_person"
    )
    assert dups["n"] == 0


def test_sigterm_shuts_down_cleanly_and_the_store_reopens(cluster: Cluster, tmp_path: Path) -> None:
    county = cluster.node("320102", "county").start()
    data = tmp_path / "people.csv"
    pacsv.write_csv(bench_people(5_000, "320102", seed=1), data)
    county.ingest("person", data)
    assert county.stop() == 0
    assert not (county.directory / "run" / "admin.json").exists()
    assert "stopped" in county.log()
    status = county.status()
    assert status["serving"] is False and status["rows"]["person"] == 5_000
    county.start()
    wait_until(lambda: county.fetch_status()["serving"], what="restart")
