"""IStorage through each storage plugin against the same database driven directly from Python.

    python -m bench.storage [--seconds 3] [--concurrency 16] [--only sqlite,postgres,mysql]

For each backend, the plugin runs as its own process (`upf plugin storage-X`, registered with a
registry whose identity token the bench client sends on every call, as a plugin's calls do)
and this process calls it with the SDK's StorageClient; "direct" is the same database through the
same driver in this process, with the statements a plugin author would write by hand (and json.loads
of what comes back, as the client does). Both sides work on the same 1000 records of their own
table or namespace. Each operation runs `concurrency` tasks for `seconds` after a short warm-up:

    Get           one record by id                 Set        an unconditional write
    Query100      100 records matching an equality filter, sorted by id
    BatchGet100   100 records by id

and reports calls/s with p50/p99 latency, and plugin/direct as a ratio (issue 12's targets: >= 0.5
for single operations, >= 0.8 for batches). PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306)
get a database of this run's own, dropped at the end; SQLite a temporary file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncmy
import asyncpg

from bench.harness import free_port
from bench.registry import BenchRegistry, bench_registry
from common.rpc.channel import Channel
from plugins.sdk.identity import caller_token_hook
from plugins.sdk.storage import StorageClient

RECORDS = 1000
GROUPS = 10  # Query100 asks for one group: RECORDS / GROUPS = 100 records
WARM_UP = 0.5
OPERATIONS = ["Get", "Set", "Query100", "BatchGet100"]
UPF = str(Path(sys.executable).parent / "upf")


def document(n: int) -> dict[str, Any]:
    return {"n": n, "group": f"g{n % GROUPS}", "name": f"record {n}", "tags": ["a", "b"], "score": n * 1.5}


def ids() -> list[str]:
    return [f"r{n:05}" for n in range(RECORDS)]


@dataclass(frozen=True)
class Row:
    backend: str
    operation: str
    mode: str  # plugin | direct
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


Operation = Callable[[random.Random], Awaitable[Any]]


async def measure(operation: Operation, concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    counting = False
    stop = False

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop:
            start = time.perf_counter()
            await operation(rng)
            if counting:
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(WARM_UP)
    counting, began = True, time.perf_counter()
    await asyncio.sleep(seconds)
    counting, elapsed = False, time.perf_counter() - began
    stop = True
    await asyncio.gather(*tasks)
    return len(latencies), elapsed, latencies


def row(backend: str, operation: str, mode: str, measured: tuple[int, float, list[float]]) -> Row:
    calls, elapsed, latencies = measured
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Row(backend, operation, mode, calls, elapsed, cuts[49] * 1000, cuts[98] * 1000)


# --- the plugin side: a real `upf plugin` process, called with the SDK ---


def plugin_operations(client: StorageClient) -> dict[str, Operation]:
    keys = ids()

    async def get(rng: random.Random) -> Any:
        return await client.get("bench", rng.choice(keys))

    async def set_(rng: random.Random) -> Any:
        n = rng.randrange(RECORDS)
        return await client.set("bench", keys[n], document(n))

    async def query(rng: random.Random) -> Any:
        result = await client.query("bench", where=[("group", "==", f"g{rng.randrange(GROUPS)}")], limit=100)
        assert len(result.records) == 100
        return result

    async def batch_get(rng: random.Random) -> Any:
        found = await client.batch_get("bench", rng.sample(keys, 100))
        assert len(found) == 100
        return found

    return {"Get": get, "Set": set_, "Query100": query, "BatchGet100": batch_get}


async def run_plugin_side(backend: str, dsn: str, args: argparse.Namespace, registry: BenchRegistry) -> list[Row]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPF_")}
    env["UPF_REGISTRATION_CREDENTIAL"] = registry.credential(f"storage-{backend}")
    argv = [UPF, "plugin", f"storage-{backend}", "--dsn", dsn, "--port", str(port)]
    argv += ["--registry", registry.target, "--log-level", "error"]
    token = registry.client_token()
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        # As a plugin's dependency channel (plugins/sdk/resolve.py): every call carries the caller's identity token.
        async with Channel(f"127.0.0.1:{port}", metadata_hooks=[caller_token_hook(lambda: token)]) as channel:
            await asyncio.wait_for(channel.channel_ready(), 15)
            client = StorageClient(channel)
            await client.batch_set("bench", {k: document(n) for n, k in enumerate(ids())})
            operations = plugin_operations(client)
            rows = []
            for name in OPERATIONS:
                measured = await measure(operations[name], args.concurrency, args.seconds)
                rows.append(row(backend, name, "plugin", measured))
            return rows
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- the direct side: the same database through the same driver, statements written by hand ---

DIRECT_TABLE = "bench_direct"


class Direct(ABC):
    """Get/Set/Query100/BatchGet100 on a (id, data, version) table, as a plugin author would write them."""

    @abstractmethod
    async def setup(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    def operations(self) -> dict[str, Operation]:
        keys = ids()

        async def get(rng: random.Random) -> Any:
            return await self.get(rng.choice(keys))

        async def set_(rng: random.Random) -> Any:
            n = rng.randrange(RECORDS)
            return await self.set(keys[n], json.dumps(document(n)))

        async def query(rng: random.Random) -> Any:
            found = await self.query(f"g{rng.randrange(GROUPS)}")
            assert len(found) == 100
            return found

        async def batch_get(rng: random.Random) -> Any:
            found = await self.batch_get(rng.sample(keys, 100))
            assert len(found) == 100
            return found

        return {"Get": get, "Set": set_, "Query100": query, "BatchGet100": batch_get}

    @abstractmethod
    async def get(self, key: str) -> Any: ...

    @abstractmethod
    async def set(self, key: str, data: str) -> Any: ...

    @abstractmethod
    async def query(self, group: str) -> list[Any]: ...

    @abstractmethod
    async def batch_get(self, keys: list[str]) -> list[Any]: ...


class PostgresDirect(Direct):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: Any = None

    async def setup(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=10)
        await self.pool.execute(
            f"CREATE TABLE {DIRECT_TABLE} (id TEXT PRIMARY KEY, data JSONB NOT NULL, version BIGINT NOT NULL);"
            f"CREATE INDEX ON {DIRECT_TABLE} USING GIN (data jsonb_path_ops)"
        )
        await self.pool.executemany(
            f"INSERT INTO {DIRECT_TABLE} VALUES ($1, $2::jsonb, 1)",
            [(k, json.dumps(document(n))) for n, k in enumerate(ids())],
        )

    async def close(self) -> None:
        await self.pool.close()

    async def get(self, key: str) -> Any:
        row = await self.pool.fetchrow(f"SELECT data, version FROM {DIRECT_TABLE} WHERE id = $1", key)
        return json.loads(row["data"])

    async def set(self, key: str, data: str) -> Any:
        return await self.pool.fetchval(
            f"INSERT INTO {DIRECT_TABLE} AS t VALUES ($1, $2::jsonb, 1) ON CONFLICT (id) DO UPDATE "
            "SET data = excluded.data, version = t.version + 1 RETURNING version",
            key,
            data,
        )

    async def query(self, group: str) -> list[Any]:
        rows = await self.pool.fetch(
            f"SELECT id, data, version FROM {DIRECT_TABLE} WHERE data @> $1::jsonb ORDER BY id LIMIT 100",
            json.dumps({"group": group}),
        )
        return [json.loads(r["data"]) for r in rows]

    async def batch_get(self, keys: list[str]) -> list[Any]:
        rows = await self.pool.fetch(f"SELECT id, data, version FROM {DIRECT_TABLE} WHERE id = ANY($1)", keys)
        return [json.loads(r["data"]) for r in rows]


class MysqlDirect(Direct):
    def __init__(self, database: str) -> None:
        self.database = database
        self.pool: Any = None

    async def setup(self) -> None:
        self.pool = await asyncmy.create_pool(
            host="127.0.0.1", port=3306, user="root", password="", db=self.database, autocommit=True, maxsize=10
        )
        await self._execute(
            f"CREATE TABLE {DIRECT_TABLE} (id VARCHAR(255) PRIMARY KEY, data JSON NOT NULL, version BIGINT NOT NULL)"
        )
        async with self.pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO {DIRECT_TABLE} VALUES (%s, %s, %s)",
                [(k, json.dumps(document(n)), 1) for n, k in enumerate(ids())],
            )

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    async def _execute(self, sql: str, params: Any = None) -> list[Any]:
        async with self.pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute(sql, params)
            return list(await cursor.fetchall())

    async def get(self, key: str) -> Any:
        rows = await self._execute(f"SELECT data, version FROM {DIRECT_TABLE} WHERE id = %s", [key])
        return json.loads(rows[0][0])

    async def set(self, key: str, data: str) -> Any:
        return await self._execute(
            f"INSERT INTO {DIRECT_TABLE} VALUES (%s, %s, 1) ON DUPLICATE KEY UPDATE data = VALUES(data), "
            "version = version + 1",
            [key, data],
        )

    async def query(self, group: str) -> list[Any]:
        rows = await self._execute(
            f"SELECT id, data, version FROM {DIRECT_TABLE} WHERE JSON_VALUE(data, '$.group') = %s "
            "ORDER BY id LIMIT 100",
            [group],
        )
        return [json.loads(r[1]) for r in rows]

    async def batch_get(self, keys: list[str]) -> list[Any]:
        marks = ", ".join(["%s"] * len(keys))
        rows = await self._execute(f"SELECT id, data, version FROM {DIRECT_TABLE} WHERE id IN ({marks})", keys)
        return [json.loads(r[1]) for r in rows]


class SqliteDirect(Direct):
    def __init__(self, path: str) -> None:
        self.path = path
        self.connection: Any = None

    async def setup(self) -> None:
        self.connection = await aiosqlite.connect(self.path, isolation_level=None)
        await self.connection.execute("PRAGMA journal_mode=WAL")
        await self.connection.execute("PRAGMA synchronous=NORMAL")  # as the plugin does
        await self.connection.execute(
            f"CREATE TABLE {DIRECT_TABLE} (id TEXT PRIMARY KEY, data TEXT NOT NULL, version INTEGER NOT NULL)"
        )
        await self.connection.executemany(
            f"INSERT INTO {DIRECT_TABLE} VALUES (?, ?, 1)", [(k, json.dumps(document(n))) for n, k in enumerate(ids())]
        )

    async def close(self) -> None:
        await self.connection.close()

    async def _fetch(self, sql: str, params: Any) -> list[Any]:
        async with self.connection.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def get(self, key: str) -> Any:
        rows = await self._fetch(f"SELECT data, version FROM {DIRECT_TABLE} WHERE id = ?", [key])
        return json.loads(rows[0][0])

    async def set(self, key: str, data: str) -> Any:
        return await self._fetch(
            f"INSERT INTO {DIRECT_TABLE} VALUES (?, ?, 1) ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
            "version = version + 1 RETURNING version",
            [key, data],
        )

    async def query(self, group: str) -> list[Any]:
        rows = await self._fetch(
            f"SELECT id, data, version FROM {DIRECT_TABLE} WHERE json_extract(data, '$.group') = ? "
            "ORDER BY id LIMIT 100",
            [group],
        )
        return [json.loads(r[1]) for r in rows]

    async def batch_get(self, keys: list[str]) -> list[Any]:
        marks = ", ".join("?" * len(keys))
        rows = await self._fetch(f"SELECT id, data, version FROM {DIRECT_TABLE} WHERE id IN ({marks})", keys)
        return [json.loads(r[1]) for r in rows]


async def run_direct_side(backend: str, direct: Direct, args: argparse.Namespace) -> list[Row]:
    await direct.setup()
    try:
        operations = direct.operations()
        rows = []
        for name in OPERATIONS:
            rows.append(row(backend, name, "direct", await measure(operations[name], args.concurrency, args.seconds)))
        return rows
    finally:
        await direct.close()


# --- databases of this run's own ---


async def admin_postgres(statement: str) -> None:
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres", timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def admin_mysql(statement: str) -> None:
    connection = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(statement)
    finally:
        connection.close()


async def bench_backend(backend: str, args: argparse.Namespace, registry: BenchRegistry) -> list[Row]:
    name = f"upf_bench_storage_{uuid.uuid4().hex[:10]}"
    if backend == "postgres":
        await admin_postgres(f'CREATE DATABASE "{name}"')
        dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
        try:
            return [
                *await run_plugin_side(backend, dsn, args, registry),
                *await run_direct_side(backend, PostgresDirect(dsn), args),
            ]
        finally:
            await admin_postgres(f'DROP DATABASE "{name}" WITH (FORCE)')
    if backend == "mysql":
        await admin_mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            plugin = await run_plugin_side(backend, f"mysql://root@127.0.0.1:3306/{name}", args, registry)
            return [*plugin, *await run_direct_side(backend, MysqlDirect(name), args)]
        finally:
            await admin_mysql(f"DROP DATABASE `{name}`")
    folder = tempfile.mkdtemp(prefix="upf-bench-storage-")
    try:
        plugin = await run_plugin_side(backend, str(Path(folder) / "plugin.sqlite3"), args, registry)
        return [*plugin, *await run_direct_side(backend, SqliteDirect(str(Path(folder) / "direct.sqlite3")), args)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table(rows: list[Row]) -> str:
    index = {(r.backend, r.operation, r.mode): r for r in rows}
    lines = [
        "| backend | operation | plugin calls/s | p50 / p99 ms | direct calls/s | p50 / p99 ms | plugin / direct |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend in dict.fromkeys(r.backend for r in rows):
        for operation in OPERATIONS:
            plugin, direct = index[(backend, operation, "plugin")], index[(backend, operation, "direct")]
            lines.append(
                f"| {backend} | {operation} | {plugin.rate:,.0f} | {plugin.p50_ms:.2f} / {plugin.p99_ms:.2f} | "
                f"{direct.rate:,.0f} | {direct.p50_ms:.2f} / {direct.p99_ms:.2f} | {plugin.rate / direct.rate:.2f}x |"
            )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="upf-bench-registry-") as run_dir,
        bench_registry(Path(run_dir)) as registry,
    ):
        for backend in args.only.split(","):
            print(f"bench.storage: {backend} ...", file=sys.stderr, flush=True)
            rows += await bench_backend(backend, args, registry)
    print(table(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per operation and side")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--only", default="sqlite,postgres,mysql", help="backends, comma-separated")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
