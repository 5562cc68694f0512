'use strict';
// Server- and database-level routes that express-pouchdb gets wrong for a
// CouchDB 3 client: the welcome, PUT/DELETE/GET /{db} (CouchDB's names rule,
// bodies and opaque update_seq), _security, and a "Database does not exist."
// 404 in front of every per-database route.

const crypto = require('crypto');
const {CouchError, badRequest, missingDb, sendJSON, readJSONBody} = require('./http');
const stats = require('./stats');
const {dbInfo} = require('./dblist');

const SYSTEM_DBS = new Set(['_users', '_replicator', '_global_changes']);
const NAME_RULE = /^[a-z][a-z0-9_$()+/-]*$/;
const UUID = crypto.randomBytes(16).toString('hex');

function checkName(name) {
  if (!SYSTEM_DBS.has(name) && !NAME_RULE.test(name)) {
    throw new CouchError(400, 'illegal_database_name', "Name: '" + name +
      "'. Only lowercase characters (a-z), digits (0-9), and any of the characters" +
      ' _, $, (, ), +, -, and / are allowed. Must begin with a letter.');
  }
}

function location(req, name) {
  return 'http://' + req.headers.host + '/' + encodeURIComponent(name);
}

module.exports = function mountDbRoutes(app, registry, wrap) {
  const security = new WeakMap();

  app.get('/', (req, res) => {
    sendJSON(res, 200, {
      couchdb: 'Welcome',
      version: '3.5.0',
      git_sha: 'txchanges',
      uuid: UUID,
      features: ['access-ready', 'partitioned', 'pluggable-storage-engines', 'reshard', 'scheduler'],
      vendor: {name: 'txchanges test server (PouchDB)'}
    });
  });

  // Not CouchDB: what the test server itself can tell a test.
  app.get('/_testserver', (req, res) => {
    sendJSON(res, 200, {
      open_feeds: {changes: stats.changes, db_updates: stats.dbUpdates},
      peak_open_feeds: {changes: stats.peakChanges},
      started_feeds: {changes: stats.changesStarted},
      heartbeats: {changes: Object.fromEntries(stats.heartbeats)},
      rows_scanned: Object.fromEntries(stats.rowsScanned),
      write_locks: registry.lockStates(stats.abandonedWrites),
      sessions: {
        logins: stats.sessions.logins,
        refused_logins: stats.sessions.refusedLogins,
        renewals: stats.sessions.renewals,
        expired: stats.sessions.expired,
        last_issued: stats.sessions.lastIssued
      },
      databases: registry.entries.size
    });
  });

  app.post('/_testserver/reset_peak', (req, res) => {
    stats.peakChanges = stats.changes;
    sendJSON(res, 200, {ok: true});
  });

  app.get('/_up', (req, res) => sendJSON(res, 200, {status: 'ok', seeds: {}}));

  app.get('/_uuids', (req, res) => {
    const count = Math.min(1000, Math.max(1, parseInt(req.query.count, 10) || 1));
    const uuids = Array.from({length: count}, () => crypto.randomBytes(16).toString('hex'));
    sendJSON(res, 200, {uuids}, {'Cache-Control': 'must-revalidate, no-cache', 'Pragma': 'no-cache'});
  });

  app.put('/:db', wrap(async (req, res) => {
    const name = req.params.db;
    checkName(name);
    if (!(await registry.create(name))) {
      throw new CouchError(412, 'file_exists',
        'The database could not be created, the file already exists.');
    }
    sendJSON(res, 201, {ok: true}, {Location: location(req, name)});
  }));

  app.delete('/:db', wrap(async (req, res) => {
    if (req.query.rev) {
      throw badRequest('You tried to DELETE a database with a ?=rev parameter. ' +
        'Did you mean to DELETE a document instead?');
    }
    if (!(await registry.destroy(req.params.db))) {
      throw missingDb();
    }
    sendJSON(res, 200, {ok: true});
  }));

  // Everything below is per database: answer for missing ones here.
  app.all(['/:db', '/:db/*'], (req, res, next) => {
    const name = req.params.db;
    if (registry.exists(name) || (name[0] === '_' && !SYSTEM_DBS.has(name))) {
      return next();
    }
    return next(missingDb());
  });

  app.get('/:db', wrap(async (req, res, next) => {
    const entry = registry.get(req.params.db);
    if (!entry) {
      // A server endpoint that express-pouchdb serves.
      next();
      return;
    }
    sendJSON(res, 200, await dbInfo(entry));
  }));

  // Stored and returned, not enforced: the admin rule in auth.js decides.
  app.get('/:db/_security', (req, res, next) => {
    const entry = registry.get(req.params.db);
    if (!entry) {
      next();
      return;
    }
    sendJSON(res, 200, security.get(entry) || {});
  });

  app.put('/:db/_security', wrap(async (req, res, next) => {
    const entry = registry.get(req.params.db);
    if (!entry) {
      next();
      return;
    }
    security.set(entry, await readJSONBody(req));
    sendJSON(res, 200, {ok: true});
  }));
};
