"""`serve`: stopping on a signal, even while starting; `--workers N`: N processes on one port
(SO_REUSEPORT), kept at N, stopped together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.redis_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
LISTENING = '"gateway listening"'


class Served:
    def __init__(self, process: subprocess.Popen[str], log: Path, port: int) -> None:
        self.process, self.log, self.port = process, log, port

    def lines(self, text: str) -> int:
        return self.log.read_text().count(text)

    def wait_for(self, text: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.lines(text) < count:
            assert time.monotonic() < deadline, f"{text} seen {self.lines(text)} times, not {count}"
            assert self.process.poll() is None or self.lines(text) >= count, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def workers(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        # spawn's resource tracker is a child too; workers are the ones holding the port.
        return [int(pid) for pid in found.stdout.split() if _listens(int(pid), self.port)]

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            return response.status == 200


def _listens(pid: int, port: int) -> bool:
    listening = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"pid={pid}," in listening


@contextmanager
def serve(tmp_path: Path, workers: int, port: int | None = None, **env: str) -> Iterator[Served]:
    port = port or free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", str(workers)],
            # Without REDIS_URL, whatever the developer's shell has: the per-worker warning is tested.
            cwd=ROOT, env={**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, "INTENT_CLASSIFIER": "rules",
                           **env},
            stdout=subprocess.DEVNULL, stderr=log_file, text=True,
        )
    try:
        yield Served(process, log, port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_workers_share_one_port_and_stop_together_on_sigterm(tmp_path: Path) -> None:
    """Both answer on one port; SIGTERM to the supervisor ends both, exit code 0."""
    with serve(tmp_path, 2) as served:
        # Both workers must be listening before the SIGTERM, or the test measures start-up speed.
        served.wait_for(LISTENING, 2)
        assert served.healthy()
        assert len(served.workers()) == 2
        assert served.lines("without REDIS_URL: each keeps its own rate and cost limits") == 1
    assert served.process.returncode == 0
    assert served.lines(LISTENING) == 2
    assert served.lines('"stopping (SIGTERM)') == 2 and served.lines('"gateway stopped"') == 2


def test_sigterm_while_starting_stops_at_once_and_cleanly(tmp_path: Path) -> None:
    """A signal during start-up (here a database that accepts connections and never answers: its
    connect timeout) stops the process at once, exit code 0, what had started closed in order.
    The signal used to wait for start-up to end (minutes, training a missing artifact)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(100)  # never accepted: every connection hangs in the backlog
        database = f"postgresql://postgres@127.0.0.1:{hung.getsockname()[1]}/none"
        with serve(tmp_path, 1, DATABASE_URL=database) as served:
            served.wait_for("cannot read API keys from Postgres at start-up", 1)  # analytics' 2 s next
            sent = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            served.process.wait(timeout=30)
            took = time.monotonic() - sent
    assert served.process.returncode == 0 and took < 1.5
    assert served.lines("stopping during start-up (SIGTERM)") == 1 and served.lines(LISTENING) == 0
    assert served.lines('"level":"error"') == 0, served.log.read_text()  # no generator left unclosed


def test_sigterm_while_the_workers_still_import_is_a_clean_stop(tmp_path: Path) -> None:
    """Workers that the signal reached before they installed their handlers die of it: stopped
    as asked, not a failure (the supervisor used to exit 1)."""
    with serve(tmp_path, 2) as served:
        served.wait_for('"started workers"', 1)
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=30)
    assert served.process.returncode == 0 and served.lines(LISTENING) == 0


def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    """A worker killed (a crash, the OOM killer) is started again: the gateway stays at two
    processes, where before it carried on with one and never said so."""
    with serve(tmp_path, 2) as served:
        served.wait_for(LISTENING, 2)
        victim = served.workers()[0]
        os.kill(victim, signal.SIGKILL)
        served.wait_for(LISTENING, 3)
        assert served.lines("worker exited unexpectedly: started another") == 1
        workers = served.workers()
        assert len(workers) == 2 and victim not in workers
        assert served.healthy()
    assert served.process.returncode == 0


def test_workers_that_keep_dying_stop_the_gateway_with_an_error(tmp_path: Path) -> None:
    """Workers that die as soon as they start (here killed as they appear): after 5 exits per
    worker within a minute the supervisor gives up with exit code 1 instead of restarting them
    forever."""
    with serve(tmp_path, 2) as served:
        served.wait_for('"started workers"', 1)
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        while served.process.poll() is None and time.monotonic() < deadline:
            for pid in set(_spawned(served.process.pid)) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.02)
        served.process.wait(timeout=30)
    assert served.process.returncode == 1
    assert served.lines("workers keep exiting") == 1
    assert served.lines("worker exited unexpectedly") == 10  # the 11th exit of 2 workers stops it


def _spawned(parent: int) -> list[int]:
    """The supervisor's worker processes (not spawn's resource tracker, its other child)."""
    found = subprocess.run(["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_port_already_taken_is_refused_at_once(tmp_path: Path) -> None:
    """Another program on the port, or another gateway's workers sharing it (SO_REUSEPORT, which
    let a second `serve --workers` join the first and take half its connections): exit code 1
    at once, saying so, instead of starting workers that fail or that split the traffic."""
    for share, workers in ((False, 2), (True, 2), (False, 1)):  # one worker: it was a traceback
        with socket.socket() as taken:
            if share:
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with serve(tmp_path, workers, port=taken.getsockname()[1]) as served:
                served.process.wait(timeout=30)
        assert served.process.returncode == 1
        assert served.lines("is in use (Address already in use): another gateway or program holds it") == 1
        assert served.lines('"started workers"') == 0 and served.lines("Traceback") == 0


def test_an_address_not_on_this_machine_is_said_as_such_not_as_in_use(tmp_path: Path) -> None:
    with serve(tmp_path, 1, HOST="192.0.2.1") as served:  # TEST-NET-1: on no machine
        served.process.wait(timeout=30)
    assert served.process.returncode == 1
    assert served.lines("cannot listen on 192.0.2.1:") == 1 and served.lines("is in use") == 0


def test_a_worker_count_under_one_is_refused() -> None:
    """--workers 0 used to start one worker without a word; now it is a usage error."""
    refused = subprocess.run([sys.executable, "-m", "gateway", "serve", "--workers", "0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "--workers: must be 1 or more, not 0" in refused.stderr


def test_port_0_listens_on_a_free_port_and_says_which(tmp_path: Path) -> None:
    """The log line said "port": 0: nothing told where the gateway was."""
    log = tmp_path / "serve.log"
    with log.open("w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", "0"], cwd=ROOT,
                                   env={**os.environ, "INTENT_CLASSIFIER": "rules"},
                                   stdout=subprocess.DEVNULL, stderr=log_file, text=True)  # fmt: skip
    try:
        served = Served(process, log, 0)
        served.wait_for(LISTENING, 1)
        line = next(json.loads(line) for line in log.read_text().splitlines() if LISTENING in line)
        served.port = line["port"]
        assert served.port > 0 and served.healthy()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_workers_on_port_0_are_refused() -> None:
    """PORT=0 picks a free port per process: with --workers, N gateways on N ports, not one."""
    refused = subprocess.run([sys.executable, "-m", "gateway", "serve", "--port", "0", "--workers", "2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30,
                             env={**os.environ, "INTENT_CLASSIFIER": "rules"})  # fmt: skip
    assert refused.returncode == 1
    assert "--workers needs a fixed port" in refused.stderr
