'use strict';
// One _changes response, streamed the way CouchDB 3's chttpd does it.
//
// A feed runs "rounds": each round reads every change after `position` from
// PouchDB, filters it and buffers rows (flushing at CouchDB's 1490-byte
// threshold). Live feeds then wait; every wake-up (a database update, even
// one the filter rejects, or a heartbeat tick) first writes "\n" and then
// runs another round. Without heartbeat the wait is an idle timeout that ends
// the feed with the last_seq line; with heartbeat it never ends by itself.

const crypto = require('crypto');
const {startStream} = require('./http');
const {DEFAULT_LIMIT} = require('./params');
const stats = require('./stats');

const FLUSH_THRESHOLD = 1490;
const META_KEYS = ['_revisions', '_conflicts', '_deleted_conflicts',
  '_local_seq', '_revs_info', '_attachments'];

// CouchDB's member order: _id, _rev, _deleted, body, meta, attachments.
function formatDoc(change) {
  const doc = change.doc || {_id: change.id, _rev: change.changes[0].rev, _deleted: true};
  const out = {_id: doc._id, _rev: doc._rev};
  if (doc._deleted) {
    out._deleted = true;
  }
  for (const key of Object.keys(doc)) {
    if (key[0] !== '_') {
      out[key] = doc[key];
    }
  }
  for (const key of META_KEYS) {
    if (doc[key] !== undefined) {
      out[key] = doc[key];
    }
  }
  return out;
}

