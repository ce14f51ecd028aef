"""Sharing enforced at the source, between real node processes: a county's conditional
resources reach its city pseudonymised and masked (absent from the city's store file and
exports, yet counts and joins agree), a not-shared resource's rows stay home while its
catalogue entry travels, an unconditional one arrives in clear."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.csv as pacsv
import yaml
from conftest import Cluster, Node, wait_until
from test_outbound_store import COMPANIES, HOUSES, PARCELS, PERSON

from node.demo_data import fake_legal_entities, fake_people
from node.model import base_model_path
from node.store.outbound import pseudonym

BASE_RULES = base_model_path().parent.parent / "quality" / "base-rules.toml"
JOIN = (
    "SELECT p.id_number AS rep, count(*) AS n FROM legal_entity l "
    "JOIN person p ON p.id_number = l.legal_rep_id_number GROUP BY ALL"
)


def install_key(node: Node, key: bytes) -> None:
    """The federation key as `pki` installs it (security/federation.key, mode 0600)."""
    security = node.directory / "security"
    security.mkdir(mode=0o700, exist_ok=True)
    path = security / "federation.key"
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)


def counted(node: Node, sql: str) -> Counter[Any]:
    return Counter({r["k"]: r["n"] for r in node.fetch(sql)})


def test_a_conditional_resource_reaches_the_city_usable_but_invisible(
    cluster: Cluster, tmp_path: Path
) -> None:
    key = secrets.token_bytes(32)
    county = cluster.node("320102", "xuanwu")
    city = cluster.node("320100", "city")
    for node in (county, city):
        install_key(node, key)
    county.start()
    city.start()
    city.cli("quality", "rules", "local", str(BASE_RULES))

    entries = tmp_path / "resources.yaml"
    entries.write_text(
        yaml.safe_dump({"resource": [PERSON, COMPANIES, HOUSES, PARCELS]}, allow_unicode=True),
        encoding="utf-8",
    )
    county.cli("catalog", "add", str(entries), "--publish")
    people = fake_people("320102", 80, seed=21)
    pacsv.write_csv(people, tmp_path / "people.csv")
    county.cli("ingest", PERSON["code"], str(tmp_path / "people.csv"))
    companies = fake_legal_entities("320102", 20, seed=21, representatives=people)
    pacsv.write_csv(companies, tmp_path / "companies.csv")
    county.cli("ingest", COMPANIES["code"], str(tmp_path / "companies.csv"))
    # Not shared: refused by export below; its rows staying home, and unconditional
    # resources arriving in clear, are shown in tests/test_outbound_store.py.

    city.cli("children", "add", county.code, county.address)
    wait_until(
        lambda: (
            city.fetch(
                "SELECT (SELECT count(*) FROM person) + (SELECT count(*) FROM legal_entity) AS n"
            )
            == [{"n": 100}]
        ),
        what="people and companies at the city",
    )

    raw_ids = set(people.column("id_number").to_pylist())
    # Counts by pseudonym at the city are the counts by ID number at the county.
    by_rep = "SELECT legal_rep_id_number AS k, count(*) AS n FROM legal_entity GROUP BY 1"
    assert counted(city, by_rep) == Counter(
        {pseudonym(k, key): n for k, n in counted(county, by_rep).items()}
    )
    assert counted(city, "SELECT 1 AS k, count(DISTINCT id_number) AS n FROM person") == {1: 80}
    # A join by the pseudonym agrees with the county's join by the ID number.
    county_join = {pseudonym(r["rep"], key): r["n"] for r in county.fetch(JOIN)}
    assert county_join and {r["rep"]: r["n"] for r in city.fetch(JOIN)} == county_join
    # Names are masked (graded important); addresses graded general arrive as they are.
    raw_people = {r["id_number"]: r for r in county.fetch("SELECT * FROM person")}
    for seen in city.fetch("SELECT id_number, name, address FROM person"):
        assert seen["id_number"].startswith("ty1:")
        assert seen["name"][1:] == "*" * len(seen["name"][1:]) and len(seen["name"]) >= 2
    assert {r["address"] for r in city.fetch("SELECT address FROM person")} == {
        r["address"] for r in raw_people.values()
    }
    # The base rule library at the city does not hold the pseudonymised ID numbers.
    held = city.fetch("SELECT count(*) AS n FROM tongyuan.quarantine WHERE state = 'held'")
    assert held == [{"n": 0}]
    # Not shared: the catalogue entry travels.
    codes = city.fetch("SELECT code FROM tongyuan.rows_catalog WHERE NOT _deleted ORDER BY 1")
    assert HOUSES["code"] in [r["code"] for r in codes]

    # Exports from the serving city (records arrived protected) and the county.
    exported = tmp_path / "city-people.csv"
    city.cli("export", PERSON["code"], "-o", str(exported))
    county_export = tmp_path / "county-companies.jsonl"
    county.cli("export", COMPANIES["code"], "-o", str(county_export), "--format", "jsonl")
    refused = county.cli("export", HOUSES["code"], "-o", str(tmp_path / "h.csv"), check=False)
    assert refused.returncode == 1 and "is not shared" in refused.stderr
    for path in (exported, county_export):
        text = path.read_text(encoding="utf-8")
        assert [i for i in raw_ids if i in text] == []
    assert len(exported.read_text(encoding="utf-8").splitlines()) == 81
    lines = county_export.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 and all(json.loads(line)["legal_rep_id_number"] for line in lines)
    status = county.fetch_status()["sharing"]
    assert status["resources"] == {"unconditional": 1, "conditional": 2, "none": 1}
    assert status["federation_key"] == "federation"
    assert "sharing enforced" in county.cli("status").stdout

    # The city's store file, checkpointed at shutdown, holds no raw ID number; the
    # county's does (the scan would see them).
    assert city.stop() == 0 and county.stop() == 0
    city_bytes = (city.directory / "store.duckdb").read_bytes()
    assert [i for i in raw_ids if i.encode() in city_bytes] == []
    county_bytes = (county.directory / "store.duckdb").read_bytes()
    assert len([i for i in raw_ids if i.encode() in county_bytes]) == len(raw_ids)
