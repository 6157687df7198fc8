"""redis-server processes the tests start on free ports: standalone, stoppable, and a cluster."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from gateway.appkeys import REDIS

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class RedisServer:
    """One redis-server on 127.0.0.1:port that a test can stop and start again on that port."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def _wait_until_answering(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "redis-server exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """Three cluster-enabled redis-servers joined into one cluster with no replicas."""

    def __init__(self, nodes: int = 3) -> None:
        self.servers = [
            RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000", port=free_cluster_port())
            for _ in range(nodes)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> RedisClusterServers:
        assert REDIS_CLI is not None
        try:
            for server in self.servers:
                server.start()
            addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
            self._wait_until_ok()
        except BaseException:
            self.cleanup()  # no redis-server outlives a failed start
            raise
        return self

    def _wait_until_ok(self, timeout: float = 20.0) -> None:
        assert REDIS_CLI is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [REDIS_CLI, "-p", str(server.port), "cluster", "info"],
                    capture_output=True, text=True, timeout=5,
                ).stdout
                for server in self.servers
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.05)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


async def assert_a_burst_waits_for_connections(client: Any) -> None:
    """60 concurrent misses from 60 users, on a gateway capped at a few Redis connections with
    limits failing closed: every one is admitted, and Redis is never taken for unreachable."""
    responses = await asyncio.gather(*(
        client.post("/api/v1/enhanced/process", json={"prompt": f"a red fox number {n}"},
                    headers={"X-User-Id": f"burst-{n}"})
        for n in range(60)
    ))  # fmt: skip
    assert [r.status for r in responses] == [200] * 60
    connection = client.app[REDIS]
    assert connection is not None
    assert (connection.failures, connection.available) == (0, True)
