"""Install a Tongyuan node on this server and leave it running, health-checked.

Run through scripts/setup-county, scripts/setup-city or scripts/setup-province, which pass
the tier as the first argument. Every step is idempotent: it checks whether its work is
already done ([skip]) before doing it ([ok]), so a second run with the same flags changes
nothing and a run that failed ([FAIL]) resumes where it stopped when run again.

Steps: check the flags (before anything is written), the Python environment (a venv under
PREFIX with Tongyuan installed by pip), `tongyuan init`, `tongyuan children add`, the
certificate step (skipped: node identity does not exist yet), a systemd unit or a start
script, start the node, wait for its gRPC health check to answer SERVING.

Only the standard library is used here: this runs before Tongyuan and its dependencies exist
on the machine. Exit status: 0 done, 1 a step failed, 2 a flag is missing or wrong.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
TIERS = ("county", "city", "province")
SCRIPT_FOR_TIER = {tier: f"scripts/setup-{tier}" for tier in TIERS}
DEFAULT_PREFIX = Path("/opt/tongyuan")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_LISTEN = "0.0.0.0:7400"
DEFAULT_DIR = "/srv/tongyuan"
HEALTH_TIMEOUT_SECONDS = 60.0
RETRY = "re-run the same command; it resumes where it stopped"

# Files the node itself owns in its directory (see node/config.py and node/admin.py).
CONFIG_FILE = "tongyuan.toml"
STORE_FILE = "store.duckdb"
SERVE_LOCK = Path("run") / "serve.lock"  # held by a serving node for its whole life
ADMIN_FILE = Path("run") / "admin.json"  # written once the node's CLI endpoint is up
# Files this script adds to the node directory.
PID_FILE = "tongyuan.pid"
LOG_FILE = "tongyuan.log"
SETUP_RECORD = "setup.json"
# In PREFIX/venv once Tongyuan is completely installed; a venv without it is rebuilt.
INSTALLED_MARKER = ".tongyuan-installed.json"
# What a source checkout copies into the temporary build tree (pip builds in place, and the
# installer's checkout should not collect build/ and *.egg-info directories).
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "demo",
    "bench-work",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "*.pyc",
)

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)$")
_CODE = re.compile(r"^[1-9][0-9]{5}$")


class InputError(Exception):
    """A flag is missing or wrong: one line on stderr, exit 2, nothing has been written."""


class StepFailed(Exception):
    """A step failed: a [FAIL] line saying what, then how to retry; exit 1."""

    def __init__(self, step: str, message: str, detail: str = "", hint: str = RETRY) -> None:
        super().__init__(message)
        self.step = step
        self.detail = detail
        self.hint = hint


# ----- flags --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the installer asked for, checked before anything is written."""

    tier: str
    code: str
    name: str | None
    listen: str
    directory: Path
    prefix: Path
    children: tuple[tuple[str, str], ...]
    parent: str | None
    systemd: bool
    unit_dir: Path
    user: str | None
    source: Path
    python: Path | None
    plaintext_dev: bool = False
    pki_bundle: Path | None = None

    @property
    def program(self) -> str:
        return f"setup-{self.tier}"

    @property
    def unit_name(self) -> str:
        return f"tongyuan-{self.code}.service"

    @property
    def start_script(self) -> Path:
        return self.prefix / "bin" / f"tongyuan-{self.code}-start"

    @property
    def stop_script(self) -> Path:
        return self.prefix / "bin" / f"tongyuan-{self.code}-stop"

    @property
    def venv(self) -> Path:
        return self.prefix / "venv"


def tier_of(code: str) -> str:
    """Tier by the code's shape, as the node decides it (XX0000, XXXX00, else county)."""
    if code.endswith("0000"):
        return "province"
    if code.endswith("00"):
        return "city"
    return "county"


def check_code(code: str, tier: str) -> str:
    if not _CODE.match(code):
        raise InputError(f"--code {code!r} is not a GB/T 2260 division code (6 digits)")
    actual = tier_of(code)
    if actual != tier:
        shape = {"province": "XX0000", "city": "XXXX00", "county": "not ending in 00"}[actual]
        raise InputError(
            f"--code {code} is a {actual} code ({shape}), not a {tier}; "
            f"run {SCRIPT_FOR_TIER[actual]} for it"
        )
    return code


