"""The entity-relationship model: its dataclasses (`schema`), files (`files`), version
compatibility (`compat`) and calibration between children (`calibrate`).

The base model ships inside the package so every node, at every tier, starts from the
same one.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from node.model.files import load_model
from node.model.schema import Model


def base_model_path() -> Path:
    """The shipped base model file (config/base-model.toml links to it)."""
    return Path(__file__).resolve().with_name("base.toml")


@cache
def load_base_model() -> Model:
    """The base model, read once per process (a Model is immutable)."""
    return load_model(base_model_path())
