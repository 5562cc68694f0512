'use strict';
// CouchDB 3's default access rules, for one configured server admin:
// databases are admin-only, server endpoints other than a few public ones
// need the admin, and bad credentials are refused on every request.
// Basic auth and cookie sessions (POST /_session) are both accepted, and,
// with a JWT secret, CouchDB 3's JWT authentication: "Authorization: Bearer"
// with an HS256 token whose "sub" names the user and "_couchdb.roles" lists
// its roles; "exp", when present, must lie in the future.
// Without an admin configured the server is in "admin party" mode.

const crypto = require('crypto');
const {CouchError, sendJSON, sendError, readBody} = require('./http');

const PUBLIC = new Set(['/', '/_session', '/_up', '/_uuids', '/favicon.ico']);

const unauthorized = (reason) => new CouchError(401, 'unauthorized', reason);
const BAD_CREDENTIALS = 'Name or password is incorrect.';

function parseBasic(header) {
  const m = /^Basic\s+(\S+)\s*$/i.exec(header || '');
  if (!m) {
    return null;
  }
  const text = Buffer.from(m[1], 'base64').toString('utf8');
  const i = text.indexOf(':');
  return i === -1 ? null : {name: text.slice(0, i), password: text.slice(i + 1)};
}

function parseCookies(header) {
  const out = {};
  for (const part of (header || '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) {
      out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
    }
  }
  return out;
}

function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

function base64url(text) {
  return Buffer.from(text, 'base64url');
}

// The user a bearer token names, or a CouchError saying why it is refused.
function checkJwt(token, secret) {
  const parts = token.split('.');
  if (parts.length !== 3) {
    return unauthorized('Invalid token');
  }
  let header;
  let claims;
  try {
    header = JSON.parse(base64url(parts[0]).toString('utf8'));
    claims = JSON.parse(base64url(parts[1]).toString('utf8'));
  } catch (e) {
    return unauthorized('Invalid token');
  }
  if (!header || header.alg !== 'HS256' || !claims || typeof claims !== 'object') {
    return unauthorized('Invalid token');
  }
  const expected = crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest();
  const given = base64url(parts[2]);
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    return unauthorized('Signature verification failed');
  }
  if (typeof claims.sub !== 'string' || !claims.sub) {
    return unauthorized('Token is missing the sub claim');
  }
  if (claims.exp !== undefined && !(typeof claims.exp === 'number' && claims.exp > Date.now() / 1000)) {
    return unauthorized('exp not in future');
  }
  const roles = Array.isArray(claims['_couchdb.roles']) ? claims['_couchdb.roles'] : [];
  return {name: claims.sub, roles};
}

function makeAuth(admin, jwtSecret) {
  const sessions = new Set();
  const adminCtx = () => ({name: admin ? admin.name : null, roles: ['_admin']});
  const isAdmin = (c) => admin && c && safeEqual(c.name, admin.name) &&
    safeEqual(c.password, admin.password);

  function middleware(req, res, next) {
    const basic = parseBasic(req.headers.authorization);
    req.authMethod = 'default';
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization || '');
    if (bearer && jwtSecret) {
      const user = checkJwt(bearer[1], jwtSecret);
      if (user instanceof CouchError) {
        return sendError(res, user);
      }
      req.authMethod = 'jwt';
      req.userCtx = user;
      if (!admin || user.roles.includes('_admin')) {
        return next();
      }
      return nonAdmin(req, res, next);
    }
    if (!admin) {
      req.userCtx = adminCtx();
      return next();
    }
    if (basic) {
      if (!isAdmin(basic)) {
        return sendError(res, unauthorized(BAD_CREDENTIALS));
      }
      req.userCtx = adminCtx();
      return next();
    }
    const token = parseCookies(req.headers.cookie).AuthSession;
    if (token && sessions.has(token)) {
      req.userCtx = adminCtx();
      req.authMethod = 'cookie';
      return next();
    }
    req.userCtx = {name: null, roles: []};
    return nonAdmin(req, res, next);
  }

  // CouchDB 3's rules for anyone but the admin: public endpoints are open,
  // server endpoints and creating or deleting a database are the admin's,
  // and databases are admin-only (401 anonymous, 403 for a named user).
  function nonAdmin(req, res, next) {
    const path = req.path;
    if (PUBLIC.has(path)) {
      return next();
    }
    const segments = path.split('/').filter(Boolean);
    const serverLevel = path.startsWith('/_') && !/^\/_(users|replicator|global_changes)(\/|$)/.test(path);
    const dbItself = segments.length === 1 && (req.method === 'PUT' || req.method === 'DELETE');
    if (serverLevel || dbItself) {
      return sendError(res, unauthorized('You are not a server admin.'));
    }
    if (req.userCtx.name !== null) {
      return sendError(res, new CouchError(403, 'forbidden', 'You are not allowed to access this db.'));
    }
    return sendError(res, unauthorized('You are not authorized to access this db.'));
  }

  async function credentialsFrom(req) {
    const raw = (await readBody(req)).toString('utf8');
    const type = (req.headers['content-type'] || '').split(';')[0].trim();
    if (type === 'application/x-www-form-urlencoded') {
      const form = new URLSearchParams(raw);
      return {name: form.get('name'), password: form.get('password')};
    }
    try {
      const body = JSON.parse(raw);
      return {name: body.name, password: body.password};
    } catch (e) {
      return {name: null, password: null};
    }
  }

  function mount(app, wrap) {
    app.get('/_session', (req, res) => {
      sendJSON(res, 200, {
        ok: true,
        userCtx: req.userCtx,
        info: {authentication_handlers: jwtSecret ? ['jwt', 'cookie', 'default'] : ['cookie', 'default'],
          authenticated: req.userCtx.name || !admin ? req.authMethod : undefined}
      });
    });
    app.post('/_session', wrap(async (req, res) => {
      const creds = await credentialsFrom(req);
      if (!admin || !isAdmin(creds)) {
        throw unauthorized(BAD_CREDENTIALS);
      }
      const token = crypto.randomBytes(24).toString('base64url');
      sessions.add(token);
      sendJSON(res, 200, {ok: true, name: admin.name, roles: ['_admin']}, {
        'Set-Cookie': 'AuthSession=' + token + '; Version=1; Path=/; HttpOnly'
      });
    }));
    app.delete('/_session', (req, res) => {
      const token = parseCookies(req.headers.cookie).AuthSession;
      sessions.delete(token);
      sendJSON(res, 200, {ok: true}, {
        'Set-Cookie': 'AuthSession=; Version=1; Path=/; HttpOnly; Max-Age=0'
      });
    });
  }

  return {middleware, mount};
}

module.exports = {makeAuth, parseBasic};
