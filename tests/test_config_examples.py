"""The example configs in config/ load as they are, so they never drift from node/config.py."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from node.catalog.entries import CatalogSettings
from node.config import (
    CONFIG_FILE,
    Child,
    HttpSettings,
    StoreSettings,
    SyncSettings,
    delete_child,
    load_config,
    save_child,
)
from node.divisions import Tier, is_within

EXAMPLES = Path(__file__).resolve().parent.parent / "config"

# file → (code, tier, children by code)
EXPECTED = {
    "county.toml": ("320102", Tier.COUNTY, ()),
    "city.toml": ("320100", Tier.CITY, ("320102", "320104")),
    "province.toml": ("320000", Tier.PROVINCE, ("320100", "320583")),
}


def install(example: str, tmp_path: Path) -> Path:
    """Copy an example into a fresh node directory as an installer would."""
    directory = tmp_path / example.removesuffix(".toml")
    directory.mkdir()
    shutil.copy(EXAMPLES / example, directory / CONFIG_FILE)
    return directory


def test_every_tier_has_an_example() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_loads(example: str, tmp_path: Path) -> None:
    code, tier, children = EXPECTED[example]
    config = load_config(install(example, tmp_path))
    assert config.code == code
    assert config.tier is tier
    assert tuple(c.code for c in config.children) == children
    for child in config.children:
        assert is_within(child.code, code), f"{child.code} is not inside {code}"
    assert config.department and config.department != "unspecified"
    assert set(config.entities) == {"person", "legal_entity"}
    # The examples spell out the national defaults, so they load to exactly those.
    assert config.catalog == CatalogSettings()
    # The operator endpoint stays on loopback, at a fixed port Prometheus can be pointed at.
    assert config.http == HttpSettings(listen="127.0.0.1:9400")


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_sets_every_setting(example: str) -> None:
    """Each example shows every setting config.py accepts, each with a comment above it."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    assert set(doc["node"]) == {"code", "name", "listen", "department"}
    for section, cls in (
        ("sync", SyncSettings),
        ("store", StoreSettings),
        ("http", HttpSettings),
        ("catalog", CatalogSettings),
    ):
        assert set(doc[section]) == {f.name for f in dataclasses.fields(cls)}, section
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line) and not lines[i - 1].startswith("#"):
            if lines[i - 1].startswith(("code = ", "[[children]]")):
                continue  # a child's address follows its code
            raise AssertionError(f"{example}:{i + 1}: {line!r} has no comment above it")
    assert "# [[children]]" in text or "[[children]]" in text
    assert "# [[entities]]" in text


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_commented_entity_example_loads(example: str, tmp_path: Path) -> None:
    """Uncommenting the [[entities]] example gives a config that loads with the new entity."""
    directory = install(example, tmp_path)
    path = directory / CONFIG_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [[entities]]")
    block = [lines[start].removeprefix("# ")]
    for line in lines[start + 1 :]:
        if not re.match(r"^# [a-z_]+ = ", line):
            break
        block.append(line.removeprefix("# "))
    lines[start : start + len(block)] = block
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    entity = load_config(directory).entities["vehicle"]
    assert entity.key == "plate"
    assert entity.column_names == ("plate", "owner_id_number", "registered_on")


def test_children_commands_edit_the_examples(tmp_path: Path) -> None:
    """`children add|remove` rewrite an example through tomlkit and keep its comments."""
    directory = install("province.toml", tmp_path)
    save_child(directory, Child("320200", "10.32.0.20:7400"))  # 无锡市
    assert delete_child(directory, "320583")
    config = load_config(directory)
    assert [(c.code, c.address) for c in config.children] == [
        ("320100", "10.32.0.10:7400"),
        ("320200", "10.32.0.20:7400"),
    ]
    text = (directory / CONFIG_FILE).read_text(encoding="utf-8")
    assert "# Direct reporting (数据直达)" in text
    assert 'memory_limit = "8GB"' in text
