"""scripts/setup-county, setup-city and setup-province as an installer runs them.

Real scripts, real node processes on free loopback ports, temp prefixes and node directories.
Most runs take the fast path (`--python` this interpreter: nothing is installed); the chain test
runs the default path once (a new venv and `pip install` of this checkout). Every node a test
starts is stopped afterwards, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow.csv as pa_csv
import pytest
from conftest import ROOT, free_port, run_cli
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.demo_data import fake_people
from node.security.pki import own_dns_name

FAST = ("--python", sys.executable)  # an interpreter that already has Tongyuan
CODES = {"county": "320102", "city": "320100", "province": "320000"}


def alive(pid: int) -> bool:
    """Runs and is not a zombie (nothing here may reap the detached nodes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def node_pids(directory: Path) -> set[int]:
    pids = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((directory / "tongyuan.pid").read_text()))
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids.add(int(json.loads((directory / "run" / "admin.json").read_text())["pid"]))
    return {pid for pid in pids if alive(pid)}


class Setups:
    """Runs the setup scripts and remembers every node directory, to stop its node later."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.directories: list[Path] = []

    def run(
        self, tier: str, *args: str, check: bool = True, stdin: int | None = subprocess.DEVNULL
    ) -> subprocess.CompletedProcess[str]:
        if "--dir" in args:
            self.directories.append(Path(args[args.index("--dir") + 1]))
        result = subprocess.run(
            [str(ROOT / "scripts" / f"setup-{tier}"), *args],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=280,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"setup-{tier} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def stop(self, directory: Path) -> None:
        """The generated stop script if there is one, then SIGKILL whatever still runs."""
        try:
            record = json.loads((directory / "setup.json").read_text())
            subprocess.run([record["stop_script"]], capture_output=True, timeout=40)
        except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
            pass
        for pid in node_pids(directory):
            os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for directory in reversed(self.directories):  # parents first
            self.stop(directory)


@pytest.fixture
def setups(tmp_path: Path) -> Iterator[Setups]:
    runs = Setups(tmp_path)
    try:
        yield runs
    finally:
        runs.cleanup()


def channel_to(address: str, directory: Path | None) -> grpc.Channel:
    """Plaintext, or, when the node holds a certificate, mutual TLS as the node itself."""
    security = directory / "security" if directory is not None else None
    if security is None or not (security / "node.crt").exists():
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        (security / "root.crt").read_bytes(),
        (security / "node.key").read_bytes(),
        (security / "fullchain.pem").read_bytes(),
    )
    # Its own name (`node-CODE.ISSUER.tongyuan`), as its certificate says.
    override = ("grpc.ssl_target_name_override", own_dns_name(security))
    return grpc.secure_channel(address, credentials, options=[override])


def serving(address: str, directory: Path | None = None) -> bool:
    with channel_to(address, directory) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def steps(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[")]


def snapshot(directory: Path, prefix: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file the setup or the node wrote, with its mtime and size (config and scripts:
    their bytes). Not the node's log, which grows with what the node itself does."""
    found = {}
    for path in [*directory.rglob("*"), *prefix.rglob("*")]:
        if path.is_file() and path.name != "tongyuan.log":
            content = path.read_bytes() if path.suffix in (".toml", ".json", "") else b""
            found[str(path)] = (path.stat().st_mtime_ns, path.stat().st_size, content)
    return found


@pytest.mark.parametrize("tier", ["county", "city", "province"])
def test_second_run_changes_nothing(setups: Setups, tmp_path: Path, tier: str) -> None:
    code, port = CODES[tier], free_port()
    directory, prefix = tmp_path / "node", tmp_path / "prefix"
    args = [*FAST, "--code", code, "--listen", f"127.0.0.1:{port}"]
    args += ["--dir", str(directory), "--prefix", str(prefix)]
    child = {"county": None, "city": "320102", "province": "320100"}[tier]
    if child is not None:  # a child that is not up yet: the parent retries, and serves meanwhile
        args += ["--children", f"{child}=127.0.0.1:{free_port()}"]

    first = setups.run(tier, *args)
    assert "[FAIL]" not in first.stdout + first.stderr
    assert f"[ok]   node: initialised {tier} node {code}" in first.stdout
    if child is not None:
        assert f"[ok]   child {child}: added at 127.0.0.1:" in first.stdout
    made = {
        "county": "[ok]   certificates: wrote the certificate request",
        "city": "[ok]   certificates: wrote the certificate request",
        "province": "[ok]   certificates: created the federation root",
    }[tier]
    assert made in first.stdout
    assert f"node {code} answers SERVING on 127.0.0.1:{port}" in first.stdout
    assert f"\ndone: {tier} node {code} " in first.stdout
    assert serving(f"127.0.0.1:{port}", directory)
    (pid,) = node_pids(directory)
    before = snapshot(directory, prefix)

    second = setups.run(tier, *args)
    lines = steps(second.stdout)
    assert all(line.startswith("[skip]") for line in lines if "health:" not in line), lines
    assert "[skip] node: already initialised" in second.stdout
    if child is not None:
        assert f"[skip] child {child}: already added" in second.stdout
    assert f"[skip] start: already running (pid {pid})" in second.stdout
    assert f"[ok]   health: node {code} answers SERVING" in second.stdout
    assert second.stdout.rstrip().splitlines()[-1].startswith(f"nothing to do: {tier} node")
    assert node_pids(directory) == {pid}
    assert snapshot(directory, prefix) == before  # config, store, scripts, setup.json untouched


