"""psycopg 3 and asyncpg through a transaction-mode pgtide: prepared statements and pipelines.

Usage: python3 pooled_clients.py PORT PASSWORD. Prints "ok" lines; exits non-zero on failure.
"""
import asyncio
import sys

import asyncpg
import psycopg

PORT, PASSWORD = int(sys.argv[1]), sys.argv[2]
DSN = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{PORT}/postgres"


def with_psycopg():
    # prepare_threshold=0: psycopg prepares every statement server-side (named statements).
    with psycopg.connect(DSN, prepare_threshold=0, autocommit=True) as conn:
        for i in range(50):
            row = conn.execute("SELECT %s::int * 2", (i,)).fetchone()
            assert row[0] == i * 2, row
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int + 1", (i,)) for i in range(100)]
        assert [c.fetchone()[0] for c in cursors] == [i + 1 for i in range(100)]
        with conn.transaction():
            conn.execute("CREATE TABLE IF NOT EXISTS psy (n int)")
            conn.execute("INSERT INTO psy VALUES (%s)", (1,))
        try:
            conn.execute("SELECT 1/0")
            raise AssertionError("division by zero passed")
        except psycopg.errors.DivisionByZero:
            pass
        assert conn.execute("SELECT 42").fetchone()[0] == 42
    print("ok psycopg")


async def with_asyncpg():
    conns = [await asyncpg.connect(DSN) for _ in range(6)]
    stmts = [await c.prepare("SELECT $1::int * 3") for c in conns]
    for round in range(20):
        results = await asyncio.gather(*(s.fetchval(round) for s in stmts))
        assert results == [round * 3] * len(stmts), results
    many = await asyncio.gather(*(c.fetch("SELECT g FROM generate_series(1, $1::int) g", 100) for c in conns))
    assert all(len(rows) == 100 for rows in many)
    async with conns[0].transaction():
        await conns[0].execute("CREATE TABLE IF NOT EXISTS apg (n int)")
        await conns[0].executemany("INSERT INTO apg VALUES ($1)", [(i,) for i in range(10)])
    assert await conns[1].fetchval("SELECT count(*) FROM apg") == 10
    for c in conns:
        await c.close()
    print("ok asyncpg")


with_psycopg()
asyncio.run(with_asyncpg())
