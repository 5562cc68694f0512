// nano's changesReader.spool, the official CouchDB client's way for Node.js to
// read a database's whole history in one request, as a benchmark client:
//
//   node benchmarks/node/spool.js URL CHANGES [BATCH]
//
// It reads the feed of the database "db" at URL since 0 (nano asks for it with
// seq_interval=BATCH, 100 by default, and hands the rows over in batches of
// that size), counts the rows, and prints one JSON line as the Python clients
// of benchmarks/clients.py do: {"client", "changes", "seconds", "max_rss_kib",
// "json"}. It exits with status 1 unless it saw exactly CHANGES rows.
// "seconds" runs from just before the request to nano's "end" event, which
// nano emits 10 ms after the body ends.
'use strict'

const nano = require('nano')

const [url, expected, batch] = process.argv.slice(2)
if (!url || !expected) {
  console.error('usage: node spool.js URL CHANGES [BATCH]')
  process.exit(2)
}
const db = nano(url.replace(/\/$/, '')).db.use('db')
let count = 0
let failed = null
const started = process.hrtime.bigint()
db.changesReader.spool({ since: 0, batchSize: Number(batch || 100) })
  .on('batch', (rows) => { count += rows.length })
  .on('error', (error) => { failed = error })
  .on('end', () => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    console.log(JSON.stringify({
      client: 'nano-spool',
      changes: count,
      seconds,
      max_rss_kib: process.resourceUsage().maxRSS,
      json: 'JSON.parse'
    }))
    if (failed !== null || count !== Number(expected)) {
      console.error(`nano-spool: saw ${count} changes, expected ${expected}` + (failed ? `; ${failed}` : ''))
      process.exitCode = 1
    }
  })
