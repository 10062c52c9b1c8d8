"""asyncpg, psycopg 3 and pg8000 through a pgtide cluster, doing what applications typically do:
connect, parameterised queries, prepared statements, a transaction (committed and rolled back),
COPY both ways, and LISTEN/NOTIFY across two connections.

Usage: python3 session_clients.py PORT PASSWORD MODE, MODE being "session" or "transaction".
In transaction mode LISTEN cannot work (a notification is delivered to the compute connection
that listened, which the client gives back after each transaction): pgtide refuses it with
SQLSTATE 0A000, and the script checks that refusal instead. Prints one "ok DRIVER" line per
driver; exits non-zero on the first failure.
"""
import asyncio
import io
import sys

import asyncpg
import pg8000.native
import psycopg

PORT, PASSWORD, MODE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
assert MODE in ("session", "transaction"), MODE
DSN = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{PORT}/postgres"
ROWS = [(i, f"row {i}") for i in range(1000)]
NOT_SUPPORTED = "0A000"


async def with_asyncpg():
    con = await asyncpg.connect(DSN)
    other = await asyncpg.connect(DSN)
    try:
        await con.execute("DROP TABLE IF EXISTS a_items; CREATE TABLE a_items (id int, name text)")
        assert await con.fetchval("SELECT $1::int + $2::int", 2, 3) == 5
        # asyncpg prepares every statement server-side; this one explicitly, used many times.
        insert = await con.prepare("INSERT INTO a_items VALUES ($1, $2)")
        async with con.transaction():
            for i in range(10):
                await insert.fetch(i, f"prepared {i}")
        try:
            async with con.transaction():
                await con.execute("INSERT INTO a_items VALUES (-1, 'rolled back')")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        assert await con.fetchval("SELECT count(*) FROM a_items WHERE id < 0") == 0
        await con.execute("TRUNCATE a_items")
        copied = await con.copy_records_to_table("a_items", records=ROWS)
        assert copied == "COPY 1000", copied
        out = io.BytesIO()
        await con.copy_from_query("SELECT * FROM a_items ORDER BY id", output=out)
        assert out.getvalue().decode().splitlines()[999] == "999\trow 999"
        if MODE == "session":
            heard = asyncio.get_running_loop().create_future()
            await con.add_listener("a_events", lambda *args: heard.set_result(args[3]))
            await other.execute("NOTIFY a_events, 'hello asyncpg'")
            assert await asyncio.wait_for(heard, 30) == "hello asyncpg"
        else:
            try:
                await con.add_listener("a_events", lambda *args: None)
                raise AssertionError("LISTEN passed in transaction mode")
            except asyncpg.PostgresError as e:
                assert e.sqlstate == NOT_SUPPORTED, (e.sqlstate, str(e))
    finally:
        await con.close()
        await other.close()
    print("ok asyncpg")


def with_psycopg():
    # prepare_threshold=1: the second run of a statement is prepared server-side (named).
    with psycopg.connect(DSN, prepare_threshold=1) as conn, psycopg.connect(
        DSN, autocommit=True
    ) as other:
        with conn.transaction():
            conn.execute("DROP TABLE IF EXISTS p_items")
            conn.execute("CREATE TABLE p_items (id int, name text)")
        for i in range(10):
            row = conn.execute("SELECT %s::int * 2, %s::text", (i, f"v{i}")).fetchone()
            assert row == (i * 2, f"v{i}"), row
        conn.commit()
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO p_items VALUES (%s, %s)", ROWS[:10])
        try:
            with conn.transaction():
                conn.execute("INSERT INTO p_items VALUES (-1, 'rolled back')")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        assert conn.execute("SELECT count(*) FROM p_items WHERE id < 0").fetchone()[0] == 0
        conn.execute("TRUNCATE p_items")
        with conn.cursor() as cur:
            with cur.copy("COPY p_items FROM STDIN") as copy:
                for row in ROWS:
                    copy.write_row(row)
            out = bytearray()
            with cur.copy("COPY (SELECT * FROM p_items ORDER BY id) TO STDOUT") as copy:
                for chunk in copy:
                    out += chunk
        conn.commit()
        assert bytes(out).decode().splitlines()[999] == "999\trow 999"
        conn.autocommit = True
        if MODE == "session":
            conn.execute("LISTEN p_events")
            other.execute("NOTIFY p_events, 'hello psycopg'")
            for notify in conn.notifies(timeout=30, stop_after=1):
                assert notify.payload == "hello psycopg", notify
                break
            else:
                raise AssertionError("no notification within 30 s")
        else:
            try:
                conn.execute("LISTEN p_events")
                raise AssertionError("LISTEN passed in transaction mode")
            except psycopg.errors.FeatureNotSupported as e:
                assert e.sqlstate == NOT_SUPPORTED, e
    print("ok psycopg")


def with_pg8000():
    def connect():
        return pg8000.native.Connection(
            "postgres", host="127.0.0.1", port=PORT, password=PASSWORD, database="postgres"
        )

    con, other = connect(), connect()
    try:
        con.run("DROP TABLE IF EXISTS g_items")
        con.run("CREATE TABLE g_items (id int, name text)")
        assert con.run("SELECT :a::int + :b::int", a=2, b=3) == [[5]]
        # pg8000's prepared statements are named, server-side.
        insert = con.prepare("INSERT INTO g_items VALUES (:id, :name)")
        con.run("BEGIN")
        for i in range(10):
            insert.run(id=i, name=f"prepared {i}")
        con.run("COMMIT")
        insert.close()
        con.run("BEGIN")
        con.run("INSERT INTO g_items VALUES (-1, 'rolled back')")
        con.run("ROLLBACK")
        assert con.run("SELECT count(*) FROM g_items WHERE id < 0") == [[0]]
        con.run("TRUNCATE g_items")
        data = "".join(f"{i}\t{name}\n" for i, name in ROWS)
        con.run("COPY g_items FROM STDIN", stream=io.StringIO(data))
        out = io.StringIO()
        con.run("COPY (SELECT * FROM g_items ORDER BY id) TO STDOUT", stream=out)
        assert out.getvalue() == data
        if MODE == "session":
            con.run("LISTEN g_events")
            other.run("NOTIFY g_events, 'hello pg8000'")
            # pg8000 reads notifications as they arrive with any reply: a query collects it.
            for _ in range(300):
                if con.notifications:
                    break
                con.run("SELECT pg_sleep(0.1)")
            assert con.notifications, "no notification within 30 s"
            assert con.notifications.popleft()[2] == "hello pg8000"
        else:
            try:
                con.run("LISTEN g_events")
                raise AssertionError("LISTEN passed in transaction mode")
            except pg8000.native.DatabaseError as e:
                assert e.args[0]["C"] == NOT_SUPPORTED, e
    finally:
        con.close()
        other.close()
    print("ok pg8000")


asyncio.run(with_asyncpg())
with_psycopg()
with_pg8000()
