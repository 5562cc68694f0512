#!/usr/bin/env node
'use strict';
// A CouchDB-3-compatible HTTP server on PouchDB's in-memory engine, for
// tests. express-pouchdb serves documents, _bulk_docs, _all_docs, views and
// the like; the routes in lib/ replace or front what it gets wrong for a
// CouchDB 3 client (_changes, _db_updates, auth, database create/delete).
//
// Usage: node server.js [--port 0] [--host 127.0.0.1] [--admin name:password]
//                       [--jwt-secret TEXT] [--session-timeout SECONDS] [--log]
// Prints one line "listening http://HOST:PORT/" once it accepts requests.

const http = require('http');
const express = require('express');
const expressPouchDB = require('express-pouchdb');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-mapreduce'))
  .plugin(require('pouchdb-replication'));

const {CouchError, commonHeaders, sendError} = require('./lib/http');
const {Registry} = require('./lib/registry');
const {lockWrites} = require('./lib/rwlock');
const stats = require('./lib/stats');
const {makeAuth} = require('./lib/auth');
const mountDbRoutes = require('./lib/dbroutes');
const {mountDbList} = require('./lib/dblist');
const mountChanges = require('./lib/changes');
const mountDbUpdates = require('./lib/db_updates');

function parseArgs(argv) {
  const opts = {port: 5984, host: '127.0.0.1', admin: null, jwtSecret: null, sessionTimeout: null,
    log: Boolean(process.env.TXCHANGES_TESTSERVER_LOG)};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) {
        throw new Error(arg + ' needs a value');
      }
      return argv[++i];
    };
    if (arg === '--port') {
      opts.port = Number(value());
    } else if (arg === '--host') {
      opts.host = value();
    } else if (arg === '--admin') {
      const text = value();
      const j = text.indexOf(':');
      if (j <= 0) {
        throw new Error('--admin wants name:password');
      }
      opts.admin = {name: text.slice(0, j), password: text.slice(j + 1)};
    } else if (arg === '--jwt-secret') {
      opts.jwtSecret = value();
    } else if (arg === '--session-timeout') {
      opts.sessionTimeout = Number(value());
      if (!Number.isInteger(opts.sessionTimeout) || opts.sessionTimeout < 1) {
        throw new Error('--session-timeout wants a whole number of seconds, 1 or more');
      }
    } else if (arg === '--log') {
      opts.log = true;
    } else {
      throw new Error('unknown argument: ' + arg);
    }
  }
  return opts;
}

// Async route handlers: any rejection becomes a CouchDB error response.
function wrap(fn) {
  return (req, res, next) => {
    Promise.resolve().then(() => fn(req, res, next)).catch((err) => {
      if (res.headersSent) {
        res.destroy();
      } else {
        sendError(res, err);
      }
    });
  };
}

function requestLogger(req, res, next) {
  const start = Date.now();
  res.on('close', () => {
    process.stderr.write(`${req.method} ${req.originalUrl} ${res.statusCode} ${Date.now() - start}ms\n`);
  });
  next();
}

// Makes requests look to express-pouchdb the way CouchDB 3 reads them.
// It answers "text/plain" unless JSON is asked for (CouchDB 1.x did), and it
// silently stores an empty document when a PUT body is not labelled JSON,
// where CouchDB parses the body anyway; CouchDB refuses such POSTs with 415.
function couchRequestShape(req, res, next) {
  const accept = req.headers.accept || '';
  if (!/json/.test(accept)) {
    req.headers.accept = accept ? 'application/json, ' + accept : 'application/json';
  }
  const type = (req.headers['content-type'] || '').toLowerCase();
  const labelled = type.startsWith('application/json') || type.startsWith('multipart/');
  if (!labelled && req.method === 'POST') {
    next(new CouchError(415, 'bad_content_type', 'Content-Type must be application/json'));
    return;
  }
  if (!labelled && req.method === 'PUT' && isDocumentPath(req.path)) {
    req.headers['content-type'] = 'application/json';
  }
  next();
}

// /db/doc, /db/_design/name or /db/_local/name; longer paths are attachments.
function isDocumentPath(path) {
  const parts = path.split('/').filter(Boolean);
  return parts.length === 2 ||
    (parts.length === 3 && (parts[1] === '_design' || parts[1] === '_local'));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const registry = new Registry(PouchDB);
  const auth = makeAuth(opts.admin, opts.jwtSecret, opts.sessionTimeout);

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.set('case sensitive routing', true);
  app.use(commonHeaders);
  if (opts.log) {
    app.use(requestLogger);
  }
  app.use(auth.middleware);
  auth.mount(app, wrap);
  mountDbUpdates(app, registry, wrap);
  mountDbList(app, registry, wrap);
  mountDbRoutes(app, registry, wrap);
  mountChanges(app, registry, wrap);

  // Stock compression holds continuous feeds back; CouchDB does not gzip.
  const pouchApp = expressPouchDB({
    mode: 'minimumForPouchDB',
    overrideMode: {include: ['routes/find'], exclude: ['compression']}
  });
  pouchApp.disable('x-powered-by');
  await pouchApp.setPouchDB(PouchDB);
  app.use(lockWrites(
    (name) => registry.lockFor(name),
    (name) => stats.abandonedWrites.set(name, (stats.abandonedWrites.get(name) || 0) + 1)
  ));
  app.use(couchRequestShape, pouchApp);
  app.use((err, req, res, next) => sendError(res, err));

  // Present from the start, as on a CouchDB set up for _db_updates; it can
  // be deleted to get CouchDB's 404 for a node without it.
  await registry.create('_global_changes');

  const server = http.createServer(app);
  server.keepAliveTimeout = 65000;
  server.headersTimeout = 66000;
  server.requestTimeout = 0;
  server.on('connection', (socket) => socket.setNoDelay(true));
  server.listen(opts.port, opts.host, () => {
    const {port} = server.address();
    const host = opts.host.includes(':') ? '[' + opts.host + ']' : opts.host;
    process.stdout.write(`listening http://${host}:${port}/\n`);
  });
  server.on('error', (err) => {
    process.stderr.write(String(err && err.stack || err) + '\n');
    process.exit(1);
  });
}

// A test server outlives any single bad request: log and keep serving.
process.on('unhandledRejection', (err) => {
  process.stderr.write('unhandled rejection: ' + String(err && err.stack || err) + '\n');
});
process.on('uncaughtException', (err) => {
  process.stderr.write('uncaught exception: ' + String(err && err.stack || err) + '\n');
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
