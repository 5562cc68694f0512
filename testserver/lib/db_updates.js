'use strict';
// GET /_db_updates: the server-wide feed of database created/updated/deleted
// events. CouchDB keeps them as documents "<type>:<db>" in _global_changes, so
// a feed shows each (type, db) pair once, at its latest update; this keeps
// the same shape in memory. Like CouchDB, responses send no headers until the
// first byte of body, and without _global_changes the endpoint is a 404.

const EventEmitter = require('events');
const seqs = require('./seqs');
const stats = require('./stats');
const {badRequest, missingDb, rawQuery, startStream} = require('./http');
const {parseHeartbeat, integer, DEFAULT_TIMEOUT} = require('./params');

const GLOBAL_CHANGES = '_global_changes';
const FEEDS = {normal: 'normal', longpoll: 'longpoll', continuous: 'continuous',
  live: 'continuous', eventsource: 'eventsource'};

class UpdateLog extends EventEmitter {
  constructor(registry) {
    super();
    this.setMaxListeners(0);
    this.scope = seqs.newScope();
    this.seq = 0;
    this.entries = [];
    this.latest = new Map();
    // CouchDB also reports its shard-map database `_dbs` as updated whenever
    // a database is created or deleted.
    registry.on('created', (name) => {
      if (name !== GLOBAL_CHANGES) {
        this.record(name, 'created');
        this.record('_dbs', 'updated');
      }
    });
    registry.on('updated', (name) => {
      if (name !== GLOBAL_CHANGES) {
        this.record(name, 'updated');
      }
    });
    registry.on('deleted', (name) => {
      if (name !== GLOBAL_CHANGES) {
        this.record(name, 'deleted');
        this.record('_dbs', 'updated');
      }
    });
  }

  record(dbName, type) {
    this.seq += 1;
    this.latest.set(type + ':' + dbName, this.seq);
    this.entries.push({seq: this.seq, db_name: dbName, type});
    if (this.entries.length > 1000 && this.entries.length > 2 * this.latest.size) {
      this.entries = this.entries.filter(
        (e) => this.latest.get(e.type + ':' + e.db_name) === e.seq);
    }
    this.emit('update');
  }

  since(n) {
    return this.entries.filter(
      (e) => e.seq > n && this.latest.get(e.type + ':' + e.db_name) === e.seq);
  }

  encode(n) {
    return seqs.encode(this.scope, n);
  }

  // An unknown or foreign `since` returns everything, as CouchDB does.
  sinceToInt(text) {
    if (text === 'now') {
      return this.seq;
    }
    const d = seqs.decode(text);
    return d && d.scope.equals(this.scope) ? d.n : 0;
  }
}

function parseParams(q) {
  const p = {feed: 'normal', since: '0', timeout: DEFAULT_TIMEOUT, heartbeat: null, limit: Infinity};
  if (q.feed !== undefined) {
    if (!Object.prototype.hasOwnProperty.call(FEEDS, q.feed)) {
      throw badRequest('Supported `feed` types: normal, continuous, live, longpoll, eventsource');
    }
    p.feed = FEEDS[q.feed];
  }
  if (q.since !== undefined) {
    p.since = q.since;
  }
  if (q.timeout !== undefined) {
    p.timeout = Math.max(0, integer(q.timeout));
  }
  if (q.heartbeat !== undefined) {
    p.heartbeat = parseHeartbeat(q.heartbeat);
  }
  if (q.limit !== undefined) {
    p.limit = Math.max(0, integer(q.limit));
  }
  return p;
}

class UpdatesFeed {
  constructor(log, p, res) {
    this.log = log;
    this.p = p;
    this.res = res;
    this.position = log.sinceToInt(p.since);
    this.sent = 0;
    this.started = false;
    this.opened = false;
    this.done = false;
    this.timer = null;
    this.onUpdate = () => this.pump();
    this.onClose = () => this.cleanup();
  }

