"""A node's life: restarts after kill -9, a config that gains entities and columns, and
a child whose store was replaced under the same code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import Cluster, wait_until

VEHICLE = """
[[entities]]
name = "vehicle"
key = "plate"
columns = { plate = "string", owner_id_number = "string", registered_on = "date" }
"""


def test_a_killed_node_leaves_nothing_that_blocks_the_cli_or_a_restart(cluster: Cluster) -> None:
    county = cluster.node("320102", "county").start()
    admin = county.directory / "run" / "admin.json"
    endpoint = json.loads(admin.read_text())
    county.kill9()
    assert admin.exists(), "kill -9 leaves the runtime file behind"
    # Even if the pid were reused, the lock died with the process: the CLI opens the store.
    endpoint["pid"] = 1
    admin.write_text(json.dumps(endpoint))
    status = county.status()
    assert status["serving"] is False
    county.start()
    assert county.fetch_status()["serving"] is True
    second = county.cli("serve", check=False)
    assert second.returncode == 1 and "already serving" in second.stderr


def test_a_config_can_add_an_entity_and_later_a_column(cluster: Cluster, tmp_path: Path) -> None:
    county = cluster.node("320102", "county")
    config = county.directory / "tongyuan.toml"
    config.write_text(config.read_text(encoding="utf-8") + VEHICLE, encoding="utf-8")
    # A stopped node whose store predates the entity still answers status (it is empty).
    assert county.status()["rows"].get("vehicle", 0) == 0
    cars = tmp_path / "cars.csv"
    cars.write_text("plate,owner_id_number,registered_on\n苏A12345,320102199001011234,2020-05-01\n")
    county.ingest("vehicle", cars)
    with_color = VEHICLE.replace(
        'registered_on = "date" }', 'registered_on = "date", color = "string" }'
    )
    config.write_text(config.read_text(encoding="utf-8").replace(VEHICLE, with_color))
    county.start()
    # The resource carries the new attribute once its next version says so.
    resource = county.resource("vehicle")
    fields = "plate,owner_id_number,registered_on,color"
    county.cli("catalog", "edit", resource, "--fields", fields)
    county.cli("catalog", "publish", resource)
    city = cluster.node("320100", "city")
    (city.directory / "tongyuan.toml").write_text(
        (city.directory / "tongyuan.toml").read_text(encoding="utf-8") + with_color,
        encoding="utf-8",
    )
    city.start()
    city.cli("children", "add", county.code, county.address)
    painted = tmp_path / "painted.csv"
    painted.write_text(
        "plate,owner_id_number,registered_on,color\n苏A12345,320102199001011234,2020-05-01,红\n"
        "苏A99999,320102198505052345,2021-01-02,white\n"
    )
    assert county.ingest("vehicle", painted)["changes"] == 2
    expected = [
        {"plate": "苏A12345", "color": "红", "origin_node": "320102"},
        {"plate": "苏A99999", "color": "white", "origin_node": "320102"},
    ]
    sql = "SELECT plate, color, origin_node FROM vehicle ORDER BY plate"
    assert county.fetch(sql) == expected
    wait_until(lambda: city.fetch(sql) == expected, what="vehicles at the city")


def test_a_child_whose_store_was_replaced_is_refused_not_mixed_in(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node("320102", "county").start()
    city = cluster.node("320100", "city").start()
    city.cli("children", "add", county.code, county.address)
    people = tmp_path / "p.csv"
    people.write_text(
        "id_number,name,sex,birth_date,phone,address,division_code\n"
        "320102199001011234,张三,1,1990-01-01,1,a,320102\n"
    )
    county.ingest("person", people)
    wait_until(lambda: len(city.fetch("SELECT * FROM person")) == 1, what="first sync")
    county.stop()
    shutil.rmtree(county.directory)
    county.init()  # same code, same address, a brand-new store
    county.start()

    def refused() -> bool:
        child = city.fetch_status()["children"][0]
        return child["state"] == "down" and "replaced" in (child["error"] or "")

    wait_until(refused, what="the link to refuse the replaced store")
    assert len(city.fetch("SELECT * FROM person")) == 1


def test_a_parent_restored_from_an_old_backup_is_told_to_resync(
    cluster: Cluster, tmp_path: Path
) -> None:
    county = cluster.node("320102", "county")
    county.configure("store", compact_interval_seconds=0.5, tombstone_min_age_hours=0.0)
    county.start()
    city = cluster.node("320100", "city").start()
    city.cli("children", "add", county.code, county.address)
    header = "id_number,name,sex,birth_date,phone,address,division_code\n"
    one = "320102199001011234,张三,1,1990-01-01,1,a,320102\n"
    two = "320102198505052345,李四,2,1985-05-05,2,b,320102\n"
    both = tmp_path / "both.csv"
    both.write_text(header + one + two)
    county.ingest("person", both)
    wait_until(lambda: len(city.fetch("SELECT * FROM person")) == 2, what="first sync")
    # The city operator takes a backup (stopped node: copy the store file).
    city.stop()
    backup = tmp_path / "city-backup.duckdb"
    shutil.copy(city.directory / "store.duckdb", backup)
    city.start()
    # A third record, then a deletion, both acknowledged; the tombstone is compacted away.
    three = tmp_path / "three.csv"
    three.write_text(header + one + two + "320102200002293451,王五,1,2000-02-29,3,c,320102\n")
    county.ingest("person", three)
    only_one = tmp_path / "one.csv"
    only_one.write_text(header + one)
    county.ingest("person", only_one, "--snapshot")
    wait_until(lambda: len(city.fetch("SELECT * FROM person")) == 1, what="deletes applied")
    wait_until(
        lambda: (
            county.fetch("SELECT count(*) AS n FROM tongyuan.rows_person WHERE _deleted")[0]["n"]
            == 0
        ),
        what="tombstones compacted",
    )
    # Disaster at the city: it comes back from the backup, before the deletions.
    city.stop()
    shutil.copy(backup, city.directory / "store.duckdb")
    city.start()

    def refused() -> bool:
        child = city.fetch_status()["children"][0]
        return "full resync" in (child["error"] or "")

    wait_until(refused, what="the county to refuse the restored parent")
    assert len(city.fetch("SELECT * FROM person")) == 2, "nothing was applied on top"
