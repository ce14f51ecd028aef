"""A node's life: restarts after kill -9, a published model that gains an entity and an
attribute, and a child whose store was replaced under the same code."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

from conftest import ROOT, Cluster, Node, wait_until

from node.client import open_node


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


BASE_MODEL = ROOT / "node" / "model" / "base.toml"
VEHICLE = """
[[entities]]
name = "vehicle"
key = "plate"
description = "Motor vehicle (机动车), keyed by plate number."

[[entities.attributes]]
name = "plate"
type = "string"
required = true

[[entities.attributes]]
name = "owner_id_number"
type = "string"
identifier = "GB 11643"

[[entities.attributes]]
name = "registered_on"
type = "date"
"""
COLOR = """
[[entities.attributes]]
name = "color"
type = "string"
"""


def model_file(
    path: Path, version: str, extra: str, *, replace: tuple[str, str] = ("", "")
) -> Path:
    """The shipped base model at `version` with `extra` appended (and one text replaced)."""
    text = BASE_MODEL.read_text(encoding="utf-8")
    assert 'version = "1.0.0"' in text
    text = text.replace('version = "1.0.0"', f'version = "{version}"', 1)
    if replace[0]:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1], 1)
    path.write_text(text + extra, encoding="utf-8")
    return path


def model_label(node: Node) -> str:
    """What `tongyuan model show` names as the node's active model."""
    api = open_node(node.directory, write=False)
    try:
        return str(api.call("model.show", {"which": "active"})["label"])
    finally:
        api.close()


def test_a_published_model_adds_an_entity_and_later_an_attribute(
    cluster: Cluster, tmp_path: Path
) -> None:
    v110 = model_file(tmp_path / "vehicle-1.1.0.toml", "1.1.0", VEHICLE)
    v120 = model_file(tmp_path / "vehicle-1.2.0.toml", "1.2.0", VEHICLE + COLOR)
    county = cluster.node("320102", "county")
    assert "vehicle" not in county.fetch_status()["rows"]
    # Published while the node is stopped: the CLI migrates the store itself.
    county.cli("model", "publish", str(v110))
    assert model_label(county) == "base 1.1.0 (320102)"
    assert county.fetch_status()["rows"]["vehicle"] == 0
    cars = tmp_path / "cars.csv"
    cars.write_text("plate,owner_id_number,registered_on\n苏A12345,320102199001011234,2020-05-01\n")
    resource = county.resource("vehicle")
    assert county.ingest(resource, cars)["inserted"] == 1
    # The same version again is refused: every publication moves the version on.
    again = county.cli("model", "publish", str(v110), check=False)
    assert again.returncode == 1
    assert "version 1.1.0 is not greater than 1.1.0" in again.stderr

    # While serving, through the admin API.
    county.start()
    county.cli("model", "publish", str(v120))
    assert model_label(county) == "base 1.2.0 (320102)"
    # The resource carries the new attribute once its next version says so.
    county.cli("catalog", "edit", resource, "--fields", "plate,owner_id_number,registered_on,color")
    county.cli("catalog", "publish", resource)
    painted = tmp_path / "painted.csv"
    painted.write_text(
        "plate,owner_id_number,registered_on,color\n苏A12345,320102199001011234,2020-05-01,红\n"
        "苏A99999,320102198505052345,2021-01-02,white\n"
    )
    assert county.ingest(resource, painted)["changes"] == 2
    expected = [
        {"plate": "苏A12345", "color": "红", "origin_node": "320102"},
        {"plate": "苏A99999", "color": "white", "origin_node": "320102"},
    ]
    sql = "SELECT plate, color, origin_node FROM vehicle ORDER BY plate"
    assert county.fetch(sql) == expected

    # A breaking change (an attribute dropped) is refused without --allow-breaking, even
    # under a new major version, and nothing changes.
    dropped = model_file(
        tmp_path / "vehicle-2.0.0.toml",
        "2.0.0",
        VEHICLE.replace('\n[[entities.attributes]]\nname = "registered_on"\ntype = "date"\n', "\n")
        + COLOR,
    )
    head = county.fetch_status()["head_seq"]
    broken = county.cli("model", "publish", str(dropped), check=False)
    assert broken.returncode == 1
    assert "breaks compatibility" in broken.stderr and "--allow-breaking" in broken.stderr
    assert "registered_on" in broken.stderr
    assert county.fetch_status()["head_seq"] == head
    assert model_label(county) == "base 1.2.0 (320102)"
    assert county.fetch("SELECT registered_on FROM vehicle ORDER BY plate") == [
        {"registered_on": date(2020, 5, 1)},
        {"registered_on": date(2021, 1, 2)},
    ]

    # A city still on the base model refuses the county's vehicles: they do not fit its model.
    city = cluster.node("320100", "city").start()
    city.cli("children", "add", county.code, county.address)

    def refused() -> bool:
        error = city.fetch_status()["children"][0]["error"] or ""
        return "vehicle" in error and "model" in error

    wait_until(refused, what="the city to refuse the county's vehicle rows")
    assert "vehicle" not in city.fetch_status()["rows"]
    held = "SELECT count(*) AS n FROM tongyuan.rows_catalog WHERE origin_node = '320102'"
    assert city.fetch(held) == [{"n": 0}], "nothing of the refused window is applied"
    # Once the city publishes the same model, the rows arrive.
    city.cli("model", "publish", str(v120))
    assert model_label(city) == "base 1.2.0 (320100)"
    wait_until(lambda: city.fetch(sql) == expected, what="vehicles at the city")
    assert city.fetch_status()["children"][0]["error"] is None


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
