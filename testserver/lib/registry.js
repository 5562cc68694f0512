'use strict';
// Which databases exist, which incarnation each one is, and a wake-up signal
// per database for the feeds that follow it.
//
// Existence is tracked synchronously from PouchDB's own 'created' and
// 'destroyed' constructor events rather than through express-pouchdb's
// asynchronous all-dbs list, so a feed or a 404 never races a PUT or DELETE.

const EventEmitter = require('events');
const seqs = require('./seqs');
const {RWLock} = require('./rwlock');

// Helper databases PouchDB creates for itself; they are not user databases.
const INTERNAL = /^pouch__all_dbs__$|-mrview-|^https?:\/\//;

class Entry extends EventEmitter {
  constructor(registry, name) {
    super();
    this.setMaxListeners(0);
    this.name = name;
    this.scope = seqs.newScope();
    this.deleted = false;
    this.db = new registry.PouchDB(name);
    // Feeds read under the lock's shared side (see rwlock.js).
    this.lock = registry.lockFor(name);
    // Every concurrent read of a feed listens for 'destroyed' on it.
    this.db.setMaxListeners(0);
    this._scheduled = false;
    // One PouchDB listener per database, fanned out to any number of feeds,
    // so the cost of a write does not grow with the number of open feeds.
    // Documents whose newest revision is a deletion: GET /{db} reports how
    // many (doc_del_count), as CouchDB does.
    this.deletedIds = new Set();
    this._watch = this.db.changes({since: 0, live: true, return_docs: false})
      .on('change', (change) => {
        if (change.deleted) {
          this.deletedIds.add(change.id);
        } else {
          this.deletedIds.delete(change.id);
        }
        this._schedule(registry);
      })
      .on('error', () => {});
  }

  // A bulk write produces many change events; feeds and _db_updates see one
  // wake-up per write batch, as CouchDB's db_updated event works.
  _schedule(registry) {
    if (this._scheduled || this.deleted) {
      return;
    }
    this._scheduled = true;
    setImmediate(() => {
      this._scheduled = false;
      if (!this.deleted) {
        this.emit('update');
        registry.emit('updated', this.name);
      }
    });
  }

  seq(n) {
    return seqs.encode(this.scope, n);
  }

  // The integer a `since` value stands for in this incarnation; null when the
  // text is no sequence at all. A sequence of another incarnation rewinds.
  sinceToInt(text) {
    if (text === '0') {
      return 0;
    }
    const d = seqs.decode(text);
    if (!d) {
      return null;
    }
    return d.scope.equals(this.scope) ? d.n : 0;
  }

  async updateSeq() {
    const info = await this.db.info();
    return info.update_seq;
  }

  _destroyed() {
    this.deleted = true;
    this._watch.cancel();
    this.emit('deleted');
  }
}

class Registry extends EventEmitter {
  constructor(PouchDB) {
    super();
    this.setMaxListeners(0);
    this.PouchDB = PouchDB;
    this.entries = new Map();
    this._chain = Promise.resolve();
    // One lock per database name, shared by every instance of it.
    this._locks = new Map();
    PouchDB.on('created', (name) => this._onCreated(name));
    PouchDB.on('destroyed', (name) => this._onDestroyed(name));
  }

  get(name) {
    return this.entries.get(name);
  }

  lockFor(name) {
    let lock = this._locks.get(name);
    if (!lock) {
      lock = new RWLock();
      this._locks.set(name, lock);
    }
    return lock;
  }

  // For GET /_testserver: each database's lock, while anyone uses it or
  // any write gave its turn up.
  lockStates(abandoned) {
    const states = {};
    for (const [name, lock] of this._locks) {
      const state = lock.state();
      const gaveUp = abandoned.get(name) || 0;
      if (state.writing || state.readers || state.waiting || gaveUp) {
        states[name] = Object.assign(state, {abandoned: gaveUp});
      }
    }
    return states;
  }

  exists(name) {
    return this.entries.has(name);
  }

  _onCreated(name) {
    if (INTERNAL.test(name) || this.entries.has(name)) {
      return;
    }
    // The Entry opens its own PouchDB instance; that instance's 'created'
    // event arrives later and finds the name already known.
    this.entries.set(name, new Entry(this, name));
    this.emit('created', name);
  }

  _onDestroyed(name) {
    const entry = this.entries.get(name);
    if (!entry) {
      return;
    }
    this.entries.delete(name);
    entry._destroyed();
    this.emit('deleted', name);
  }

  // Creations and deletions run one at a time; a failure never blocks the
  // ones queued after it (express-pouchdb's own queue does, which is why a
  // single failed DELETE used to hang every later request).
  _serial(fn) {
    const run = this._chain.then(fn, fn);
    this._chain = run.catch(() => {});
    return run;
  }

  create(name) {
    return this._serial(async () => {
      if (this.entries.has(name)) {
        return false;
      }
      this._onCreated(name);
      await this.entries.get(name).db.info();
      return true;
    });
  }

  destroy(name) {
    return this._serial(async () => {
      const entry = this.entries.get(name);
      if (!entry) {
        return false;
      }
      // express-pouchdb caches one instance per name; a stale one would
      // serve the old, destroyed store after the name is re-created.
      const cache = this.PouchDB.__dbCacheMap;
      if (cache) {
        cache.delete(name);
      }
      await entry.db.destroy();
      // Normally the 'destroyed' event has already done this.
      this._onDestroyed(name);
      return true;
    });
  }
}

module.exports = {Registry};
