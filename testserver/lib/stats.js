'use strict';
// Live counters for GET /_testserver, so tests can see from the server's
// side that a client really closed its feed.
// "changes" counts the _changes feeds open now; "changesStarted" every one
// ever started, once its since was resolved: a test that waits for it to
// grow knows that a write from then on comes after a since=now.
// "peakChanges" is the most _changes feeds open at once since the start or
// since POST /_testserver/reset_peak, which sets it to the number open then.
// "heartbeats" counts, by database name, the heartbeat newlines _changes
// feeds have written when their heartbeat timer fired, so a test can see
// that a client really got some.
// "rowsScanned" counts, by database name, the changes _changes feeds have
// gone through (each read and, with a filter, tested, whether or not it was
// sent), so a test can see how much of a database a follower made the
// server read again.
// "abandonedWrites" counts, by database name, the document writes whose
// client went away while they waited for the database's write lock.
// "sessions" counts the cookie sessions: logins (and refused ones), renewed
// cookies sent, requests whose cookie had expired, and when (whole seconds,
// the cookie's own time) the newest cookie was made.
module.exports = {
  changes: 0, dbUpdates: 0, changesStarted: 0, peakChanges: 0, heartbeats: new Map(),
  rowsScanned: new Map(), abandonedWrites: new Map(),
  sessions: {logins: 0, refusedLogins: 0, renewals: 0, expired: 0, lastIssued: null}
};
