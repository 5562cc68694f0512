import random, time
from collections import Counter
import pytest_twisted
from twisted.internet.defer import Deferred
from txchanges import Consumer, _watchdog
from tests.test_faultproxy import direct, proxy, proxied, follow, sleep  # noqa

@pytest_twisted.ensureDeferred
async def test_chaos_observe(monkeypatch, direct, proxied, proxy):
    monkeypatch.setattr(_watchdog, "GRACE", 0.1)
    consumer = Consumer(proxied)
    seen, errors, done = [], [], []
    follower = Deferred.fromCoroutine(follow(consumer, seen, errors, done))
    chaos = proxy.chaos(random.Random(11), duration=4.0, gap=(0.05, 0.15), length=(0.25, 0.4))
    written = []
    while not chaos.called:
        batch = [{"_id": f"c-{len(written) + i:04d}"} for i in range(5)]
        await direct.save_docs(batch)
        written += [d["_id"] for d in batch]
        await sleep(0.02)
    deadline = time.monotonic() + 5
    while not set(written) <= set(seen) and time.monotonic() < deadline:
        await sleep(0.05)
    done.append(True); consumer.stop(); await follower
    print("\nwritten", len(written), "seen", len(seen), "unique", len(set(seen)), "missing", len(set(written) - set(seen)))
    print("order ok", seen == sorted(seen))
    print(Counter(type(e).__name__ for e in errors))
    print(proxy.faults, proxy.connections, proxy.bytes_forwarded)
    print(proxy.history)
    for e in errors:
        if type(e).__name__ == "Stalled": print("stalled", e, e.last_seq and e.last_seq[:10]); break
