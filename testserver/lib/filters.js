'use strict';
// The _changes filters: _doc_ids, _selector, _design, _view and design-doc
// JS filters. Every problem becomes a CouchDB error response; nothing here
// may reject unhandled (stock express-pouchdb exits the process on a bad
// filter name or any _selector).

const selectorCore = require('pouchdb-selector-core');
const {CouchError, badRequest, notFound} = require('./http');

// Design functions are stored as source text; CouchDB evaluates them in a
// sandboxed JS engine. A test server runs them in-process.
function compile(source, what, globals) {
  const names = Object.keys(globals);
  try {
    const factory = new Function(...names, 'return (' + source + '\n);');
    const fn = factory(...names.map((n) => globals[n]));
    if (typeof fn !== 'function') {
      throw new TypeError('not a function');
    }
    return fn;
  } catch (e) {
    throw new CouchError(400, 'compilation_error',
      'Compilation of the ' + what + ' failed: ' + e.message);
  }
}

const HELPERS = {
  log: () => {},
  isArray: Array.isArray,
  toJSON: JSON.stringify,
  sum: (xs) => xs.reduce((a, b) => a + b, 0)
};

async function openDesignDoc(entry, name) {
  try {
    return await entry.db.get('_design/' + name);
  } catch (e) {
    throw notFound(e.status === 404 && e.reason === 'deleted' ? 'deleted' : 'missing');
  }
}

function splitName(value, message) {
  const i = value.indexOf('/');
  if (i <= 0 || i === value.length - 1) {
    throw badRequest(message);
  }
  return [value.slice(0, i), value.slice(i + 1)];
}

function docIdsFilter(p, body, isPost) {
  let ids = isPost ? body.doc_ids : undefined;
  if (ids === undefined && p.docIds !== null) {
    try {
      ids = JSON.parse(p.docIds);
    } catch (e) {
      ids = undefined;
    }
  }
  if (!Array.isArray(ids) || !ids.every((x) => typeof x === 'string')) {
    throw badRequest('`doc_ids` filter parameter is not a list of doc ids.');
  }
  const wanted = new Set(ids);
  return {fastPath: true, test: (doc) => wanted.has(doc._id)};
}

function selectorFilter(body) {
  const selector = body.selector;
  if (!selector || typeof selector !== 'object' || Array.isArray(selector)) {
    throw badRequest('Selector error: expected a JSON object');
  }
  let massaged;
  try {
    massaged = selectorCore.massageSelector(selector);
    // Unknown operators only surface while matching: probe once up front.
    matches({}, massaged);
  } catch (e) {
    throw badRequest('Selector error: ' + e.message);
  }
  const fields = Array.isArray(body.fields) ? body.fields : null;
  return {
    fastPath: false,
    test: (doc) => {
      try {
        return matches(doc, massaged);
      } catch (e) {
        return false;
      }
    },
    project: fields ? (doc) => project(doc, fields) : null
  };
}

function matches(doc, massaged) {
  const rows = selectorCore.filterInMemoryFields(
    [{doc}], {selector: massaged}, Object.keys(massaged));
  return rows.length === 1;
}

// CouchDB's `fields` keeps only the named (possibly dotted) fields; unlike
// _find it does not add _id and _rev back.
function project(doc, fields) {
  const out = {};
  for (const field of fields) {
    const path = selectorCore.parseField(field);
    const value = selectorCore.getFieldFromDoc(doc, path);
    if (value !== undefined) {
      selectorCore.setFieldInDoc(out, path, value);
    }
  }
  return out;
}

async function viewFilter(entry, p) {
  if (p.view === null) {
    throw badRequest('`view` filter parameter is not provided.');
  }
  const [ddocName, viewName] = splitName(p.view,
    '`view` must be of the form `designname/viewname`');
  const ddoc = await openDesignDoc(entry, ddocName);
  const view = ddoc.views && ddoc.views[viewName];
  if (!view || typeof view.map !== 'string') {
    throw notFound('missing json key: ' + viewName);
  }
  let emitted = false;
  const map = compile(view.map, 'map function',
    Object.assign({emit: () => { emitted = true; }}, HELPERS));
  return {
    fastPath: false,
    test: (doc) => {
      emitted = false;
      try {
        map(structuredClone(doc));
      } catch (e) {
        return false;
      }
      return emitted;
    }
  };
}

async function designFunctionFilter(entry, p, req, rawBody) {
  const [ddocName, fnName] = splitName(p.filter,
    '`filter` must be of the form `designname/filtername`');
  const ddoc = await openDesignDoc(entry, ddocName);
  const source = ddoc.filters && ddoc.filters[fnName];
  if (typeof source !== 'string') {
    throw notFound('missing json key: ' + fnName);
  }
  const fn = compile(source, 'filter function in _design/' + ddocName, HELPERS);
  const request = filterRequest(entry, p, req, rawBody);
  return {
    fastPath: false,
    test: (doc) => {
      try {
        return Boolean(fn(structuredClone(doc), request));
      } catch (e) {
        return false;
      }
    }
  };
}

// The `req` object CouchDB hands a filter function; query values are the
// raw strings from the URL.
function filterRequest(entry, p, req, rawBody) {
  const path = req.path.split('/').filter(Boolean).map(decodeURIComponent);
  return {
    info: {db_name: entry.name},
    id: null,
    method: req.method,
    requested_path: path,
    path: path,
    raw_path: req.originalUrl,
    query: Object.assign({}, p.query),
    headers: Object.assign({}, req.headers),
    body: rawBody && rawBody.length ? rawBody.toString('utf8') : 'undefined',
    peer: req.socket.remoteAddress,
    form: {},
    cookie: {},
    userCtx: Object.assign({db: entry.name}, req.userCtx || {name: null, roles: []}),
    secObj: {}
  };
}

// Returns null (no filter) or {fastPath, test(doc), project?(doc)}.
// `fastPath` marks the filters CouchDB serves without visiting every change,
// which is why their `pending` counts the rows they skipped.
async function buildFilter(entry, p, req, body, rawBody) {
  const name = p.filter;
  if (name === null || name === '') {
    return null;
  }
  const isPost = req.method === 'POST';
  switch (name) {
    case '_doc_ids':
      return docIdsFilter(p, body, isPost);
    case '_selector':
      return selectorFilter(body);
    case '_design':
      return {fastPath: true, test: (doc) => doc._id.startsWith('_design/')};
    case '_view':
      return viewFilter(entry, p);
    default:
      return designFunctionFilter(entry, p, req, rawBody);
  }
}

module.exports = {buildFilter};
