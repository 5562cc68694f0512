'use strict';
// GET/POST /{db}/_changes, replacing express-pouchdb's implementation.

const {CouchError, badRequest, missingDb, rawQuery, readBody} = require('./http');
const {parseChangesParams} = require('./params');
const {buildFilter} = require('./filters');
const {Feed} = require('./feed');

async function readPostBody(req) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') {
    throw new CouchError(415, 'bad_content_type', 'Content-Type must be application/json');
  }
  const raw = await readBody(req);
  if (raw.length === 0) {
    return {raw, body: {}};
  }
  let body;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw badRequest('invalid UTF-8 JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    throw badRequest('Request body must be a JSON object');
  }
  return {raw, body};
}

async function handleChanges(registry, req, res) {
  const entry = registry.get(req.params.db);
  if (!entry) {
    throw missingDb();
  }
  const p = parseChangesParams(rawQuery(req));
  let body = {};
  let raw = null;
  if (req.method === 'POST') {
    ({body, raw} = await readPostBody(req));
  }
  const filter = await buildFilter(entry, p, req, body, raw);
  if (p.feed === 'eventsource' && req.headers['last-event-id']) {
    p.since = req.headers['last-event-id'];
  }
  const updateSeq = await entry.updateSeq();
  let since;
  if (p.since === 'now') {
    since = updateSeq;
  } else {
    since = entry.sinceToInt(p.since);
    if (since === null) {
      throw badRequest("Malformed sequence supplied in 'since' parameter.");
    }
  }
  await new Feed(entry, p, filter, since, res).run(updateSeq);
}

module.exports = function mountChanges(app, registry, wrap) {
  const handler = wrap((req, res) => handleChanges(registry, req, res));
  app.get('/:db/_changes', handler);
  app.post('/:db/_changes', handler);
  app.all('/:db/_changes', wrap(async () => {
    throw new CouchError(405, 'method_not_allowed', 'Only GET,HEAD,POST allowed');
  }));
};