def check_address(address: str, flag: str) -> str:
    """HOST:PORT with a fixed port (IPv6 in brackets), as the node checks it."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InputError(f"{flag}: {address!r} is not HOST:PORT (a port from 1 to 65535)")
    if not _HOST.match(host):
        raise InputError(
            f"{flag}: {address!r} has an invalid host {host!r} "
            "(write an IPv6 address in brackets, e.g. [::1]:7400)"
        )
    return address


def check_directory(directory: Path, code: str, listen: str) -> Path:
    """A new directory, or one holding this very node; never another node's."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--dir {directory} exists and is not a directory")
    config, store = directory / CONFIG_FILE, directory / STORE_FILE
    if not config.exists():
        if store.exists():
            raise InputError(
                f"--dir {directory} holds {STORE_FILE} but no {CONFIG_FILE}, so it is not a "
                "complete node; move it away or choose another --dir"
            )
        return directory
    node = read_node_config(directory)
    held = str(node.get("code", "?"))
    if held != code:
        raise InputError(
            f"--dir {directory} already holds node {held} ({CONFIG_FILE}); refusing to touch "
            "another node: choose another --dir"
        )
    if not store.exists():
        raise InputError(
            f"--dir {directory} holds {CONFIG_FILE} for node {code} but no {STORE_FILE}; "
            "move the directory away and re-run to initialise it afresh"
        )
    held_listen = str(node.get("listen", ""))
    if held_listen != listen:
        raise InputError(
            f"node {code} in {directory} listens on {held_listen}, not --listen {listen}; "
            f"give --listen {held_listen}, or edit {CONFIG_FILE} while the node is stopped"
        )
    return directory


