'use strict';
// Live counters for GET /_testserver, so tests can see from the server's
// side that a client really closed its feed.
// "changes" counts the _changes feeds open now; "changesStarted" every one
// ever started, once its since was resolved: a test that waits for it to
// grow knows that a write from then on comes after a since=now.
module.exports = {changes: 0, dbUpdates: 0, changesStarted: 0};