  start() {
    stats.dbUpdates += 1;
    this.log.on('update', this.onUpdate);
    this.res.on('close', this.onClose);
    const rows = this.take();
    if (this.p.feed === 'normal' || (this.p.feed === 'longpoll' && rows.length)) {
      this.writeRows(rows);
      this.end();
      return;
    }
    if (rows.length) {
      this.writeRows(rows);
    }
    if (this.sent >= this.p.limit) {
      this.end();
      return;
    }
    this.arm();
  }

  take() {
    const rows = this.log.since(this.position).slice(0, this.p.limit - this.sent);
    this.position = rows.length ? rows[rows.length - 1].seq : Math.max(this.position, this.log.seq);
    return rows;
  }

  write(text) {
    if (!this.started) {
      this.started = true;
      const headers = {};
      if (this.p.feed === 'normal') {
        headers.Etag = '"' + this.log.encode(this.log.seq).slice(-25).toUpperCase() + '"';
      } else if (this.p.feed === 'eventsource') {
        headers['Content-Type'] = 'text/event-stream';
        headers['Cache-Control'] = 'no-cache';
      }
      startStream(this.res, 200, headers);
    }
    this.res.write(text);
  }

  open() {
    if (!this.opened && (this.p.feed === 'normal' || this.p.feed === 'longpoll')) {
      this.opened = true;
      this.write('{"results":[\n');
    }
  }

  writeRows(rows) {
    this.open();
    for (const e of rows) {
      const json = JSON.stringify({db_name: e.db_name, type: e.type, seq: this.log.encode(e.seq)});
      if (this.p.feed === 'continuous') {
        this.write(json + '\n');
      } else if (this.p.feed === 'eventsource') {
        this.write('data: ' + json + '\nid: ' + JSON.stringify(this.log.encode(e.seq)) + '\n\n');
      } else {
        this.write((this.sent > 0 ? ',\r\n' : '') + json);
      }
      this.sent += 1;
    }
    if (rows.length) {
      this.arm();
    }
  }

  pump() {
    if (this.done) {
      return;
    }
    const rows = this.take();
    if (!rows.length) {
      return;
    }
    this.writeRows(rows);
    if (this.p.feed === 'longpoll' || this.sent >= this.p.limit) {
      this.end();
    }
  }

  // One timer: the heartbeat interval when heartbeat is set, else the idle
  // timeout; any byte sent restarts it.
  arm() {
    if (this.done || this.p.feed === 'normal') {
      return;
    }
    clearTimeout(this.timer);
    if (this.p.heartbeat !== null) {
      this.timer = setTimeout(() => {
        this.open();
        this.write(this.p.feed === 'eventsource' ? 'event: heartbeat\ndata: \n\n' : '\n');
        this.arm();
      }, this.p.heartbeat);
    } else {
      this.timer = setTimeout(() => this.end(), this.p.timeout);
    }
  }

  end() {
    if (this.done) {
      return;
    }
    this.cleanup();
    const lastSeq = this.log.encode(this.position);
    if (this.p.feed === 'continuous') {
      this.write(JSON.stringify({last_seq: lastSeq}) + '\n');
    } else if (this.p.feed !== 'eventsource') {
      this.open();
      this.write('\n],\n"last_seq":' + JSON.stringify(lastSeq) + '}\n');
    }
    this.write('\n');
    this.res.end();
  }

  cleanup() {
    if (!this.done) {
      stats.dbUpdates -= 1;
    }
    this.done = true;
    clearTimeout(this.timer);
    this.log.off('update', this.onUpdate);
    this.res.off('close', this.onClose);
  }
}

module.exports = function mountDbUpdates(app, registry, wrap) {
  const log = new UpdateLog(registry);
  app.get('/_db_updates', wrap(async (req, res) => {
    if (!registry.exists(GLOBAL_CHANGES)) {
      throw missingDb();
    }
    const p = parseParams(rawQuery(req));
    new UpdatesFeed(log, p, res).start();
  }));
  return log;
};
module.exports.GLOBAL_CHANGES = GLOBAL_CHANGES;