// A slow reader holds the feed back instead of growing the server's memory.
function drained(res) {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

class Feed {
  constructor(entry, params, filter, since, res) {
    this.entry = entry;
    this.p = params;
    this.filter = filter;
    this.res = res;
    this.position = since;
    this.endSeq = null;
    this.limitLeft = params.limit === null ? Infinity : params.limit;
    this.rowsSent = 0;
    this.pending = 0;
    this.buffer = [];
    this.bufSize = 0;
    this.waited = false;
    this.busy = false;
    this.updateQueued = false;
    this.done = false;
    this.timer = null;
    this.onUpdate = () => this.wake('update');
    this.onDeleted = () => this.wake('deleted');
    this.onClose = () => this.cancel();
  }

  headers(updateSeq) {
    if (this.p.feed === 'eventsource') {
      return {'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache'};
    }
    if (this.p.feed !== 'normal') {
      return {};
    }
    const etag = crypto.createHash('md5').update(this.entry.scope)
      .update(String(updateSeq)).update(JSON.stringify(this.p.query))
      .digest().readBigUInt64BE(0).toString(36).toUpperCase();
    return {'ETag': '"' + etag + '"'};
  }

  async run(updateSeq) {
    stats.changes += 1;
    stats.peakChanges = Math.max(stats.peakChanges, stats.changes);
    stats.changesStarted += 1;
    // Listen before the first read so that no update can fall in between.
    this.entry.on('update', this.onUpdate);
    this.entry.on('deleted', this.onDeleted);
    this.res.on('close', this.onClose);
    startStream(this.res, 200, this.headers(updateSeq));
    const feed = this.p.feed;
    if (feed === 'normal' || feed === 'longpoll') {
      this.write('{"results":[\n');
    }
    this.busy = true;
    const ok = await this.round(true);
    this.busy = false;
    if (!ok || this.done) {
      return;
    }
    if (feed === 'normal' || this.limitLeft <= 0 ||
        (feed === 'longpoll' && this.rowsSent > 0) || this.entry.deleted) {
      this.finish();
      return;
    }
    this.waitForUpdates();
  }

  // Returns false when the feed had to stop (client gone or read failure).
  async round(first) {
    const p = this.p;
    let result;
    try {
      result = await this.entry.lock.read(() => this.entry.db.changes({
        since: this.position,
        style: 'all_docs',
        include_docs: true,
        conflicts: p.conflicts,
        attachments: p.attachments,
        binary: false,
        return_docs: true
      }));
    } catch (e) {
      if (!this.done) {
        // A database deleted under a feed ends it like a timeout.
        if (this.entry.deleted) {
          this.finish();
        } else {
          this.abort();
        }
      }
      return false;
    }
    if (this.done) {
      return false;
    }
    let changes = result.results;
    const descending = first && p.descending;
    if (descending) {
      changes = changes.slice().reverse();
    }
    let visited = 0;
    let stopped = false;
    let lastRow = null;
    for (const change of changes) {
      if (this.limitLeft <= 0) {
        stopped = true;
        break;
      }
      const doc = formatDoc(change);
      const pass = !this.filter || this.filter.test(doc);
      if (pass || !this.filter.fastPath) {
        visited += 1;
      }
      if (pass) {
        this.emitRow(change, doc);
        lastRow = change.seq;
      }
      if (!descending) {
        this.position = change.seq;
      }
      if (this.res.writableNeedDrain) {
        await drained(this.res);
        if (this.done) {
          return false;
        }
      }
    }
    // CouchDB's pending: changes after the point the enumeration reached.
    // _doc_ids and _design only visit the documents they return.
    this.pending = changes.length - visited;
    // last_seq is where the enumeration got to; newest-first that is the
    // oldest row sent.
    if (descending) {
      this.position = Math.max(this.position, result.last_seq);
      this.endSeq = lastRow === null ? this.position : lastRow;
    } else {
      if (!stopped) {
        this.position = Math.max(this.position, result.last_seq);
      }
      this.endSeq = this.position;
    }
    return true;
  }

  emitRow(change, doc) {
    const p = this.p;
    let seq = this.entry.seq(change.seq);
    if (p.seqInterval !== null) {
      // fabric_view_changes sends a real seq only when the remaining limit
      // is a multiple of the interval.
      const limit = p.limit === null ? DEFAULT_LIMIT : BigInt(p.limit);
      if ((limit - BigInt(this.rowsSent)) % p.seqInterval !== 0n) {
        seq = null;
      }
    }
    let changes = [{rev: doc._rev}];
    if (p.style === 'all_docs') {
      changes = changes.concat(change.changes.filter((c) => c.rev !== doc._rev));
    }
    const row = {seq, id: change.id, changes};
    if (change.deleted) {
      row.deleted = true;
    }
    if (p.includeDocs) {
      row.doc = this.filter && this.filter.project ? this.filter.project(doc) : doc;
    }
    const json = JSON.stringify(row);
    let data;
    if (p.feed === 'continuous') {
      data = json + '\n';
    } else if (p.feed === 'eventsource') {
      data = 'data: ' + json + '\nid: ' + JSON.stringify(seq) + '\n\n';
    } else {
      data = (this.rowsSent > 0 ? ',\r\n' : '') + json;
    }
    this.rowsSent += 1;
    this.limitLeft -= 1;
    if (this.bufSize > 0 && this.bufSize + data.length > FLUSH_THRESHOLD) {
      this.flush();
    }
    this.buffer.push(data);
    this.bufSize += data.length;
  }

  write(text) {
    this.res.write(text);
  }

  flush(tail) {
    if (tail) {
      this.buffer.push(tail);
      this.bufSize += tail.length;
    }
    if (this.bufSize > 0) {
      this.write(this.buffer.join(''));
      this.buffer = [];
      this.bufSize = 0;
    }
  }

  // CouchDB's waiting_for_updates: send what is buffered, or a lone "\n" if
  // the response has sent nothing of its own yet.
  waitForUpdates() {
    if (!this.waited && this.rowsSent === 0) {
      this.write('\n');
    } else {
      this.flush();
    }
    this.waited = true;
    if (this.updateQueued) {
      this.updateQueued = false;
      setImmediate(() => this.wake('update'));
    }
    this.armTimer();
  }

  armTimer() {
    clearTimeout(this.timer);
    const hb = this.p.heartbeat;
    if (hb !== null) {
      this.timer = setTimeout(() => this.wake('heartbeat'), hb);
    } else {
      this.timer = setTimeout(() => this.wake('timeout'), this.p.timeout);
    }
  }

  async wake(kind) {
    if (this.done) {
      return;
    }
    if (kind === 'deleted') {
      this.pending = 0;
      if (!this.busy) {
        this.finish();
      }
      return;
    }
    if (this.busy || !this.waited) {
      if (kind === 'update') {
        this.updateQueued = true;
      }
      return;
    }
    clearTimeout(this.timer);
    if (kind === 'timeout') {
      this.finish();
      return;
    }
    this.write(this.p.feed === 'eventsource' ? 'event: heartbeat\ndata: \n\n' : '\n');
    if (kind === 'heartbeat') {
      const name = this.entry.name;
      stats.heartbeats.set(name, (stats.heartbeats.get(name) || 0) + 1);
    }
    if (kind === 'update') {
      this.busy = true;
      const ok = await this.round(false);
      this.busy = false;
      if (!ok || this.done) {
        return;
      }
      if (this.entry.deleted || this.limitLeft <= 0 ||
          (this.p.feed === 'longpoll' && this.rowsSent > 0)) {
        this.finish();
        return;
      }
    }
    this.waitForUpdates();
  }

  finish() {
    if (this.done) {
      return;
    }
    this.cleanup();
    const lastSeq = this.entry.seq(this.endSeq === null ? this.position : this.endSeq);
    const feed = this.p.feed;
    if (feed === 'continuous') {
      this.flush(JSON.stringify({last_seq: lastSeq, pending: this.pending}) + '\n');
    } else if (feed === 'eventsource') {
      this.flush();
    } else {
      this.flush('\n],\n"last_seq":' + JSON.stringify(lastSeq) +
        ',"pending":' + this.pending + '}\n');
    }
    this.write('\n');
    this.res.end();
  }

  abort() {
    this.cleanup();
    this.res.destroy();
  }

  // The client went away: drop every listener and timer at once, so closed
  // feeds cost nothing on later writes.
  cancel() {
    if (!this.done) {
      this.cleanup();
    }
  }

  cleanup() {
    if (!this.done) {
      stats.changes -= 1;
    }
    this.done = true;
    clearTimeout(this.timer);
    this.entry.off('update', this.onUpdate);
    this.entry.off('deleted', this.onDeleted);
    this.res.off('close', this.onClose);
  }
}

module.exports = {Feed};
