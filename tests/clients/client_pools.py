"""asyncpg's and psycopg 3's own pools through a transaction-mode pgtide, statement caches on.

Usage: python3 client_pools.py PORT PASSWORD. Prints "ok" lines; exits non-zero on failure.
"""
import asyncio
import sys
import threading

import asyncpg
import psycopg
import psycopg_pool

PORT, PASSWORD = int(sys.argv[1]), sys.argv[2]
DSN = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{PORT}/postgres"


async def with_asyncpg_pool():
    # More pooled client connections than pgtide has compute connections; asyncpg resets each
    # connection it takes back (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL).
    async with asyncpg.create_pool(DSN, min_size=4, max_size=12) as pool:
        await pool.execute("DROP TABLE IF EXISTS apool; CREATE TABLE apool (n int)")

        async def work(i):
            async with pool.acquire() as con:
                await con.execute("SET application_name = $$worker$$")
                assert await con.fetchval("SELECT $1::int * 2", i) == i * 2
                async with con.transaction():
                    await con.execute("INSERT INTO apool VALUES ($1)", i)
                    assert await con.fetchval("SHOW application_name") == "worker"
                stmt = await con.prepare("SELECT count(*) FROM apool WHERE n <= $1")
                assert await stmt.fetchval(i) >= 1

        for _ in range(5):
            await asyncio.gather(*(work(i) for i in range(40)))
        assert await pool.fetchval("SELECT count(*) FROM apool") == 200
        # What the pool reset: a connection taken afresh has the default application_name.
        async with pool.acquire() as con:
            assert await con.fetchval("SHOW application_name") != "worker"
    print("ok asyncpg pool")


def with_psycopg_pool():
    with psycopg_pool.ConnectionPool(
        DSN, min_size=4, max_size=12, kwargs={"prepare_threshold": 0, "autocommit": True}
    ) as pool:
        pool.wait()
        with pool.connection() as conn:
            conn.execute("DROP TABLE IF EXISTS ppool")
            conn.execute("CREATE TABLE ppool (n int)")
        errors = []

        def work(i):
            try:
                with pool.connection() as conn:
                    conn.execute("SET search_path = public")
                    got = conn.execute("SELECT %s::int + 1", (i,)).fetchone()[0]
                    assert got == i + 1, ("select", i, got)
                    with conn.pipeline():
                        cur = [conn.execute("SELECT %s::int * 3", (j,)) for j in range(10)]
                    got = [c.fetchone()[0] for c in cur]
                    assert got == [j * 3 for j in range(10)], ("pipeline", got)
                    with conn.transaction():
                        conn.execute("INSERT INTO ppool VALUES (%s)", (i,))
                        got = conn.execute("SHOW search_path").fetchone()[0]
                        assert got == "public", ("search_path", got)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM ppool").fetchone()[0] == 40
    print("ok psycopg pool")


asyncio.run(with_asyncpg_pool())
with_psycopg_pool()
