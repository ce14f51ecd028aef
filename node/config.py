"""The node directory and its configuration file (`tongyuan.toml`).

The config file is human-edited and commented, so changes made by commands
(`children add`) go through tomlkit, which keeps comments and layout.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomlkit

from node.catalog.entries import SHARING_KINDS, TREATMENTS, CatalogSettings, SharingAttribute
from node.divisions import Tier, lookup_division, tier_of
from node.errors import ConfigError, UserError

CONFIG_FILE = "tongyuan.toml"
STORE_FILE = "store.duckdb"
RUN_DIR = "run"
ADMIN_FILE = "admin.json"
HTTP_FILE = "http.json"


@dataclass(frozen=True)
class Child:
    code: str
    address: str


@dataclass(frozen=True)
class SyncSettings:
    """How this node pulls from its children and serves its parent."""

    subscribe: bool = True
    pull_interval_seconds: float = 5.0
    batch_changes: int = 32768
    apply_max_rows: int = 262144
    heartbeat_seconds: float = 1.0
    ack_interval_seconds: float = 2.0
    # Grants: how often a parent asks each child for new requests and sends the grants
    # and return flows, and how often a node purges the slices of grants that ended.
    grant_check_seconds: float = 2.0
    # Audit anchors: how often a parent verifies each child's new audit entries and records
    # the child's head in its own chain, and how often it re-checks a child's whole chain.
    audit_anchor_seconds: float = 10.0
    audit_recheck_seconds: float = 3600.0


@dataclass(frozen=True)
class StoreSettings:
    checkpoint_interval_seconds: float = 60.0
    compact_interval_seconds: float = 300.0
    parent_ack_timeout_days: float = 30.0
    tombstone_min_age_hours: float = 24.0
    # How often observations are cross-checked against their sources' records.
    crosscheck_interval_seconds: float = 1.0
    memory_limit: str = "1GB"


@dataclass(frozen=True)
class QualitySettings:
    """Rule library, quarantine, scores and feedback."""

    # Open feedback items older than this are shown as overdue.
    feedback_overdue_hours: float = 72.0
    # How often a parent pulls each child's quality report (scores roll up).
    report_pull_seconds: float = 10.0


@dataclass(frozen=True)
class HttpSettings:
    """The read-only operator endpoint: metrics, status page, status JSON."""

    enabled: bool = True
    listen: str = "127.0.0.1:0"
    lag_sample_seconds: float = 30.0


@dataclass(frozen=True)
class SecuritySettings:
    """Federation security: mutual TLS with `tongyuan pki` certificates, unless plaintext
    is asked for explicitly (development only)."""

    plaintext_dev: bool = False


@dataclass(frozen=True)
class NodeConfig:
    directory: Path
    code: str
    name: str
    tier: Tier
    listen: str
    department: str
    children: tuple[Child, ...] = ()
    sync: SyncSettings = field(default_factory=SyncSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_FILE

    @property
    def store_path(self) -> Path:
        return self.directory / STORE_FILE

    @property
    def admin_file(self) -> Path:
        return self.directory / RUN_DIR / ADMIN_FILE

    @property
    def http_file(self) -> Path:
        return self.directory / RUN_DIR / HTTP_FILE


def resolve_directory(option: str | None) -> Path:
    """`--dir`, else `$TONGYUAN_DIR`, else the current directory."""
    chosen = option or os.environ.get("TONGYUAN_DIR") or "."
    return Path(chosen).expanduser().resolve()


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$")


def validate_address(address: str, where: str) -> str:
    """HOST:PORT with a numeric port (IPv6 in brackets); raises a UserError naming `where`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"{where}: address {address!r} is not HOST:PORT")
    if not _HOST.match(host):
        raise UserError(
            f"{where}: address {address!r} has an invalid host {host!r} "
            "(write an IPv6 address in brackets, e.g. [::1]:7400)"
        )
    return address


