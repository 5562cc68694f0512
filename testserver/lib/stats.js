'use strict';
// Live counters for GET /_testserver, so tests can see from the server's
// side that a client really closed its feed.
module.exports = {changes: 0, dbUpdates: 0};
