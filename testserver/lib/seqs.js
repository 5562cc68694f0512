'use strict';
// Opaque CouchDB-3-style sequences: "<N>-<base64url blob>".
//
// The blob carries the integer position together with the identity of the
// database incarnation that produced it, so a `since` taken before a database
// was deleted and re-created is recognised as foreign and rewinds to 0, as a
// clustered CouchDB does when a shard's uuid no longer matches.

const crypto = require('crypto');

const MAGIC = Buffer.from([0x83, 0x6c]);
const SCOPE_BYTES = 16;
const NODE_BYTES = 8;
const CHECK_BYTES = 10;
const BLOB_BYTES = MAGIC.length + SCOPE_BYTES + NODE_BYTES + 8 + CHECK_BYTES;
// Not a secret: the check only lets garbage be told apart from a real seq.
const CHECK_KEY = 'txchanges-testserver-seq';

// One id per server process, like the node name inside CouchDB's seqs.
const NODE_ID = crypto.randomBytes(NODE_BYTES);

function newScope() {
  return crypto.randomBytes(SCOPE_BYTES);
}

function check(body) {
  return crypto.createHmac('sha256', CHECK_KEY).update(body).digest()
    .subarray(0, CHECK_BYTES);
}

function encode(scope, n) {
  const body = Buffer.alloc(BLOB_BYTES - CHECK_BYTES);
  MAGIC.copy(body, 0);
  scope.copy(body, MAGIC.length);
  NODE_ID.copy(body, MAGIC.length + SCOPE_BYTES);
  body.writeBigUInt64BE(BigInt(n), MAGIC.length + SCOPE_BYTES + NODE_BYTES);
  return n + '-' + Buffer.concat([body, check(body)]).toString('base64url');
}

// Returns {scope, n} or null when the text is not a sequence at all.
// Like CouchDB, the "N-" prefix is optional and ignored: the blob is the truth.
function decode(text) {
  if (typeof text !== 'string') {
    return null;
  }
  const m = /^(?:\d+-)?([A-Za-z0-9_-]+)$/.exec(text);
  if (!m) {
    return null;
  }
  const blob = Buffer.from(m[1], 'base64url');
  if (blob.length !== BLOB_BYTES || !blob.subarray(0, 2).equals(MAGIC)) {
    return null;
  }
  const body = blob.subarray(0, BLOB_BYTES - CHECK_BYTES);
  if (!check(body).equals(blob.subarray(BLOB_BYTES - CHECK_BYTES))) {
    return null;
  }
  const scope = Buffer.from(body.subarray(MAGIC.length, MAGIC.length + SCOPE_BYTES));
  const n = Number(body.readBigUInt64BE(MAGIC.length + SCOPE_BYTES + NODE_BYTES));
  return {scope, n};
}

module.exports = {newScope, encode, decode};