def _section(doc: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return value


def _settings(cls: type, values: dict[str, Any], path: Path, section: str) -> Any:
    known = {f.name for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}: [{section}] has unknown setting {key!r}")
        expected = type(getattr(cls(), key))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        widened = expected is float and number
        if not widened and (
            not isinstance(value, expected) or isinstance(value, bool) != (expected is bool)
        ):
            raise ConfigError(
                f"{path}: [{section}] {key} must be a {expected.__name__}, got {value!r}"
            )
        if number and not (value >= 0 if key in _ZERO_ALLOWED else value > 0):
            limit = "0 or more" if key in _ZERO_ALLOWED else "above 0"
            raise ConfigError(f"{path}: [{section}] {key} must be {limit}, got {value!r}")
    return cls(**values)


# Settings where 0 is meaningful ("keep deletes no minimum time").
_ZERO_ALLOWED = frozenset({"tombstone_min_age_hours"})


def load_config(directory: Path) -> NodeConfig:
    """Read and check `DIR/tongyuan.toml`; every problem names the file and the setting."""
    path = directory / CONFIG_FILE
    if not path.exists():
        raise ConfigError(
            f"{directory} is not a Tongyuan node directory (no {CONFIG_FILE}); "
            "run `tongyuan --dir DIR init --code CODE` first"
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    node = _section(doc, "node", path)
    code = node.get("code")
    if not isinstance(code, str):
        raise ConfigError(f"{path}: [node] code must be a 6-digit division code string")
    try:
        division = lookup_division(code)
    except UserError as exc:
        raise ConfigError(f"{path}: [node] code: {exc}") from None
    children: list[Child] = []
    for i, child in enumerate(doc.get("children", []), start=1):
        where = f"{path}: children #{i}"
        if not isinstance(child, dict) or not isinstance(child.get("code"), str):
            raise ConfigError(f"{where}: needs code and address")
        address = child.get("address")
        if not isinstance(address, str):
            raise ConfigError(f"{where}: needs an address HOST:PORT")
        validate_address(address, where)
        children.append(Child(code=child["code"], address=address))
    if "entities" in doc:
        raise ConfigError(
            f"{path}: [[entities]] is no longer read: entities live in the node's model. Put "
            "them in a model file (start from config/base-model.toml) and run "
            "`tongyuan model publish FILE`, then remove [[entities]] from the config"
        )
    listen = node.get("listen", "127.0.0.1:0")
    validate_address(str(listen), f"{path}: [node] listen")
    http = _settings(HttpSettings, _section(doc, "http", path), path, "http")
    validate_address(http.listen, f"{path}: [http] listen")
    return NodeConfig(
        directory=directory,
        code=code,
        name=str(node.get("name") or division.name),
        tier=tier_of(code),
        listen=str(listen),
        department=str(node.get("department", "unspecified")),
        children=tuple(children),
        sync=_settings(SyncSettings, _section(doc, "sync", path), path, "sync"),
        store=_settings(StoreSettings, _section(doc, "store", path), path, "store"),
        http=http,
        catalog=_catalog_settings(_section(doc, "catalog", path), path),
        quality=_settings(QualitySettings, _section(doc, "quality", path), path, "quality"),
        security=_settings(SecuritySettings, _section(doc, "security", path), path, "security"),
    )


def _catalog_settings(section: dict[str, Any], path: Path) -> CatalogSettings:
    """`[catalog]`: the province's names for sharing attributes and sensitivity grades."""
    default = CatalogSettings()
    unknown = sorted(set(section) - {"sharing", "sensitivity_grades", "grade_treatment"})
    if unknown:
        raise ConfigError(f"{path}: [catalog] has unknown setting(s) {', '.join(unknown)}")
    sharing = default.sharing
    if "sharing" in section:
        raw = section["sharing"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{path}: [catalog] sharing must be a list of {{id, label, kind}}")
        parsed = []
        for i, spec in enumerate(raw, start=1):
            where = f"{path}: [catalog] sharing #{i}"
            if not isinstance(spec, dict) or set(spec) != {"id", "label", "kind"}:
                raise ConfigError(f"{where}: give exactly id, label and kind")
            if spec["kind"] not in SHARING_KINDS:
                raise ConfigError(
                    f"{where}: kind {spec['kind']!r} is not one of {', '.join(SHARING_KINDS)}"
                )
            parsed.append(SharingAttribute(str(spec["id"]), str(spec["label"]), spec["kind"]))
        ids = [s.id for s in parsed]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{path}: [catalog] sharing lists an id twice")
        sharing = tuple(parsed)
    grades = default.sensitivity_grades
    if "sensitivity_grades" in section:
        raw_grades = section["sensitivity_grades"]
        if (
            not isinstance(raw_grades, list)
            or not raw_grades
            or not all(isinstance(g, str) and g for g in raw_grades)
        ):
            raise ConfigError(f"{path}: [catalog] sensitivity_grades must be a list of names")
        grades = tuple(raw_grades)
    treatment = _grade_treatment(section, grades, default, path)
    return CatalogSettings(sharing=sharing, sensitivity_grades=grades, grade_treatment=treatment)


def _grade_treatment(
    section: dict[str, Any], grades: tuple[str, ...], default: CatalogSettings, path: Path
) -> tuple[tuple[str, str], ...]:
    """`[catalog] grade_treatment`: grade → clear, mask or pseudonymise, for attributes of
    conditional resources leaving the node; a grade left out is pseudonymised."""
    if "grade_treatment" not in section:
        return tuple((g, t) for g, t in default.grade_treatment if g in grades)
    raw = section["grade_treatment"]
    where = f"{path}: [catalog] grade_treatment"
    if not isinstance(raw, dict):
        raise ConfigError(f'{where} must be a table, e.g. {{ general = "clear", core = "mask" }}')
    problems = []
    for grade, treatment in raw.items():
        if grade not in grades:
            problems.append(f"{grade!r} is not a grade of sensitivity_grades ({', '.join(grades)})")
        if treatment not in TREATMENTS:
            problems.append(f"{grade} = {treatment!r} is not one of {', '.join(TREATMENTS)}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return tuple((str(g), str(t)) for g, t in raw.items())


def render_initial_config(code: str, name: str, listen: str, plaintext_dev: bool = False) -> str:
    """The commented config file `init` writes."""
    plaintext_s = "true" if plaintext_dev else "false"
    tier = tier_of(code).value
    # JSON string syntax is valid TOML basic-string syntax: quotes in a name stay safe.
    code_s, name_s, listen_s = (json.dumps(v, ensure_ascii=False) for v in (code, name, listen))
    return f"""# Tongyuan node configuration ({tier} node {code}).
# Edit while the node is stopped, or use `tongyuan children add|remove` at any time.

[node]
code = {code_s}           # GB/T 2260 division code; decides the tier ({tier})
name = {name_s}
listen = {listen_s}   # federation address the parent pulls from
department = "unspecified"   # default department of `catalog add` entries given by flags

[sync]
subscribe = true              # keep a stream open to each child (changes arrive in ms)
pull_interval_seconds = 5.0   # scheduled pull when a child's stream is down
batch_changes = 32768         # change-log entries per wire message
apply_max_rows = 262144       # rows applied per transaction during a backfill
heartbeat_seconds = 1.0
grant_check_seconds = 2.0     # grant requests pulled, return flows sent, ended grants purged
audit_anchor_seconds = 10.0   # each child's new audit entries verified and its head anchored
audit_recheck_seconds = 3600.0 # each child's whole audit chain re-verified against the anchors

[store]
checkpoint_interval_seconds = 60.0
compact_interval_seconds = 300.0
parent_ack_timeout_days = 30.0    # a parent silent this long no longer holds back compaction
tombstone_min_age_hours = 24.0    # deletes are kept at least this long before compaction
crosscheck_interval_seconds = 1.0 # observations checked against their sources this often
memory_limit = "1GB"

[http]
enabled = true               # read-only operator endpoint: /metrics, / (status page), /status.json
listen = "127.0.0.1:0"       # loopback only by default; port 0 picks one (see run/http.json)
lag_sample_seconds = 30.0    # how often each child's lag is recorded for the status page

[security]
# Federation calls are mutual TLS with the certificates of `tongyuan pki` (DIR/security/):
# a child serves only its registered parent, a parent pulls only from children it
# certified. true turns all of that off: development only, never in production
# (`status` says so loudly).
plaintext_dev = {plaintext_s}

[quality]
feedback_overdue_hours = 72.0  # open feedback items older than this are overdue
report_pull_seconds = 10.0     # how often each child's quality report is pulled (scores roll up)

[catalog]
# Sharing attributes as this province names them; kind: unconditional, conditional or none.
sharing = [
  {{ id = "unconditional", label = "无条件共享", kind = "unconditional" }},
  {{ id = "conditional", label = "有条件共享", kind = "conditional" }},
  {{ id = "not_shared", label = "不予共享", kind = "none" }},
]
sensitivity_grades = ["general", "important", "core"]   # lowest first
# What each grade does to an attribute of a conditional resource before it leaves this
# node: clear (as is), mask (display mask: ID 6+4 digits, name, phone 3+4, address) or
# pseudonymise (keyed hash shared by the federation: joins still work). Not shared
# resources never leave; unconditional ones leave as is.
# grade_treatment = {{ general = "clear", important = "mask", core = "pseudonymise" }}

# Children this node pulls from (city and province nodes):
# [[children]]
# code = "320102"
# address = "10.0.0.12:7400"

# Entities, attributes and code lists are not configured here: they are the node's
# model (`tongyuan model show`; start your own from config/base-model.toml).
"""


def _edit_document(directory: Path) -> tuple[Path, tomlkit.TOMLDocument]:
    path = directory / CONFIG_FILE
    return path, tomlkit.parse(path.read_text(encoding="utf-8"))


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_child(directory: Path, child: Child) -> None:
    """Add a child to the config file, or change its address; comments are kept."""
    path, doc = _edit_document(directory)
    children = doc.get("children")
    if children is None:
        children = tomlkit.aot()
        doc.append("children", children)
    for entry in children:
        if entry.get("code") == child.code:
            entry["address"] = child.address
            break
    else:
        table = tomlkit.table()
        table["code"] = child.code
        table["address"] = child.address
        children.append(table)
    _write_atomically(path, tomlkit.dumps(doc))


def delete_child(directory: Path, code: str) -> bool:
    """Remove a child from the config file; False if it was not listed."""
    path, doc = _edit_document(directory)
    children = doc.get("children")
    if children is None:
        return False
    kept = [entry for entry in children if entry.get("code") != code]
    if len(kept) == len(children):
        return False
    if kept:
        new = tomlkit.aot()
        for entry in kept:
            new.append(entry)
        doc["children"] = new
    else:
        del doc["children"]
    _write_atomically(path, tomlkit.dumps(doc))
    return True
