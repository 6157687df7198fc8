"""Test helpers for the machine's PostgreSQL: a throwaway database, and a TCP proxy to cut."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg

SERVER = "postgresql://postgres@127.0.0.1:5432"


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new database with a random name, dropped afterwards; yields its name."""
    name = f"gateway_test_{os.urandom(6).hex()}"
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class TcpProxy:
    """127.0.0.1:<port> -> Postgres. stop() refuses new connections and cuts the open ones;
    pause() keeps every connection open but passes no byte (a hung server), resume() again."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def start(self) -> None:
        # The same port each time, so the gateway's DATABASE_URL stays valid across a cut.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(_pump(reader, upstream_writer, self._flowing),
                                 _pump(up_reader, writer, self._flowing))  # fmt: skip
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            for w in (writer, upstream_writer):
                if w is not None:
                    w.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    while data := await reader.read(65536):
        await flowing.wait()
        writer.write(data)
        await writer.drain()
    writer.transport.abort()
