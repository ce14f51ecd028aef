"""Real node processes on free loopback ports, real DuckDB files in temp dirs.

`cluster` starts and stops nodes; every process a test starts is killed afterwards,
even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomlkit
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.client import open_node
from node.security.pki import own_dns_name

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    directory: Path | None, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `tongyuan [--dir D] ARGS` as a user would."""
    command = [sys.executable, "-m", "node"]
    if directory is not None:
        command += ["--dir", str(directory)]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        command + list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"tongyuan {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


class Node:
    """One node directory and, while started, its serving process."""

    def __init__(self, directory: Path, code: str) -> None:
        self.directory = directory
        self.code = code
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory.parent / f"{directory.name}.log"
        self._resources: dict[tuple[str, str], str] = {}

    def init(self, *extra: str, plaintext: bool = True) -> Node:
        """`init`; plaintext (`--plaintext-dev`) unless a test builds identities with pki."""
        flags = ("--plaintext-dev",) if plaintext else ()
        run_cli(
            self.directory, "init", "--code", self.code, "--listen", self.address, *flags, *extra
        )
        return self

    def channel(self) -> grpc.Channel:
        """A channel to this node's federation port as the node itself (its own certificate
        when it has one installed; health answers any certificate of the federation)."""
        security = self.directory / "security"
        config = (self.directory / "tongyuan.toml").read_text(encoding="utf-8")
        if "plaintext_dev = true" in config or not (security / "node.crt").exists():
            return grpc.insecure_channel(self.address)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(security / "root.crt").read_bytes(),
            private_key=(security / "node.key").read_bytes(),
            certificate_chain=(security / "fullchain.pem").read_bytes(),
        )
        return grpc.secure_channel(
            self.address,
            credentials,
            # Its own name (`node-CODE.ISSUER.tongyuan`), as its certificate says.
            options=[("grpc.ssl_target_name_override", own_dns_name(security))],
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.directory, *args, check=check)

    def start(self, wait: bool = True) -> Node:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node",
                "--dir",
                str(self.directory),
                "serve",
                "--log-level",
                "DEBUG",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"node {self.code} exited:\n{self.log()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if (
                        reply.status == health_pb2.HealthCheckResponse.SERVING
                        and (self.directory / "run" / "admin.json").exists()
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"node {self.code} not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def configure(self, section: str, **values: object) -> None:
        """Edit the node's config file as an operator would (while it is stopped)."""
        path = self.directory / "tongyuan.toml"
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
        for key, value in values.items():
            doc[section][key] = value
        path.write_text(tomlkit.dumps(doc), encoding="utf-8")

    def fetch(self, sql: str) -> list[dict[str, Any]]:
        """Query through the node's own client in-process (the admin API when serving)."""
        api = open_node(self.directory, write=False)
        try:
            return list(api.query(sql).to_pylist())
        finally:
            api.close()

    def fetch_status(self) -> dict[str, Any]:
        api = open_node(self.directory, write=False)
        try:
            return api.status()
        finally:
            api.close()

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--json").stdout))

    def query(self, sql: str) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("query", sql, "--json").stdout))

    def resource(self, entity: str, department: str = "公安局") -> str:
        """A published catalogue resource carrying every attribute of `entity` for
        `department`, registered through the CLI on first use; returns its code."""
        key = (entity, department)
        if key not in self._resources:
            code = f"{self.code}-{entity}-{len(self._resources) + 1}"
            self.cli(
                "catalog", "add", "--code", code, "--name", f"{department} {entity}",
                "--summary", f"{entity} records of {department}", "--department", department,
                "--entity", entity, "--frequency", "daily", "--sharing", "unconditional",
                "--publish",
            )  # fmt: skip
            self._resources[key] = code
        return self._resources[key]

    def ingest(self, resource: str, path: Path, *extra: str) -> dict[str, Any]:
        """Import a file. `resource` may be an entity name: the file then goes into that
        entity's test resource for `--department D` (default 公安局)."""
        args = list(extra)
        if "-" not in resource:
            department = "公安局"
            if "--department" in args:
                at = args.index("--department")
                department = args[at + 1]
                del args[at : at + 2]
            resource = self.resource(resource, department)
        return dict(json.loads(self.cli("ingest", resource, str(path), "--json", *args).stdout))


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes: list[Node] = []

    def node(self, code: str, name: str | None = None, *, init: bool = True) -> Node:
        node = Node(self.base / (name or code), code)
        self.nodes.append(node)
        return node.init() if init else node

    def cleanup(self) -> None:
        for node in self.nodes:
            if node.running:
                node.kill9()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.cleanup()


def wait_until(
    check: Callable[[], bool], timeout: float = 30, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
