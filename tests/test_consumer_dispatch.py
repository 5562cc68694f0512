"""Which callbacks a running feed calls: the consumer's registrations, as they stand at each row."""

from twisted.internet.task import Clock

from .test_consumer_unit import Streaming, consumer_on, outcome, row

BODY = row("1-a", "a") + row("2-b", "b") + row("3-c", "c") + b'{"last_seq":"3-c","pending":0}\n'


def test_a_callback_registered_during_a_feed_gets_the_next_row():
    """A callback that unregisters itself and registers another during wait changes who gets the next row, not this one."""
    consumer, client = consumer_on(Streaming(BODY), Clock())
    calls = []

    def late(r):
        calls.append(("late", r["id"]))

    def other(r):
        calls.append(("other", r["id"]))

    def once(r):
        calls.append(("once", r["id"]))
        consumer.unregister_callback(once)
        consumer.register_callback(late)

    consumer.register_callback(once)
    consumer.register_callback(other)
    got = outcome(consumer.wait())
    client.flush()
    assert got == ["3-c"]
    assert calls == [
        ("once", "a"), ("other", "a"),
        ("other", "b"), ("late", "b"),
        ("other", "c"), ("late", "c"),
    ]