def test_a_province_city_county_chain_syncs(setups: Setups, tmp_path: Path) -> None:
    """The default path (new venv, pip install of this checkout) once, for the county; the city
    and the province share its prefix, so they find Tongyuan already installed."""
    prefix = tmp_path / "opt-tongyuan"
    tongyuan = prefix / "venv" / "bin" / "tongyuan"
    county, city, province = (tmp_path / name for name in ("county", "city", "province"))
    at = {name: f"127.0.0.1:{free_port()}" for name in ("county", "city", "province")}
    common = ["--prefix", str(prefix), "--plaintext-dev"]

    started = time.monotonic()
    out = setups.run("county", "--code", "320102", "--listen", at["county"], "--dir",
                     str(county), "--parent", at["city"], *common).stdout  # fmt: skip
    print(f"real install and start of the county: {time.monotonic() - started:.0f} s")
    assert f"[ok]   Python environment: created {prefix / 'venv'}" in out
    assert f"    tongyuan children add 320102 {at['county']}\n" in out  # for the city's operator
    assert json.loads((county / "setup.json").read_text())["parent"] == at["city"]

    out = setups.run("city", "--code", "320100", "--listen", at["city"], "--dir", str(city),
                     "--children", f"320102={at['county']}", "--parent", at["province"],
                     *common).stdout  # fmt: skip
    assert "[skip] Python environment: already installed: tongyuan" in out
    assert f"[ok]   child 320102: added at {at['county']}" in out
    setups.run("province", "--code", "320000", "--listen", at["province"], "--dir",
               str(province), "--children", f"320100={at['city']}", *common)  # fmt: skip

    def cli(directory: Path, *args: str) -> str:
        result = subprocess.run(
            [str(tongyuan), "--dir", str(directory), *args],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, f"tongyuan {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    cli(county, "catalog", "add", "--code", "320102-GA-001", "--name", "户籍人口", "--summary",
        "s", "--department", "公安局", "--entity", "person", "--frequency", "daily",
        "--sharing", "unconditional", "--publish")  # fmt: skip
    people = tmp_path / "people.csv"
    pa_csv.write_csv(fake_people("320102", 20, seed=1), people)
    cli(county, "ingest", "320102-GA-001", str(people))

    deadline = time.monotonic() + 60
    count = "SELECT count(*) AS n FROM person"
    while (held := json.loads(cli(province, "query", count, "--json"))[0]["n"]) != 20:
        assert time.monotonic() < deadline, f"the province holds {held} of 20 people after 60 s"
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("tier", "args", "message"),
    [
        ("county", ["--code", "320100"], "--code 320100 is a city code (XXXX00), not a county; "
         "run scripts/setup-city for it"),
        ("city", ["--code", "320102"], "--code 320102 is a county code"),
        ("province", ["--code", "32000"], "--code '32000' is not a GB/T 2260 division code"),
        ("county", ["--code", "320102", "--listen", None], "missing --listen: the federation "
         "address HOST:PORT; there is no terminal to ask for it on"),
        ("county", ["--code", "320102", "--dir", None], "missing --dir"),
        ("county", ["--code", "320102", "--listen", "localhost"],
         "--listen: 'localhost' is not HOST:PORT"),
        ("county", ["--code", "320102", "--parent", "10.0.0.1"], "--parent: '10.0.0.1' is not"),
        ("county", ["--code", "320102", "--children", "320104=127.0.0.1:1"],
         "a county node has no children"),
        ("city", ["--code", "320100", "--children", "320102"], "'320102' is not CODE=HOST:PORT"),
        ("city", ["--code", "320100", "--children", "330102=127.0.0.1:1"],
         "330102 is not a division below city 320100"),
        ("province", ["--code", "320000", "--parent", "127.0.0.1:1"], "has no parent"),
        ("county", ["--code", "320102", "--python", "/nonexistent/python"],
         "--python /nonexistent/python is not an executable file"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_makes_nothing(
    setups: Setups, tmp_path: Path, tier: str, args: list[str | None], message: str
) -> None:
    directory, prefix = tmp_path / "node", tmp_path / "prefix"
    given = {"--listen": "127.0.0.1:7400", "--dir": str(directory), "--prefix": str(prefix)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        given[str(flag)] = value  # type: ignore[assignment]
    argv = [a for flag, value in given.items() if value is not None for a in (flag, value)]
    result = setups.run(tier, *argv, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"setup-{tier}: ")
    assert message in result.stderr
    assert not directory.exists() and not prefix.exists()


def test_a_directory_of_another_node_is_refused(setups: Setups, tmp_path: Path) -> None:
    directory, prefix = tmp_path / "node", tmp_path / "prefix"
    run_cli(directory, "init", "--code", "320104", "--listen", "127.0.0.1:7400")
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    result = setups.run("county", *FAST, "--code", "320102", "--listen", "127.0.0.1:7400",
                        "--dir", str(directory), "--prefix", str(prefix), check=False)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"setup-county: --dir {directory} already holds node 320104 (tongyuan.toml); refusing "
        "to touch another node: choose another --dir\n"
    )
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    assert not prefix.exists()


def test_a_failed_step_says_how_to_retry_and_the_rerun_resumes(
    setups: Setups, tmp_path: Path
) -> None:
    directory, prefix = tmp_path / "node", tmp_path / "prefix"
    # A code of the right shape that the division list does not know: `tongyuan init` refuses.
    bad = setups.run("county", *FAST, "--code", "329999", "--listen", "127.0.0.1:7400",
                     "--dir", str(directory), "--prefix", str(prefix), check=False)  # fmt: skip
    assert bad.returncode == 1
    assert "[FAIL] node: tongyuan init failed: " in bad.stderr and "329999" in bad.stderr
    assert "to retry: re-run the same command; it resumes where it stopped" in bad.stderr
    assert not (directory / "tongyuan.toml").exists() and not (directory / "store.duckdb").exists()

    # The listen port is taken: the node exits at start-up and the log says why.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = [*FAST, "--code", "320102", "--listen", address, "--dir", str(directory),
                "--prefix", str(prefix)]  # fmt: skip
        failed = setups.run("county", *args, check=False)
    assert failed.returncode == 1
    assert "[ok]   node: initialised county node 320102" in failed.stdout
    assert (
        f"[FAIL] health: node 320102 exited during start-up: error: cannot listen on {address}"
        in failed.stderr
    )
    assert f"to retry: see {directory / 'tongyuan.log'}; fix the cause, then re-run" in (
        failed.stderr
    )

    resumed = setups.run("county", *args)  # the port is free again
    assert "[skip] node: already initialised" in resumed.stdout
    assert "[skip] start script: " in resumed.stdout
    assert "[ok]   start: started node 320102" in resumed.stdout
    assert serving(address)

    # Stopped with the generated script, a re-run starts it again.
    stop = prefix / "bin" / "tongyuan-320102-stop"
    assert subprocess.run([stop], capture_output=True, text=True).stdout == (
        "node 320102 stopped\n"
    )
    assert not node_pids(directory)
    again = setups.run("county", *args)
    assert "[ok]   start: started node 320102" in again.stdout
    assert serving(address)


@pytest.mark.skipif(
    Path("/proc/1/comm").read_text().strip() == "systemd",
    reason="PID 1 is systemd here: the test would install a real service",
)
def test_systemd_unit_and_fallback_without_systemd(setups: Setups, tmp_path: Path) -> None:
    directory, prefix, units = tmp_path / "node dir", tmp_path / "prefix", tmp_path / "units"
    address = f"127.0.0.1:{free_port()}"
    out = setups.run("county", *FAST, "--code", "320102", "--listen", address, "--dir",
                     str(directory), "--prefix", str(prefix), "--systemd", "--unit-dir",
                     str(units), "--user", "tongyuan").stdout  # fmt: skip
    unit = (units / "tongyuan-320102.service").read_text()
    executable = Path(sys.executable).parent / "tongyuan"
    assert f'\nExecStart={executable} --dir "{directory}" serve\n' in unit
    for line in ("User=tongyuan", "Restart=on-failure", "Type=simple",
                 f"WorkingDirectory={directory}", "WantedBy=multi-user.target"):  # fmt: skip
        assert f"\n{line}\n" in unit
    assert f"[ok]   systemd unit: wrote {units / 'tongyuan-320102.service'}" in out
    assert "[skip] systemd: cannot enable tongyuan-320102.service here: PID 1 is" in out
    assert "falling back to the start script" in out
    assert "[ok]   start: started node 320102" in out
    assert f"answers SERVING on {address}" in out
    assert serving(address)


def test_missing_flags_are_asked_for_on_a_terminal(setups: Setups, tmp_path: Path) -> None:
    directory, prefix = tmp_path / "node", tmp_path / "prefix"
    address = f"127.0.0.1:{free_port()}"
    main, terminal = pty.openpty()
    try:
        # The first answer is a city code: refused, and asked again.
        os.write(main, f"320100\n320102\n{address}\n{directory}\n".encode())
        setups.directories.append(directory)
        result = setups.run("county", *FAST, "--prefix", str(prefix), stdin=terminal)
    finally:
        os.close(terminal)
        os.close(main)
    assert "--code (the county's GB/T 2260 division code): " in result.stdout
    assert "--listen (the federation address HOST:PORT) [0.0.0.0:7400]: " in result.stdout
    assert "--code 320100 is a city code" in result.stderr
    assert f"answers SERVING on {address}" in result.stdout
    assert serving(address)
