'use strict';
// A fair readers-writer lock over promises.
//
// A PouchDB changes() read is not a snapshot: a document updated while the
// read runs can be left out of it altogether (seen with 50 documents updated
// in turn while changes() was read in a loop), where CouchDB shows it at one
// of its two seqs. Feeds read under the shared side and document writes run
// under the exclusive side, so a read never sees half a write.

class RWLock {
  constructor() {
    this.readers = 0;
    this.writing = false;
    this.queue = [];
  }

  read(fn) {
    return this._run(false, fn);
  }

  write(fn) {
    return this._run(true, fn);
  }

  // For GET /_testserver: who holds it, and how many wait.
  state() {
    return {writing: this.writing, readers: this.readers, waiting: this.queue.length};
  }

  async _run(exclusive, fn) {
    await new Promise((resolve) => {
      this.queue.push({exclusive, resolve});
      this._pump();
    });
    try {
      return await fn();
    } finally {
      if (exclusive) {
        this.writing = false;
      } else {
        this.readers -= 1;
      }
      this._pump();
    }
  }

  // First come, first served: a waiting writer holds back later readers.
  _pump() {
    while (this.queue.length > 0 && !this.writing) {
      const next = this.queue[0];
      if (next.exclusive && this.readers > 0) {
        return;
      }
      this.queue.shift();
      if (next.exclusive) {
        this.writing = true;
      } else {
        this.readers += 1;
      }
      next.resolve();
    }
  }
}

const WRITES = new Set(['PUT', 'POST', 'DELETE', 'COPY']);

// Express middleware: a write request to a database's documents (what
// reaches express-pouchdb: feeds and database creation and deletion have
// their own routes before it) holds the exclusive side of the database's
// lock from *lockFor* until its response is over. A request whose client
// goes away while it waits for the lock gives its turn up when it comes:
// its response's 'close' has been and gone by then, and would never end
// the turn. *onAbandoned* is told the database's name when a client goes
// away while its write waits.
function lockWrites(lockFor, onAbandoned = () => {}) {
  return (req, res, next) => {
    const name = req.path.split('/')[1];
    if (!WRITES.has(req.method) || !name) {
      next();
      return;
    }
    let lockName;
    try {
      lockName = decodeURIComponent(name);
    } catch (e) {
      next();
      return;
    }
    // Listened for from the start, not from when the turn comes.
    let over = false;
    let endTurn = null;
    const end = () => {
      if (endTurn) {
        endTurn();
      } else if (!over) {
        onAbandoned(lockName);
      }
      over = true;
    };
    res.on('finish', end);
    res.on('close', end);
    lockFor(lockName).write(() => new Promise((resolve) => {
      if (over) {
        resolve();
        return;
      }
      endTurn = resolve;
      next();
    }));
  };
}

module.exports = {RWLock, lockWrites};
