"""storage-postgres: equality and IN filters are answered by the GIN index on data, not a scan."""

from __future__ import annotations

import json

import asyncpg
from upf.storage.v1 import storage_pb2 as pb

from plugins.storage.backend import TABLE
from plugins.storage.documents import Limits
from plugins.storage.postgres import PostgresBackend, PostgresDialect
from plugins.storage.query import compile_page, parse_query


async def test_equality_and_in_filters_use_the_gin_index(postgres_database: str) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:5432/{postgres_database}"
    backend = PostgresBackend(dsn)
    await backend.start()  # creates the table and its indexes
    await backend.close()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.executemany(
            f"INSERT INTO {TABLE} VALUES ('index-test', 'people', $1, $2::jsonb, 1)",
            [(f"p{i:05}", json.dumps({"team": {"name": f"t{i % 500}"}, "n": i})) for i in range(20_000)],
        )
        await connection.execute(f"ANALYZE {TABLE}")
        for op, value in ((pb.Filter.OP_EQ, '"t7"'), (pb.Filter.OP_IN, '["t7", "t8"]')):
            request = pb.QueryRequest(collection="people", filters=[pb.Filter(field="team.name", op=op, value=value)])
            plan = parse_query(request, Limits(), streaming=False)
            statement = compile_page(PostgresDialect(), TABLE, "index-test", plan, 11)
            explained = "\n".join(
                row[0] for row in await connection.fetch("EXPLAIN " + statement.text, *statement.params)
            )
            assert f"Bitmap Index Scan on {TABLE}_data" in explained, explained
    finally:
        await connection.execute(f"DELETE FROM {TABLE} WHERE ns = 'index-test'")
        await connection.close()
