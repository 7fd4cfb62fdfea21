// The comparison peer of issue 21: the plain Clerk webhook handler a team would
// write in an afternoon, so clerksync's cost per delivery has a yardstick.
//
// Owns: one HTTP endpoint (POST /webhooks/clerk) that verifies the Svix
// signature with the official `svix` package and applies the event to SQLite
// (better-sqlite3) with ONE upsert guarded by a last-writer-wins version check,
// in users / organizations / memberships tables.
//
// Must never: grow features clerksync has and a plain handler would not (no
// inbox, no audit, no search, no cache, no cascades, no replay): it is the
// baseline, not a competitor. It must stay *correct* under the benchmark's
// reordered and duplicated deliveries, though, or the comparison would flatter
// it: hence the version check below (the same rule as clerksync's, DESIGN.md
// "Convergence": a newer updated_at wins; at equal versions a delete wins, then
// the greater svix-id), with deletes kept as tombstones so a late update cannot
// resurrect a deleted entity.
//
// Environment: PORT (default 8090), PEER_DB (default ./peer.db),
// CLERKSYNC_WEBHOOK_SECRET (whsec_...), PEER_SYNCHRONOUS (SQLite `synchronous`,
// default NORMAL, the usual WAL recipe: a 2xx survives a crash of the process
// but the last commits may not survive a power cut, since commits are fsynced at
// checkpoints only. FULL fsyncs every commit before the 2xx, as clerksync does for
// its group commits; one webhook at a time, that caps the peer at 1/fsync-time
// acks/s, ~340/s on the 3 ms fsyncs of the benchmark machine).
'use strict';

const express = require('express');
const { Webhook } = require('svix');
const Database = require('better-sqlite3');

const port = Number(process.env.PORT || 8090);
const secret = process.env.CLERKSYNC_WEBHOOK_SECRET;
if (!secret) {
  console.error('set CLERKSYNC_WEBHOOK_SECRET (whsec_...)');
  process.exit(2);
}
const synchronous = (process.env.PEER_SYNCHRONOUS || 'NORMAL').toUpperCase();
if (!['OFF', 'NORMAL', 'FULL', 'EXTRA'].includes(synchronous)) {
  console.error(`PEER_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA, got ${synchronous}`);
  process.exit(2);
}

const db = new Database(process.env.PEER_DB || 'peer.db');
db.pragma('journal_mode = WAL');
db.pragma(`synchronous = ${synchronous}`);
db.pragma('busy_timeout = 5000');

// One table per entity; `data` is the payload's `data` object as Clerk sent it,
// NULL for a tombstone. Memberships keep their two foreign ids as columns, as
// any app that lists an organization's members would.
const TABLES = {
  user: { table: 'users', extra: [] },
  organization: { table: 'organizations', extra: [] },
  organizationMembership: { table: 'memberships', extra: ['org_id', 'user_id'] },
};
for (const { table, extra } of Object.values(TABLES)) {
  db.exec(`CREATE TABLE IF NOT EXISTS ${table} (
    id TEXT PRIMARY KEY,
    ${extra.map((c) => `${c} TEXT,`).join(' ')}
    version INTEGER NOT NULL,
    svix_id TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    data TEXT
  )`);
}

// The last-writer-wins rule in the upsert's WHERE: an older or equal-and-losing
// event leaves the row as it is, so any order and any duplication of the same
// deliveries ends in the same rows.
function upsert(table, extra) {
  const cols = ['id', ...extra, 'version', 'svix_id', 'deleted', 'data'];
  const sets = cols.filter((c) => c !== 'id').map((c) => `${c} = excluded.${c}`);
  return db.prepare(`INSERT INTO ${table} (${cols.join(', ')})
    VALUES (${cols.map((c) => '@' + c).join(', ')})
    ON CONFLICT(id) DO UPDATE SET ${sets.join(', ')}
    WHERE excluded.version > ${table}.version
       OR (excluded.version = ${table}.version
           AND (excluded.deleted > ${table}.deleted
                OR (excluded.deleted = ${table}.deleted AND excluded.svix_id > ${table}.svix_id)))`);
}
const statements = {};
for (const [family, { table, extra }] of Object.entries(TABLES)) {
  statements[family] = upsert(table, extra);
}

const wh = new Webhook(secret);
let applied = 0;
let ignored = 0;

const app = express();
app.disable('x-powered-by');
app.get('/readyz', (_req, res) => res.json({ ok: true }));
app.get('/stats', (_req, res) => res.json({ applied, ignored }));
// The signature covers the exact bytes: keep the body raw until verified.
app.post('/webhooks/clerk', express.raw({ type: '*/*', limit: '1mb' }), (req, res) => {
  let event;
  try {
    event = wh.verify(req.body, {
      'svix-id': req.get('svix-id'),
      'svix-timestamp': req.get('svix-timestamp'),
      'svix-signature': req.get('svix-signature'),
    });
  } catch (_e) {
    return res.status(401).json({ error: 'invalid signature' });
  }
  const type = typeof event.type === 'string' ? event.type : '';
  const dot = type.lastIndexOf('.');
  const family = type.slice(0, dot);
  const action = type.slice(dot + 1);
  const stmt = statements[family];
  const data = event.data;
  if (!stmt || !data || typeof data.id !== 'string') {
    // Event types it does not keep are acknowledged, as Clerk expects.
    ignored += 1;
    return res.status(204).end();
  }
  const deleted = action === 'deleted' ? 1 : 0;
  const row = {
    id: data.id,
    version: Number.isInteger(data.updated_at) ? data.updated_at : Number(event.timestamp) || 0,
    svix_id: req.get('svix-id'),
    deleted,
    data: deleted ? null : JSON.stringify(data),
  };
  if (family === 'organizationMembership') {
    row.org_id = (data.organization && data.organization.id) || null;
    row.user_id = (data.public_user_data && data.public_user_data.user_id) || null;
  }
  try {
    stmt.run(row);
  } catch (e) {
    console.error('apply failed', e.message);
    return res.status(500).json({ error: 'apply failed' });
  }
  applied += 1;
  return res.status(204).end();
});

const server = app.listen(port, '127.0.0.1', () => {
  console.error(`peer-node listening on 127.0.0.1:${port}`);
});
server.keepAliveTimeout = 65_000;
function stop() {
  server.close(() => {
    db.close();
    process.exit(0);
  });
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
