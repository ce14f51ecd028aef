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
    render_initial_config,
    save_child,
)
from node.divisions import Tier, is_within
from node.errors import ConfigError
from node.model import load_base_model
from node.model.files import load_model
from node.quality.files import load_rules
from node.quality.rules import RuleLibrary
from node.store.screening import applicable

EXAMPLES = Path(__file__).resolve().parent.parent / "config"
BASE_MODEL = "base-model.toml"
BASE_RULES = "base-rules.toml"

# file → (code, tier, children by code)
EXPECTED = {
    "county.toml": ("320102", Tier.COUNTY, ()),
    "city.toml": ("320100", Tier.CITY, ("320102", "320104")),
    "province.toml": ("320000", Tier.PROVINCE, ("320100", "320583")),
}

# What configs said before entities moved into the node's model.
OLD_ENTITIES = """
[[entities]]
name = "vehicle"
key = "plate"
columns = { plate = "string", owner_id_number = "string", registered_on = "date" }
"""


def install(example: str, tmp_path: Path) -> Path:
    """Copy an example into a fresh node directory as an installer would."""
    directory = tmp_path / example.removesuffix(".toml")
    directory.mkdir()
    shutil.copy(EXAMPLES / example, directory / CONFIG_FILE)
    return directory


def test_every_tier_has_an_example() -> None:
    """One config per tier, next to the base model file operators start their own from."""
    found = {p.name for p in EXAMPLES.glob("*.toml")}
    assert found - {BASE_MODEL, BASE_RULES} == set(EXPECTED)
    assert {BASE_MODEL, BASE_RULES} <= found
    # config/base-model.toml is the model every node starts with, not a stale copy of it.
    shipped = load_model(EXAMPLES / BASE_MODEL)
    assert shipped.digest() == load_base_model().digest()
    assert {"person", "legal_entity"} <= {e.name for e in shipped.entities}
    # config/base-rules.toml is a rule library for that model: it loads and every rule applies.
    rules = load_rules(EXAMPLES / BASE_RULES, shipped, "320000", local=False)
    assert {r.entity for r in rules.rules} >= {"person", "legal_entity", "house", "land_parcel"}
    library = RuleLibrary((rules,))
    assert all(why is None for _, _, why in applicable(library, shipped))


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


def _model_pointer_problems(text: str) -> list[str]:
    """Why a config text does not send its reader to the model for entities (empty: it does)."""
    problems = []
    if "[[entities]]" in text:
        problems.append("still shows an [[entities]] example, which load_config refuses")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    pointer = [i for i, line in enumerate(comments) if "`tongyuan model" in line]
    if not pointer:
        problems.append("has no comment pointing to `tongyuan model`")
    if not any("config/base-model.toml" in line for line in comments):
        problems.append("does not name config/base-model.toml as the model to start from")
    # Where the [[entities]] example was: after the children example, at the end.
    children = [i for i, line in enumerate(comments) if "[[children]]" in line]
    if pointer and children and pointer[-1] < children[-1]:
        problems.append("mentions the model before the [[children]] example, not after it")
    return problems


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_points_to_the_model_for_entities(example: str) -> None:
    """Entities are no longer configured: the example says where they went instead."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    problems = _model_pointer_problems(text)
    assert not problems, f"config/{example}: " + "; ".join(problems)


def test_init_config_points_to_the_model_for_entities(tmp_path: Path) -> None:
    text = render_initial_config("320102", "玄武区", "127.0.0.1:7400")
    assert _model_pointer_problems(text) == []
    (tmp_path / CONFIG_FILE).write_text(text, encoding="utf-8")
    assert load_config(tmp_path).code == "320102"


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_a_config_declaring_entities_is_refused(example: str, tmp_path: Path) -> None:
    """An old config with [[entities]] is refused, naming the file and where entities live."""
    directory = install(example, tmp_path)
    path = directory / CONFIG_FILE
    path.write_text(path.read_text(encoding="utf-8") + OLD_ENTITIES, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(directory)
    message = str(refused.value)
    assert str(path) in message
    assert "[[entities]]" in message
    assert "tongyuan model publish" in message
    assert "config/base-model.toml" in message


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
