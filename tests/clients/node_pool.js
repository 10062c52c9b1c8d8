// node-postgres's Pool through a transaction-mode pgtide: parameterized (unnamed) and named
// prepared queries, transactions and a session setting, from more pooled connections than
// pgtide has compute connections.
//
// Usage: node node_pool.js PORT PASSWORD. Prints "ok node-postgres pool"; exits non-zero on failure.
const assert = require('assert');
const { Pool } = require('pg');

const [port, password] = process.argv.slice(2);
const pool = new Pool({
  host: '127.0.0.1', port: Number(port), user: 'postgres', password,
  database: 'postgres', max: 12,
});

async function work(i) {
  const client = await pool.connect();
  try {
    await client.query("SET application_name = 'node-worker'");
    const r = await client.query('SELECT $1::int * 2 AS v', [i]);
    assert.strictEqual(r.rows[0].v, i * 2);
    const named = await client.query({ name: 'triple', text: 'SELECT $1::int * 3 AS v', values: [i] });
    assert.strictEqual(named.rows[0].v, i * 3);
    await client.query('BEGIN');
    await client.query('INSERT INTO npool VALUES ($1)', [i]);
    const app = await client.query('SHOW application_name');
    assert.strictEqual(app.rows[0].application_name, 'node-worker');
    await client.query('COMMIT');
  } finally {
    client.release();
  }
}

(async () => {
  await pool.query('DROP TABLE IF EXISTS npool');
  await pool.query('CREATE TABLE npool (n int)');
  for (let round = 0; round < 5; round++) {
    await Promise.all(Array.from({ length: 40 }, (_, i) => work(round * 40 + i)));
  }
  const count = await pool.query('SELECT count(*)::int AS n FROM npool');
  assert.strictEqual(count.rows[0].n, 200);
  await pool.end();
  console.log('ok node-postgres pool');
})().catch((e) => { console.error(e); process.exit(1); });
