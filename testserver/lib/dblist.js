'use strict';
// The server's list of databases as CouchDB 3 pages it: GET /_all_dbs with
// start_key / end_key / inclusive_end / limit / skip / descending, and
// POST /_dbs_info, which answers GET /{db} for up to 100 names at once.
// Both read the registry, which knows synchronously which databases exist.

const {CouchError, badRequest, sendJSON, readJSONBody, rawQuery} = require('./http');

// CouchDB's [chttpd] max_db_number_for_dbs_info_req default.
const MAX_DBS_INFO_KEYS = 100;
// express-pouchdb left this one out of its _all_dbs; so does this list.
const HIDDEN = new Set(['pouch__auth_sessions__']);

// The body of GET /{db} for a database the registry knows.
async function dbInfo(entry) {
  const info = await entry.db.info();
  return {
    instance_start_time: '0',
    db_name: entry.name,
    purge_seq: entry.seq(0),
    update_seq: entry.seq(info.update_seq),
    sizes: {file: 0, external: 0, active: 0},
    props: {},
    doc_count: info.doc_count,
    doc_del_count: entry.deletedIds.size,
    disk_format_version: 8,
    compact_running: false,
    cluster: {q: 1, n: 1, w: 1, r: 1}
  };
}

// Names compare as CouchDB compares binaries: byte by byte in UTF-8.
function compareNames(a, b) {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

// CouchDB's JSON collation of a key against a name (a string): null,
// booleans and numbers sort before every string, arrays and objects after.
function compareToKey(name, key) {
  if (typeof key === 'string') {
    return compareNames(name, key);
  }
  return (key === null || typeof key === 'boolean' || typeof key === 'number') ? 1 : -1;
}

function jsonParam(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw badRequest('invalid UTF-8 JSON');
  }
}

function countParam(text) {
  if (!/^\d+$/.test(text)) {
    throw new CouchError(400, 'query_parse_error',
      'Invalid value for positive integer: ' + JSON.stringify(text));
  }
  return Number(text);
}

function booleanParam(text) {
  if (text !== 'true' && text !== 'false') {
    throw new CouchError(400, 'query_parse_error',
      'Invalid boolean parameter: ' + JSON.stringify(text));
  }
  return text === 'true';
}

function parseAllDbsParams(q) {
  const p = {startKey: undefined, endKey: undefined, inclusiveEnd: true,
    limit: Infinity, skip: 0, descending: false};
  for (const [key, value] of Object.entries(q)) {
    switch (key) {
      case 'start_key':
      case 'startkey':
        p.startKey = jsonParam(value);
        break;
      case 'end_key':
      case 'endkey':
        p.endKey = jsonParam(value);
        break;
      case 'inclusive_end':
        p.inclusiveEnd = booleanParam(value);
        break;
      case 'limit':
        p.limit = countParam(value);
        break;
      case 'skip':
        p.skip = countParam(value);
        break;
      case 'descending':
        p.descending = booleanParam(value);
        break;
      default:
        break;
    }
  }
  return p;
}

// The names from start_key to end_key in the order asked, then skip and limit.
function pageOfNames(names, p) {
  const dir = p.descending ? -1 : 1;
  const sorted = names.filter((n) => !HIDDEN.has(n)).sort((a, b) => dir * compareNames(a, b));
  const page = sorted.filter((name) => {
    if (p.startKey !== undefined && dir * compareToKey(name, p.startKey) < 0) {
      return false;
    }
    if (p.endKey !== undefined) {
      const past = dir * compareToKey(name, p.endKey);
      return p.inclusiveEnd ? past <= 0 : past < 0;
    }
    return true;
  });
  return page.slice(p.skip, p.skip + p.limit);
}

function dbsInfoKeys(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw badRequest('Request body must be a JSON object');
  }
  if (!('keys' in body)) {
    throw badRequest('`keys` member must exist.');
  }
  if (!Array.isArray(body.keys)) {
    throw badRequest('`keys` member must be an array.');
  }
  if (body.keys.length > MAX_DBS_INFO_KEYS) {
    throw badRequest('`keys` member must be less than or equal to ' + MAX_DBS_INFO_KEYS);
  }
  return body.keys;
}

// CouchDB answers not_found for any key it cannot open, a non-string one too.
async function dbsInfoRow(registry, key) {
  const entry = typeof key === 'string' ? registry.get(key) : undefined;
  if (entry) {
    try {
      return {key, info: await dbInfo(entry)};
    } catch (e) {
      // Deleted while being read.
    }
  }
  return {key, error: 'not_found'};
}

function mountDbList(app, registry, wrap) {
  app.get('/_all_dbs', wrap(async (req, res) => {
    const p = parseAllDbsParams(rawQuery(req));
    sendJSON(res, 200, pageOfNames(Array.from(registry.entries.keys()), p));
  }));

  app.post('/_dbs_info', wrap(async (req, res) => {
    const type = (req.headers['content-type'] || '').toLowerCase();
    if (!type.startsWith('application/json')) {
      throw new CouchError(415, 'bad_content_type', 'Content-Type must be application/json');
    }
    const keys = dbsInfoKeys(await readJSONBody(req));
    const rows = [];
    for (const key of keys) {
      rows.push(await dbsInfoRow(registry, key));
    }
    sendJSON(res, 200, rows);
  }));
}

module.exports = {mountDbList, dbInfo, MAX_DBS_INFO_KEYS};
