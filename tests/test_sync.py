"""Delta sync between real node processes: backfill, subscribe, multi-hop origin,
scheduled pulls, moves between parents, and a county attached after running alone."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.csv as pacsv
from conftest import Cluster, Node, wait_until

from node.demo_data import fake_people

PERSON_KEY = "origin_node, id_number"


def people_file(path: Path, division: str, count: int, seed: int = 0) -> Path:
    pacsv.write_csv(fake_people(division, count, seed=seed), path)
    return path


def person_rows(node: Node, where: str = "true") -> set[tuple[object, ...]]:
    rows = node.fetch(
        "SELECT origin_node, origin_seq, origin_dept, origin_batch, id_number, name, phone "
        f"FROM person WHERE {where}"
    )
    return {tuple(r.values()) for r in rows}


def no_duplicates(node: Node) -> bool:
    (row,) = node.fetch(f"SELECT count(*) AS n, count(DISTINCT ({PERSON_KEY})) AS d FROM person")
    return bool(row["n"] == row["d"])


def in_step(parent: Node, child: Node, where: str = "true") -> bool:
    return person_rows(parent, where) == person_rows(child, where)


def test_changes_reach_the_province_through_the_city_with_origin_kept(
    cluster: Cluster, tmp_path: Path
) -> None:
    province = cluster.node("320000", "province").start()
    city = cluster.node("320100", "city").start()
    county_a = cluster.node("320102", "xuanwu").start()
    county_b = cluster.node("320104", "qinhuai").start()
    city.cli("children", "add", county_a.code, county_a.address)
    city.cli("children", "add", county_b.code, county_b.address)
    province.cli("children", "add", city.code, city.address)

    county_a.ingest(
        "person", people_file(tmp_path / "a.csv", "320102", 300, seed=1), "--department", "公安局"
    )
    county_b.ingest("person", people_file(tmp_path / "b.csv", "320104", 200, seed=2))

    wait_until(lambda: len(person_rows(province)) == 500, what="500 people at the province")
    assert person_rows(province, "origin_node = '320102'") == person_rows(county_a)
    assert person_rows(province, "origin_node = '320104'") == person_rows(county_b)
    depts = province.fetch("SELECT DISTINCT origin_dept FROM person WHERE origin_node = '320102'")
    assert depts == [{"origin_dept": "公安局"}]

    # A later single change arrives through both hops on the open streams.
    first = county_a.fetch("SELECT * FROM person ORDER BY id_number LIMIT 1")[0]
    edited = tmp_path / "edit.csv"
    with open(edited, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        columns = ["id_number", "name", "sex", "birth_date", "phone", "address", "division_code"]
        writer.writerow(columns)
        writer.writerow([first[c] if c != "phone" else "13312345678" for c in columns])
    county_a.ingest("person", edited)
    wait_until(
        lambda: (
            province.fetch(f"SELECT phone FROM person WHERE id_number = '{first['id_number']}'")
            == [{"phone": "13312345678"}]
        ),
        timeout=10,
        what="the edit at the province",
    )
    assert no_duplicates(province) and no_duplicates(city)

    status = province.fetch_status()
    (child,) = status["children"]
    assert child["code"] == "320100" and child["state"] == "streaming"
    wait_until(lambda: province.fetch_status()["children"][0]["lag"] == 0, what="lag 0")
    city_status = city.fetch_status()
    assert {c["code"] for c in city_status["children"]} == {"320102", "320104"}
    assert {p["code"] for p in city_status["parents"]} == {"320000"}


def test_scheduled_pulls_carry_changes_when_subscribe_is_off(
    cluster: Cluster, tmp_path: Path
) -> None:
    city = cluster.node("320100", "city")
    city.configure("sync", subscribe=False, pull_interval_seconds=0.5)
    city.start()
    county = cluster.node("320102", "county").start()
    city.cli("children", "add", county.code, county.address)
    county.ingest("person", people_file(tmp_path / "p.csv", "320102", 50))
    wait_until(lambda: in_step(city, county), what="scheduled pull")
    assert city.fetch_status()["children"][0]["state"] != "streaming"


def test_stream_recovers_after_the_child_restarts(cluster: Cluster, tmp_path: Path) -> None:
    city = cluster.node("320100", "city").start()
    county = cluster.node("320102", "county").start()
    city.cli("children", "add", county.code, county.address)
    county.ingest("person", people_file(tmp_path / "p1.csv", "320102", 20, seed=1))
    wait_until(lambda: in_step(city, county), what="first sync")
    county.kill9()
    wait_until(lambda: city.fetch_status()["children"][0]["state"] == "down", what="link down")
    county.start()
    county.ingest("person", people_file(tmp_path / "p2.csv", "320102", 20, seed=2))
    wait_until(lambda: in_step(city, county), what="sync after restart")
    wait_until(
        lambda: city.fetch_status()["children"][0]["state"] == "streaming", what="stream back"
    )


def test_county_attached_after_running_alone_backfills_its_current_data(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node("320102", "county")
    county.configure("store", compact_interval_seconds=0.5, tombstone_min_age_hours=0.0)
    # Months alone: many imports, edits and snapshot deletes.
    for seed in range(4):
        county.ingest("person", people_file(tmp_path / f"p{seed}.csv", "320102", 100, seed=seed))
    county.ingest("person", people_file(tmp_path / "p0.csv", "320102", 100, seed=0), "--snapshot")
    county.start()
    live = county.fetch("SELECT count(*) AS n FROM person")[0]["n"]
    assert live == 100
    # With no parent ever seen, tombstones are not needed by anyone and get compacted.
    wait_until(
        lambda: (
            county.fetch("SELECT count(*) AS n FROM tongyuan.rows_person WHERE _deleted")[0]["n"]
            == 0
        ),
        what="tombstones compacted",
    )
    city = cluster.node("320100", "city").start()
    city.cli("children", "add", county.code, county.address)
    wait_until(lambda: in_step(city, county), what="backfill")
    assert no_duplicates(city)


def test_moving_a_county_from_the_province_to_a_new_city(cluster: Cluster, tmp_path: Path) -> None:
    province = cluster.node("320000", "province").start()
    county = cluster.node("320102", "county").start()
    # Direct reporting first: the county sits right under the province.
    province.cli("children", "add", county.code, county.address)
    county.ingest("person", people_file(tmp_path / "p1.csv", "320102", 200, seed=1))
    wait_until(lambda: in_step(province, county), what="direct reporting")

    # The city stands up, takes the county over, the province pulls the city instead.
    city = cluster.node("320100", "city").start()
    city.cli("children", "add", county.code, county.address)
    province.cli("children", "remove", county.code)
    county.ingest("person", people_file(tmp_path / "p2.csv", "320102", 200, seed=2), "--snapshot")
    province.cli("children", "add", city.code, city.address)
    wait_until(lambda: in_step(city, county), what="city backfill")
    wait_until(lambda: in_step(province, county), what="province via city")
    assert no_duplicates(province)
    assert province.fetch("SELECT count(*) AS n FROM person")[0]["n"] == 200
