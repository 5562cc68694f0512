'use strict';
// Response helpers that reproduce CouchDB 3's wire format: errors are never
// chunked (Content-Length + one JSON line), streamed bodies are written one
// chunk per write.

const crypto = require('crypto');

const SERVER = 'CouchDB/3.5.0 (txchanges test server)';

class CouchError extends Error {
  constructor(status, error, reason, extra) {
    super(reason);
    this.status = status;
    this.error = error;
    this.reason = reason;
    this.extra = extra || {};
  }
}

function badRequest(reason) {
  return new CouchError(400, 'bad_request', reason);
}

function notFound(reason) {
  return new CouchError(404, 'not_found', reason);
}

const missingDb = () => notFound('Database does not exist.');

// CouchDB answers a parameter its Erlang parser chokes on (limit=abc) with an
// unknown_error 500 that carries a stack-hash reference.
function badarg() {
  const ref = crypto.randomBytes(4).readUInt32BE(0);
  const err = new CouchError(500, 'unknown_error', 'badarg', {ref});
  err.headers = {'X-Couch-Stack-Hash': String(ref)};
  return err;
}

function commonHeaders(req, res, next) {
  res.setHeader('Server', SERVER);
  res.setHeader('Cache-Control', 'must-revalidate');
  res.setHeader('X-Couch-Request-ID', crypto.randomBytes(5).toString('hex'));
  res.setHeader('X-CouchDB-Body-Time', '0');
  next();
}

function sendJSON(res, status, body, headers) {
  const buf = Buffer.from(JSON.stringify(body) + '\n', 'utf8');
  if (res.headersSent) {
    // Too late for a status line; ending is all that is left.
    res.end();
    return;
  }
  res.writeHead(status, Object.assign({
    'Content-Type': 'application/json',
    'Content-Length': buf.length
  }, headers || {}));
  res.end(buf);
}

function sendError(res, err) {
  if (err instanceof CouchError) {
    const body = Object.assign({error: err.error, reason: err.reason}, err.extra);
    sendJSON(res, err.status, body, err.headers);
    return;
  }
  const status = err && err.status >= 400 ? err.status : 500;
  sendJSON(res, status, {
    error: (err && err.name && err.name !== 'Error') ? err.name : 'unknown_error',
    reason: String((err && (err.reason || err.message)) || err)
  });
}

// Starts a streamed response. Node frames every later res.write() as one
// HTTP chunk, which is what the feeds rely on.
function startStream(res, status, headers) {
  res.writeHead(status, Object.assign({'Content-Type': 'application/json'}, headers || {}));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => resolve(Buffer.concat(parts)));
    req.on('error', reject);
  });
}

async function readJSONBody(req) {
  const raw = await readBody(req);
  if (raw.length === 0) {
    return {};
  }
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw badRequest('invalid UTF-8 JSON');
  }
}

// Query strings parsed as CouchDB sees them: plain strings, last one wins.
function rawQuery(req) {
  const i = req.url.indexOf('?');
  const out = {};
  if (i === -1) {
    return out;
  }
  for (const [k, v] of new URLSearchParams(req.url.slice(i + 1))) {
    out[k] = v;
  }
  return out;
}

module.exports = {
  SERVER, CouchError, badRequest, notFound, missingDb, badarg,
  commonHeaders, sendJSON, sendError, startStream, readBody, readJSONBody,
  rawQuery
};
