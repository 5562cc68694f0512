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
module.exports = {changes: 0, dbUpdates: 0, changesStarted: 0, peakChanges: 0,
  heartbeats: new Map()};
