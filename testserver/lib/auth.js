'use strict';
// CouchDB 3's default access rules, for one configured server admin:
// databases are admin-only, server endpoints other than a few public ones
// need the admin, and bad credentials are refused on every request.
// Basic auth and cookie sessions (POST /_session) are both accepted, and,
// with a JWT secret, CouchDB 3's JWT authentication: "Authorization: Bearer"
// with an HS256 token whose "sub" names the user and "_couchdb.roles" lists
// its roles; "exp", when present, must lie in the future.
// Without an admin configured the server is in "admin party" mode.
//
// Sessions work as couch_httpd_auth's do: the AuthSession cookie is
// base64url("name:HEXTIME:" + HMAC-SHA1(secret + salt, "name:HEXTIME")), the
// time in whole seconds; it is good while now < time + timeout ([chttpd_auth]
// timeout, 600 s unless --session-timeout says otherwise). A request made
// with a good cookie after 10% of its lifetime gets a new one in Set-Cookie
// (whatever the response); an expired or forged cookie makes the request
// anonymous (a 401 on an admin-only database), and one that does not decode
// is a 400.

const crypto = require('crypto');
const {CouchError, sendJSON, sendError, readBody} = require('./http');
const stats = require('./stats');

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

const DEFAULT_SESSION_TIMEOUT = 600;
const MALFORMED_COOKIE = 'Malformed AuthSession cookie. Please clear your cookies.';

// The cookies of couch_httpd_auth, signed with this process's secret.
function makeSessions(admin, timeout) {
  const secret = crypto.randomBytes(16).toString('hex');
  const salt = crypto.randomBytes(16).toString('hex');
  const now = () => Math.floor(Date.now() / 1000);
  const sign = (data) => crypto.createHmac('sha1', secret + salt).update(data).digest();

  function issue() {
    const time = now();
    const data = admin.name + ':' + time.toString(16).toUpperCase();
    const value = Buffer.concat([Buffer.from(data + ':', 'utf8'), sign(data)]).toString('base64url');
    stats.sessions.lastIssued = time;
    const expires = new Date((time + timeout) * 1000).toUTCString();
    return 'AuthSession=' + value + '; Version=1; Expires=' + expires + '; Max-Age=' + timeout +
      '; Path=/; HttpOnly';
  }

  // {renew} for a good cookie, 'expired', null for one that names nobody
  // or is not signed by us; a CouchError for one that does not decode.
  function check(value) {
    const raw = Buffer.from(value, 'base64url');
    const first = raw.indexOf(':');
    const second = first === -1 ? -1 : raw.indexOf(':', first + 1);
    if (second === -1) {
      return new CouchError(400, 'bad_request', MALFORMED_COOKIE);
    }
    const name = raw.subarray(0, first).toString('utf8');
    const hex = raw.subarray(first + 1, second).toString('latin1');
    const hash = raw.subarray(second + 1);
    if (name !== admin.name || !/^[0-9A-Fa-f]+$/.test(hex)) {
      return null;
    }
    const expected = sign(name + ':' + hex);
    if (hash.length !== expected.length || !crypto.timingSafeEqual(hash, expected)) {
      return null;
    }
    const left = parseInt(hex, 16) + timeout - now();
    if (left <= 0) {
      return 'expired';
    }
    return {renew: left < timeout * 0.9};
  }

  return {issue, check, timeout};
}

function makeAuth(admin, jwtSecret, sessionTimeout) {
  const sessions = admin ? makeSessions(admin, sessionTimeout || DEFAULT_SESSION_TIMEOUT) : null;
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
    if (token) {
      const session = sessions.check(token);
      if (session instanceof CouchError) {
        return sendError(res, session);
      }
      if (session === 'expired') {
        stats.sessions.expired += 1;
      } else if (session) {
        req.userCtx = adminCtx();
        req.authMethod = 'cookie';
        if (session.renew) {
          // A login or logout sets its own cookie, which replaces this one.
          res.setHeader('Set-Cookie', sessions.issue());
          stats.sessions.renewals += 1;
        }
        return next();
      }
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
        stats.sessions.refusedLogins += 1;
        throw unauthorized(BAD_CREDENTIALS);
      }
      stats.sessions.logins += 1;
      sendJSON(res, 200, {ok: true, name: admin.name, roles: ['_admin']}, {
        'Set-Cookie': sessions.issue()
      });
    }));
    // A cookie is not a server-side session: logging out only clears it in
    // the client, and the cookie itself stays good until it expires.
    app.delete('/_session', (req, res) => {
      sendJSON(res, 200, {ok: true}, {
        'Set-Cookie': 'AuthSession=; Version=1; Path=/; HttpOnly'
      });
    });
  }

  return {middleware, mount};
}

module.exports = {makeAuth, parseBasic, DEFAULT_SESSION_TIMEOUT};
