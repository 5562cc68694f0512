'use strict';
// _changes query parameters, parsed and rejected the way CouchDB 3's
// chttpd_db:parse_changes_query does (including its 500 for unparsable
// integers, which comes from Erlang's list_to_integer).

const {CouchError, badRequest, badarg} = require('./http');

const FEEDS = {
  normal: 'normal',
  longpoll: 'longpoll',
  continuous: 'continuous',
  live: 'continuous',
  eventsource: 'eventsource'
};

// CouchDB's #changes_args{} default limit; seq_interval counts down from it.
const DEFAULT_LIMIT = 1000000000000000n;
const DEFAULT_TIMEOUT = 60000;
// A zero heartbeat would spin; CouchDB's own timer granularity is similar.
const MIN_HEARTBEAT = 10;

function integer(value) {
  if (!/^-?\d+$/.test(value)) {
    throw badarg();
  }
  return Number(value);
}

function parseChangesParams(q) {
  const p = {
    feed: 'normal',
    since: '0',
    limit: null,
    descending: false,
    includeDocs: false,
    conflicts: false,
    attachments: false,
    style: 'main_only',
    heartbeat: null,
    timeout: DEFAULT_TIMEOUT,
    filter: null,
    view: null,
    docIds: null,
    seqInterval: null,
    query: q
  };
  let feed = 'normal';
  for (const [key, value] of Object.entries(q)) {
    switch (key) {
      case 'feed':
        feed = value;
        break;
      case 'since':
        p.since = value;
        break;
      case 'limit':
        p.limit = Math.max(0, integer(value));
        break;
      case 'descending':
        p.descending = value === 'true';
        break;
      case 'include_docs':
        p.includeDocs = value === 'true';
        break;
      case 'conflicts':
        p.conflicts = value === 'true';
        break;
      case 'attachments':
        p.attachments = value === 'true';
        break;
      case 'style':
        if (value !== 'main_only' && value !== 'all_docs') {
          throw badarg();
        }
        p.style = value;
        break;
      case 'heartbeat':
        p.heartbeat = parseHeartbeat(value);
        break;
      case 'timeout':
        p.timeout = Math.max(0, integer(value));
        break;
      case 'filter':
        p.filter = value;
        break;
      case 'view':
        p.view = value;
        break;
      case 'doc_ids':
        p.docIds = value;
        break;
      case 'seq_interval':
        if (!/^\d+$/.test(value) || Number(value) <= 0) {
          throw badRequest('invalid_seq_interval');
        }
        p.seqInterval = BigInt(value);
        break;
      default:
        // Unknown parameters reach JS filters through req.query.
        break;
    }
  }
  if (!Object.prototype.hasOwnProperty.call(FEEDS, feed)) {
    throw badRequest('Supported `feed` types: normal, continuous, live, longpoll, eventsource');
  }
  p.feed = FEEDS[feed];
  return p;
}

function parseHeartbeat(value) {
  if (value === 'true') {
    return DEFAULT_TIMEOUT;
  }
  if (!/^\d+$/.test(value)) {
    throw new CouchError(400, 'bad_request',
      'The heartbeat value should be a positive integer (in milliseconds).');
  }
  return Math.max(MIN_HEARTBEAT, Number(value));
}

module.exports = {
  parseChangesParams, parseHeartbeat, integer,
  DEFAULT_LIMIT, DEFAULT_TIMEOUT
};