def parse_children(text: str | None, tier: str, code: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    if tier == "county":
        raise InputError("--children: a county node has no children (its city pulls from it)")
    children: dict[str, str] = {}
    for item in text.split(","):
        child, sep, address = item.strip().partition("=")
        if not sep or not _CODE.match(child):
            raise InputError(f"--children: {item.strip()!r} is not CODE=HOST:PORT")
        child_tier = tier_of(child)
        inside = child[:4] == code[:4] if tier == "city" else child[:2] == code[:2]
        below = child_tier == "county" or (tier == "province" and child_tier == "city")
        if not inside or not below:
            raise InputError(f"--children: {child} is not a division below {tier} {code}")
        if child in children:
            raise InputError(f"--children: {child} is given twice")
        children[child] = check_address(address.strip(), f"--children {child}")
    return tuple(children.items())


def check_source(source: str | None) -> Path:
    path = Path(source).expanduser().resolve() if source else REPO
    if path.is_dir() and (path / "pyproject.toml").is_file():
        return path
    if path.is_file() and path.suffix == ".whl":
        return path
    raise InputError(
        f"--source {path} is neither a Tongyuan source directory (with pyproject.toml) "
        "nor a .whl file"
    )


def check_python(python: str | None) -> Path | None:
    if python is None:
        return None
    path = Path(python).expanduser().absolute()  # not resolve(): a venv's python is a symlink
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise InputError(f"--python {path} is not an executable file")
    return path


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as every other input error
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def arguments(tier: str) -> argparse.ArgumentParser:
    parser = Parser(
        prog=f"setup-{tier}",
        description=(
            f"Install a {tier} node of Tongyuan on this server: an isolated Python environment "
            "under PREFIX, the node in DIR, a systemd unit or a start script; it ends when the "
            "node answers its gRPC health check. Running it again changes nothing; after a "
            "failure it resumes. Missing --code/--listen/--dir are asked for on a terminal."
        ),
    )
    add = parser.add_argument
    add("--code", help=f"GB/T 2260 division code of this {tier}")
    add("--name", help="display name (default: the division's official name)")
    add("--listen", metavar="HOST:PORT", help=f"federation address, e.g. {DEFAULT_LISTEN}")
    add("--dir", dest="directory", metavar="DIR", help=f"node directory, e.g. {DEFAULT_DIR}")
    add(
        "--prefix",
        default=str(DEFAULT_PREFIX),
        help="where the venv and scripts go (default: %(default)s)",
    )
    # Both on every tier, so that a county given --children (or a province --parent) is told why.
    add("--children", metavar="CODE=HOST:PORT,...", help="children this node pulls from")
    add(
        "--parent",
        metavar="HOST:PORT",
        help="the parent node's address, for information: the parent pulls from this node "
        "(the command its operator runs is printed and kept in DIR/setup.json)",
    )
    add("--systemd", action="store_true", help="run the node as a systemd service")
    add(
        "--unit-dir",
        default=str(DEFAULT_UNIT_DIR),
        metavar="DIR",
        help="where --systemd writes the unit (default: %(default)s)",
    )
    add("--user", help="with --systemd: the account the service runs as")
    add(
        "--source",
        metavar="DIR_OR_WHEEL",
        help="install Tongyuan from here (default: this checkout)",
    )
    add(
        "--python",
        metavar="PATH",
        help="use this interpreter, which already has Tongyuan "
        "installed, instead of creating PREFIX/venv (nothing is installed)",
    )
    add(
        "--plaintext-dev",
        action="store_true",
        help="federation without TLS or identity checks: development only",
    )
    add(
        "--pki-bundle",
        metavar="FILE",
        help="install this certificate bundle (from the parent's `tongyuan pki issue` for the "
        "request an earlier run wrote to DIR/security/node.csr)",
    )
    return parser


def ask(label: str, default: str | None, check: Callable[[str], Any]) -> str:
    """Ask on the terminal until the answer passes `check` (three tries)."""
    for _ in range(3):
        suffix = f" [{default}]" if default else ""
        try:
            answer = input(f"{label}{suffix}: ").strip() or (default or "")
        except EOFError:
            break
        try:
            check(answer)
            return answer
        except InputError as exc:
            print(f"  {exc}", file=sys.stderr)
    raise InputError(f"no valid answer for: {label}")


def make_plan(tier: str, argv: Sequence[str]) -> Plan:
    """Parse and check every flag; ask for missing required ones on a terminal."""
    args = arguments(tier).parse_args(argv)
    # (attribute, flag, what it is, the answer Enter gives at the prompt, its check)
    required: list[tuple[str, str, str, str | None, Callable[[str], Any]]] = [
        ("code", "--code", f"the {tier}'s GB/T 2260 division code", None,
         lambda v: check_code(v, tier)),
        ("listen", "--listen", "the federation address HOST:PORT", DEFAULT_LISTEN,
         lambda v: check_address(v, "--listen")),
        ("directory", "--dir", "the node directory", DEFAULT_DIR, lambda v: None),
    ]  # fmt: skip
    for attribute, flag, what, default, check in required:
        if getattr(args, attribute) is not None:
            continue
        if not sys.stdin.isatty():
            raise InputError(f"missing {flag}: {what}; there is no terminal to ask for it on")
        setattr(args, attribute, ask(f"{flag} ({what})", default, check))
    code = check_code(args.code, tier)
    listen = check_address(args.listen, "--listen")
    if not args.directory:
        raise InputError("--dir: give the node directory")
    directory = check_directory(Path(args.directory).expanduser().resolve(), code, listen)
    parent = args.parent
    if parent is not None:
        if tier == "province":
            raise InputError("--parent: a province node is the top tier and has no parent")
        check_address(parent, "--parent")
    if args.user and not args.systemd:
        raise InputError("--user is for --systemd (the start script runs as whoever runs it)")
    if args.python and args.source:
        raise InputError("--python uses an interpreter that already has Tongyuan: no --source")
    bundle = Path(args.pki_bundle).expanduser().resolve() if args.pki_bundle else None
    if bundle is not None and args.plaintext_dev:
        raise InputError("--pki-bundle and --plaintext-dev exclude each other")
    if bundle is not None and tier == "province":
        raise InputError("--pki-bundle: a province creates the federation root itself")
    if bundle is not None and not bundle.is_file():
        raise InputError(f"--pki-bundle {bundle} is not a file")
    return Plan(
        tier=tier,
        code=code,
        name=args.name,
        listen=listen,
        directory=directory,
        prefix=Path(args.prefix).expanduser().resolve(),
        children=parse_children(args.children, tier, code),
        parent=parent,
        systemd=args.systemd,
        unit_dir=Path(args.unit_dir).expanduser().resolve(),
        user=args.user,
        source=check_source(args.source),
        python=check_python(args.python),
        plaintext_dev=args.plaintext_dev,
        pki_bundle=bundle,
    )


# ----- small helpers ------------------------------------------------------------------------


class Report:
    """Prints one line per step and remembers whether anything changed."""

    def __init__(self) -> None:
        self.changed = False

    def ok(self, step: str, text: str) -> None:
        self.changed = True
        print(f"[ok]   {step}: {text}", flush=True)

    def skip(self, step: str, text: str) -> None:
        print(f"[skip] {step}: {text}", flush=True)

    def note(self, text: str) -> None:
        print(f"       {text}", flush=True)

    def check(self, step: str, text: str) -> None:
        """A check that passed (changes nothing)."""
        print(f"[ok]   {step}: {text}", flush=True)


def read_node_config(directory: Path) -> dict[str, Any]:
    import tomllib  # Python 3.11+, checked in main()

    path = directory / CONFIG_FILE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return dict(doc.get("node", {})) | {"children": list(doc.get("children", []))}


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write atomically (temp file, then rename) unless the file already says exactly this."""
    try:
        if path.read_text(encoding="utf-8") == text and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def run(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextmanager
def prefix_lock(prefix: Path, program: str) -> Iterator[None]:
    """One setup at a time per PREFIX (two nodes may share its venv)."""
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        fd = os.open(prefix / ".setup.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StepFailed(
            "prefix",
            f"cannot use --prefix {prefix}: {exc.strerror or exc}",
            hint="run as a user who may write there (root for /opt), or give another --prefix",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{program}: another setup is running on {prefix}; waiting for it", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, dead but not yet reaped by its parent, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def serving_pid(directory: Path) -> int | None:
    """The pid of the node serving `directory`, 0 if it serves but its pid is not known yet,
    None if no node serves it. A serving node holds run/serve.lock (see node/admin.py)."""
    try:
        fd = os.open(directory / SERVE_LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    for path in (directory / ADMIN_FILE, directory / PID_FILE):
        try:
            text = path.read_text(encoding="utf-8")
            pid = int(json.loads(text)["pid"]) if path.suffix == ".json" else int(text)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if process_alive(pid):
            return pid
    return 0


def local_address(listen: str) -> str:
    """Where this server reaches its own node: loopback when it listens on every interface."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"{host}:{port}"


def advertised_address(listen: str, parent: str | None) -> tuple[str, str]:
    """The address a parent should pull from, and how it was found."""
    host, _, port = listen.rpartition(":")
    if host not in ("0.0.0.0", "[::]"):
        return listen, "its --listen address"
    if parent is not None:
        parent_host, _, parent_port = parent.rpartition(":")
        family = socket.AF_INET6 if parent_host.startswith("[") else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((parent_host.strip("[]"), int(parent_port)))  # sends nothing
                own = probe.getsockname()[0]
            own = f"[{own}]" if family == socket.AF_INET6 else own
            return f"{own}:{port}", f"the address this server uses to reach {parent}"
        except OSError:
            pass
    return f"THIS-SERVER:{port}", "replace THIS-SERVER with an address the parent reaches"


# ----- the Python environment ---------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    python: Path
    tongyuan: tuple[str, ...]  # the command that runs the installed CLI
    version: str


# Imports what the node and this script's health check need; prints Tongyuan's version.
PROBE = "import grpc, grpc_health.v1.health_pb2, node; print(node.__version__)"


def probe(python: Path) -> str | None:
    """Tongyuan's version as `python` imports it, or None if it cannot."""
    try:
        result = run([str(python), "-c", PROBE], timeout=120)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def fingerprint(source: Path) -> str:
    """A digest of what would be installed: the wheel, or the source tree as it is copied."""
    digest = hashlib.sha256()
    if source.is_file():
        paths = [source]
    else:
        paths = []
        for root, dirs, files in os.walk(source):
            ignored = SOURCE_IGNORE(root, dirs + files)
            dirs[:] = sorted(d for d in dirs if d not in ignored)
            paths += [Path(root, f) for f in sorted(files) if f not in ignored]
    for path in paths:
        digest.update(str(path.relative_to(source.parent)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def ensure_environment(plan: Plan, report: Report) -> Environment:
    step = "Python environment"
    if plan.python is not None:
        version = probe(plan.python)
        if version is None:
            raise StepFailed(
                step,
                f"--python {plan.python} cannot import Tongyuan and grpc_health",
                hint="install Tongyuan into that interpreter, or leave out --python so that "
                f"{plan.venv} is created",
            )
        sibling = plan.python.parent / "tongyuan"
        command = (str(sibling),) if sibling.is_file() else (str(plan.python), "-m", "node")
        report.skip(
            step,
            f"using {plan.python} as given with --python (tongyuan {version}); "
            "no venv created, nothing installed",
        )
        return Environment(plan.python, command, version)

    venv, python = plan.venv, plan.venv / "bin" / "python"
    marker = venv / INSTALLED_MARKER
    command = (str(venv / "bin" / "tongyuan"),)
    if marker.is_file():
        version = probe(python)
        if version is not None:
            installed = json.loads(marker.read_text(encoding="utf-8"))
            note = ""
            if installed.get("fingerprint") != fingerprint(plan.source):
                note = (
                    f"; {plan.source} differs from what was installed and is not installed "
                    f"(upgrades are not automated yet: stop the node, remove {venv}, re-run)"
                )
            report.skip(
                step,
                f"already installed: tongyuan {version} in {venv} "
                f"(from {installed.get('source')}){note}",
            )
            return Environment(python, command, version)
        report.note(f"{venv} is broken (it cannot import Tongyuan); rebuilding it")
    elif venv.exists():
        report.note(f"{venv} is incomplete (an earlier run stopped before finishing); rebuilding")

    started = time.monotonic()
    marker.unlink(missing_ok=True)  # first, so that an interrupted rebuild is noticed as such
    shutil.rmtree(venv, ignore_errors=True)
    report.note(f"creating {venv} and installing Tongyuan from {plan.source} (a minute or two)")
    created = run([sys.executable, "-m", "venv", str(venv)])
    if created.returncode != 0:
        raise StepFailed(
            step,
            f"python3 -m venv {venv} failed: {last_line(created)}",
            detail=tail(created.stdout + created.stderr),
            hint="install the venv module (on Debian/Ubuntu: apt install python3-venv), "
            f"then {RETRY}",
        )
    # Taken before copying, so that an edit made meanwhile shows up as a difference next time.
    source_digest = fingerprint(plan.source)
    with tempfile.TemporaryDirectory(prefix="tongyuan-source-") as scratch:
        target = plan.source
        if plan.source.is_dir():
            target = Path(scratch) / "tongyuan"
            shutil.copytree(plan.source, target, ignore=SOURCE_IGNORE, symlinks=True)
        installed = run([str(python), "-m", "pip", "install", "--quiet", str(target)])
    if installed.returncode != 0:
        raise StepFailed(
            step,
            f"pip install of Tongyuan from {plan.source} into {venv} failed: "
            f"{last_line(installed)}",
            detail=tail(installed.stdout + installed.stderr, 25),
            hint=f"check the package index or network pip uses, then {RETRY} "
            "(the environment is rebuilt)",
        )
    version = probe(python)
    if version is None:
        raise StepFailed(step, f"Tongyuan was installed into {venv} but cannot be imported")
    record = {"source": str(plan.source), "version": version, "fingerprint": source_digest}
    write_if_changed(marker, json.dumps(record, indent=2) + "\n")
    report.ok(
        step,
        f"created {venv} and installed tongyuan {version} from {plan.source} "
        f"({time.monotonic() - started:.0f} s)",
    )
    return Environment(python, command, version)


# ----- the node -----------------------------------------------------------------------------


def tongyuan(env: Environment, plan: Plan, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*env.tongyuan, "--dir", str(plan.directory), *args], timeout=300)


def ensure_initialised(plan: Plan, env: Environment, report: Report) -> str:
    """Returns the node's display name."""
    step = "node"
    if (plan.directory / CONFIG_FILE).exists():  # make_plan checked that it is this node
        node = read_node_config(plan.directory)
        report.skip(
            step,
            f"already initialised: {plan.tier} node {plan.code} ({node.get('name')}) "
            f"in {plan.directory}",
        )
        if plan.name and plan.name != node.get("name"):
            report.note(
                f"--name {plan.name} is not applied: the node is named {node.get('name')} in "
                f"{CONFIG_FILE} (edit it while the node is stopped)"
            )
        return str(node.get("name"))
    args = ["init", "--code", plan.code, "--listen", plan.listen]
    if plan.name:
        args += ["--name", plan.name]
    if plan.plaintext_dev:
        args += ["--plaintext-dev"]
    result = tongyuan(env, plan, *args)
    if result.returncode != 0:
        raise StepFailed(step, f"tongyuan init failed: {last_line(result)}")
    report.ok(step, result.stdout.strip().splitlines()[0])
    return str(read_node_config(plan.directory).get("name"))


def ensure_certificates(plan: Plan, env: Environment, report: Report) -> bool:
    """Node identity: a province creates the federation root; a county or city writes a
    certificate request for its parent and, given the parent's bundle, installs it.
    Returns True when a running node must restart to serve with its new certificate."""
    step = "certificates"
    security = plan.directory / "security"
    config_text = (plan.directory / CONFIG_FILE).read_text(encoding="utf-8")
    if "plaintext_dev = true" in config_text:
        report.skip(
            step,
            "plaintext development mode (--plaintext-dev): no certificates, federation is "
            "not authenticated",
        )
        return False
    installed = security / "node.crt"
    if plan.pki_bundle is not None:
        try:
            wanted = json.loads(plan.pki_bundle.read_text(encoding="utf-8"))["certificate"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StepFailed(
                step, f"--pki-bundle {plan.pki_bundle} is not a bundle: {exc}"
            ) from None
        if installed.exists() and installed.read_text(encoding="utf-8") == wanted:
            report.skip(step, f"the bundle's certificate is installed ({installed})")
            return False
        result = tongyuan(env, plan, "pki", "install", str(plan.pki_bundle))
        if result.returncode != 0:
            raise StepFailed(step, f"tongyuan pki install failed: {last_line(result)}")
        report.ok(step, f"installed {plan.pki_bundle}: federation is mutual TLS")
        return True
    if installed.exists():
        report.skip(step, f"node identity installed ({installed})")
        return False
    if plan.tier == "province":
        result = tongyuan(env, plan, "pki", "init-root")
        if result.returncode != 0:
            raise StepFailed(step, f"tongyuan pki init-root failed: {last_line(result)}")
        report.ok(step, f"created the federation root and this node's certificate in {security}")
        return True
    request = security / "node.csr"
    if request.exists():
        report.skip(
            step,
            f"waiting for the parent's bundle for {request}: run again with --pki-bundle FILE",
        )
        return False
    result = tongyuan(env, plan, "pki", "request", "-o", str(request))
    if result.returncode != 0:
        raise StepFailed(step, f"tongyuan pki request failed: {last_line(result)}")
    report.ok(
        step,
        f"wrote the certificate request {request}; the parent's operator runs `tongyuan pki "
        "issue node.csr -o BUNDLE`, then run this again with --pki-bundle BUNDLE (until then "
        "the node refuses every federation call)",
    )
    return False


def ensure_children(plan: Plan, env: Environment, report: Report) -> None:
    for code, address in plan.children:
        step = f"child {code}"
        held = {
            str(c.get("code")): str(c.get("address"))
            for c in read_node_config(plan.directory)["children"]
        }
        if held.get(code) == address:
            report.skip(step, f"already added ({address})")
            continue
        result = tongyuan(env, plan, "children", "add", code, address)
        if result.returncode != 0:
            raise StepFailed(
                step, f"tongyuan children add {code} {address} failed: {last_line(result)}"
            )
        if code in held:
            report.ok(step, f"moved from {held[code]} to {address}")
        else:
            report.ok(step, f"added at {address} (the first pull backfills everything)")


def systemd_quote(argument: str) -> str:
    """One ExecStart argument: % and $ are systemd specifiers/variables; quote spaces."""
    escaped = argument.replace("%", "%%").replace("$", "$$")
    if re.search(r'[\s"\'\\]', escaped):
        return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def unit_text(plan: Plan, env: Environment, name: str) -> str:
    command = [*env.tongyuan, "--dir", str(plan.directory), "serve"]
    lines = [
        f"# Tongyuan node {plan.code} ({name}, {plan.tier}). Written by {plan.program};",
        "# re-running it with the same flags leaves this file alone.",
        "[Unit]",
        f"Description=Tongyuan {plan.tier} node {plan.code} ({name})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        *([f"User={plan.user}"] if plan.user else []),
        f"WorkingDirectory={plan.directory}",
        f"ExecStart={' '.join(systemd_quote(a) for a in command)}",
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM (the default) lets the node finish its batch and close its store.",
        "TimeoutStopSec=60",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


# The start and stop scripts share how they tell that the node still runs.
_RUNNING = r"""running() {  # the node started with this pid file runs (a zombie does not count)
  local pid state
  pid=$(cat "$pid_file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ $state != Z* ]] && ps -ww -o args= -p "$pid" | grep -qF -- "--dir $dir serve"
}"""


def start_script_text(plan: Plan, env: Environment) -> str:
    command = " ".join(shlex.quote(a) for a in env.tongyuan)
    return f"""#!/usr/bin/env bash
# Start Tongyuan node {plan.code} ({plan.tier}) in the background, with its pid in
# DIR/{PID_FILE} and its output in DIR/{LOG_FILE}. Written by {plan.program}.
# Stop it with {plan.stop_script}.
set -euo pipefail
dir={shlex.quote(str(plan.directory))}
pid_file="$dir/{PID_FILE}"
log_file="$dir/{LOG_FILE}"
{_RUNNING}
if running; then
  echo "node {plan.code} is already running (pid $(cat "$pid_file"))"
  exit 0
fi
cd "$dir"
# setsid: the node leaves this session, so closing the installer's terminal does not stop it.
detach=(nohup)
if command -v setsid >/dev/null; then detach=(setsid); fi
"${{detach[@]}}" {command} --dir "$dir" serve </dev/null >>"$log_file" 2>&1 &
echo "$!" >"$pid_file.tmp"
mv "$pid_file.tmp" "$pid_file"
echo "node {plan.code} started (pid $!); log: $log_file"
"""


def stop_script_text(plan: Plan) -> str:
    return f"""#!/usr/bin/env bash
# Stop Tongyuan node {plan.code} ({plan.tier}) started by {plan.start_script}:
# SIGTERM, then wait up to 30 s while it closes its store. Written by {plan.program}.
set -euo pipefail
dir={shlex.quote(str(plan.directory))}
pid_file="$dir/{PID_FILE}"
{_RUNNING}
if ! running; then
  echo "node {plan.code} is not running"
  rm -f "$pid_file"
  exit 0
fi
pid=$(cat "$pid_file")
kill -TERM "$pid"
for _ in $(seq 300); do
  running || break
  sleep 0.1
done
if running; then
  echo "node {plan.code} (pid $pid) did not stop within 30 s; killing it" >&2
  kill -KILL "$pid"
fi
rm -f "$pid_file"
echo "node {plan.code} stopped"
"""


def systemd_unavailable() -> str | None:
    """Why systemd cannot run the unit here, or None if it can."""
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    try:
        init = Path("/proc/1/comm").read_text(encoding="utf-8").strip()
    except OSError:
        init = "unknown"
    if init != "systemd":
        return f"PID 1 is {init!r}, not systemd"
    return None


def systemctl(*args: str) -> None:
    result = run(["systemctl", *args], timeout=120)
    if result.returncode != 0:
        raise StepFailed(
            "systemd",
            f"systemctl {' '.join(args)} failed: {last_line(result)}",
            detail=tail(result.stdout + result.stderr),
        )


def chown_tree(directory: Path, user: str) -> None:
    for root, dirs, files in os.walk(directory):
        for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
            shutil.chown(entry, user=user)


def start_with_systemd(plan: Plan, changed: bool, report: Report) -> int | None:
    """Enable and start the unit; returns the main pid if systemd knows it."""
    step = "start"
    unit = (
        plan.unit_name if plan.unit_dir == DEFAULT_UNIT_DIR else str(plan.unit_dir / plan.unit_name)
    )
    active = run(["systemctl", "is-active", "--quiet", plan.unit_name]).returncode == 0
    if active and not changed:
        report.skip(step, f"already running ({plan.unit_name} is active)")
    else:
        if plan.user and os.geteuid() == 0:
            try:
                chown_tree(plan.directory, plan.user)
            except (LookupError, OSError) as exc:
                raise StepFailed(
                    step,
                    f"cannot give {plan.directory} to user {plan.user}: {exc}",
                    hint=f"create the user (useradd --system {plan.user}), then {RETRY}",
                ) from None
        systemctl("daemon-reload")
        systemctl("enable", "--now", unit)
        if active:
            systemctl("restart", plan.unit_name)
        report.ok(step, f"{plan.unit_name} enabled and started by systemd")
    shown = run(["systemctl", "show", "--property", "MainPID", "--value", plan.unit_name])
    pid = int(shown.stdout.strip() or 0) if shown.returncode == 0 else 0
    return pid or None


def ensure_service(plan: Plan, env: Environment, name: str, report: Report) -> int | None:
    """Write the unit or the start/stop scripts and start the node; returns its pid."""
    if plan.systemd:
        unit = plan.unit_dir / plan.unit_name
        try:
            changed = write_if_changed(unit, unit_text(plan, env, name))
        except OSError as exc:
            raise StepFailed(
                "systemd unit",
                f"cannot write {unit}: {exc.strerror or exc}",
                hint=f"run as root (sudo), or give --unit-dir; then {RETRY}",
            ) from None
        if changed:
            report.ok("systemd unit", f"wrote {unit}")
        else:
            report.skip("systemd unit", f"{unit} is already in place")
        reason = systemd_unavailable()
        if reason is None:
            return start_with_systemd(plan, changed, report)
        report.skip(
            "systemd",
            f"cannot enable {plan.unit_name} here: {reason}; falling back to the start script "
            "(the unit is ready for when this server runs systemd)",
        )

    written = [
        write_if_changed(plan.start_script, start_script_text(plan, env), 0o755),
        write_if_changed(plan.stop_script, stop_script_text(plan), 0o755),
    ]
    scripts = f"{plan.start_script} and {plan.stop_script.name}"
    if any(written):
        report.ok("start script", f"wrote {scripts}")
    else:
        report.skip("start script", f"{scripts} are already in place")

    pid = serving_pid(plan.directory)
    if pid is not None:
        report.skip("start", f"already running (pid {pid or 'not known yet'})")
        return pid or None
    result = run([str(plan.start_script)], timeout=60)
    if result.returncode != 0:
        raise StepFailed("start", f"{plan.start_script} failed: {last_line(result)}")
    try:
        pid = int((plan.directory / PID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pid = None
    report.ok("start", f"started node {plan.code} (pid {pid}); log {plan.directory / LOG_FILE}")
    return pid


# Runs in the node's own environment: the standard gRPC health check, until SERVING and the
# CLI endpoint (run/admin.json) is up; exit 3 if the node's process ends, 4 on timeout.
HEALTH_CHECK = """
import sys, time
from pathlib import Path
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, admin, timeout, pid = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
# With a certificate installed the port is mutual TLS: check as the node itself.
security, code = Path(sys.argv[5]), sys.argv[6]

def alive():
    if not pid:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"

def channel():
    if not (security / "node.crt").exists() or "plaintext_dev = true" in (
        admin.parent.parent / "tongyuan.toml"
    ).read_text(encoding="utf-8"):
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        (security / "root.crt").read_bytes(),
        (security / "node.key").read_bytes(),
        (security / "fullchain.pem").read_bytes(),
    )
    # Its own name (node-CODE.ISSUER.tongyuan), as its certificate says.
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((security / "node.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    name = ("grpc.ssl_target_name_override", san.get_values_for_type(x509.DNSName)[0])
    return grpc.secure_channel(address, credentials, options=[name])

deadline = time.monotonic() + timeout
with channel() as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            status = exc.code().name
        if status == "SERVING" and admin.exists():
            sys.exit(0)
        if not alive():
            print(status)
            sys.exit(3)
        if time.monotonic() > deadline:
            print(status)
            sys.exit(4)
        time.sleep(0.1)
"""


def check_health(plan: Plan, env: Environment, pid: int | None, report: Report) -> str:
    step = "health"
    address = local_address(plan.listen)
    result = run(
        [
            str(env.python),
            "-c",
            HEALTH_CHECK,
            address,
            str(plan.directory / ADMIN_FILE),
            str(HEALTH_TIMEOUT_SECONDS),
            str(pid or ""),
            str(plan.directory / "security"),
            plan.code,
        ],
        timeout=HEALTH_TIMEOUT_SECONDS + 30,
    )
    if result.returncode == 0:
        report.check(step, f"node {plan.code} answers SERVING on {address} (gRPC health check)")
        return address
    if plan.systemd and systemd_unavailable() is None:
        log, where = "", f"journalctl -u {plan.unit_name}"
    else:
        log_path = plan.directory / LOG_FILE
        where = str(log_path)
        try:
            log = tail(log_path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            log = ""
    last = result.stdout.strip() or last_line(result)
    if result.returncode == 3:
        said = [line.strip() for line in log.splitlines() if line.strip()]
        message = f"node {plan.code} exited during start-up" + (f": {said[-1]}" if said else "")
    elif result.returncode == 4:
        message = (
            f"node {plan.code} does not answer SERVING on {address} after "
            f"{HEALTH_TIMEOUT_SECONDS:.0f} s (health check: {last})"
        )
    else:
        message = f"the health check could not run: {last}"
    raise StepFailed(step, message, detail=log, hint=f"see {where}; fix the cause, then {RETRY}")


def ensure_record(plan: Plan, env: Environment, parent_command: str, report: Report) -> None:
    """DIR/setup.json: how this node was installed, and the parent it reports to."""
    record = {
        "code": plan.code,
        "tier": plan.tier,
        "listen": plan.listen,
        "prefix": str(plan.prefix),
        "tongyuan": list(env.tongyuan),
        "service": str(plan.unit_dir / plan.unit_name) if plan.systemd else None,
        "start_script": str(plan.start_script),
        "stop_script": str(plan.stop_script),
        "parent": plan.parent,
        "parent_command": parent_command if plan.tier != "province" else None,
    }
    path = plan.directory / SETUP_RECORD
    if write_if_changed(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n"):
        report.ok("setup record", f"wrote {path}")
    else:
        report.skip("setup record", f"{path} is up to date")


# ----- main ---------------------------------------------------------------------------------


def install(plan: Plan) -> None:
    report = Report()
    print(
        f"{plan.program}: {plan.tier} node {plan.code} in {plan.directory}, listening on "
        f"{plan.listen}; environment under {plan.prefix}",
        flush=True,
    )
    with prefix_lock(plan.prefix, plan.program):
        env = ensure_environment(plan, report)
        name = ensure_initialised(plan, env, report)
        ensure_children(plan, env, report)
        restart = ensure_certificates(plan, env, report)
        if restart and serving_pid(plan.directory) is not None and plan.stop_script.exists():
            # It serves with its old identity: the start step below starts it again.
            run([str(plan.stop_script)], timeout=60)
        advertised, how = advertised_address(plan.listen, plan.parent)
        parent_command = f"tongyuan children add {plan.code} {advertised}"
        ensure_record(plan, env, parent_command, report)
        pid = ensure_service(plan, env, name, report)
        address = check_health(plan, env, pid, report)
    if plan.tier != "province":
        on = f"the parent node ({plan.parent})" if plan.parent else "the parent node"
        found = "" if advertised == plan.listen else f"; {advertised} is {how}"
        print(
            f"\nA parent pulls from its children; this node registers nowhere. The operator of "
            f"{on} attaches it with\n    {parent_command}\n"
            f"(in the parent's node directory, or with --dir{found})"
        )
    cli = " ".join(shlex.quote(a) for a in env.tongyuan)
    if report.changed:
        print(
            f"\ndone: {plan.tier} node {plan.code} ({name}) is installed and serving on "
            f"{address}.\n  status: {cli} --dir {shlex.quote(str(plan.directory))} status"
        )
        if not plan.systemd or systemd_unavailable() is not None:
            print(f"  stop:   {plan.stop_script}\n  start:  {plan.start_script}")
    else:
        print(
            f"\nnothing to do: {plan.tier} node {plan.code} ({name}) was already installed, "
            f"initialised and running (SERVING on {address})"
        )


def fail(program: str, message: str, status: int) -> NoReturn:
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def main(argv: Sequence[str]) -> None:
    if len(argv) < 1 or argv[0] not in TIERS:
        fail("setup_node.py", f"the first argument must be one of {', '.join(TIERS)}", 2)
    tier, program = argv[0], f"setup-{argv[0]}"
    if sys.version_info < (3, 11):  # noqa: UP036 - runs under the server's own python3
        fail(
            program,
            f"Tongyuan needs Python 3.11 or newer; {sys.executable} is "
            f"{sys.version.split()[0]} (set TONGYUAN_SETUP_PYTHON to a newer python3)",
            1,
        )
    try:
        plan = make_plan(tier, argv[1:])
    except InputError as exc:
        fail(program, str(exc), 2)
    try:
        install(plan)
    except StepFailed as exc:
        print(f"[FAIL] {exc.step}: {exc}", file=sys.stderr, flush=True)
        if exc.detail:
            print("       " + exc.detail.replace("\n", "\n       "), file=sys.stderr)
        print(f"       to retry: {exc.hint}", file=sys.stderr, flush=True)
        sys.exit(1)
    except InputError as exc:  # a config file that cannot be read mid-way
        fail(program, str(exc), 1)
    except KeyboardInterrupt:
        fail(program, f"interrupted; {RETRY}", 130)
    except BrokenPipeError:  # output piped into `head`: the work is done or resumable
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
