"""
Feed parameters: a misspelled or mistyped keyword never reaches CouchDB. Each
public method and ChangesService refuse it before any request, naming the
closest known name; a filter's own parameters go in params={...}, whose keys
may not collide with a named parameter; and mypy sees a misspelling too.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from txchanges import ChangesService, Consumer, Database, FeedParams
from txchanges.testing import FakeCouchDB

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> FakeCouchDB:
    fake = FakeCouchDB(clock=Clock())
    fake.create_db("db")
    fake.save("db", {"_id": "a", "type": "fruit"})
    return fake


@pytest.fixture
def db(fake: FakeCouchDB) -> Database:
    return fake.server()["db"]


def changes_requests(fake: FakeCouchDB) -> list[dict[str, str]]:
    """The query of every _changes request the fake received."""
    return [r.query for r in fake.requests if r.path[-1:] == ["_changes"]]


#: Every public entry point that takes feed parameters.
CALLS = ["fetch", "fetch_rows", "wait_once", "wait", "changes", "ChangesService"]


def call(name: str, db: Database, **kwargs: Any) -> None:
    """Make the call, then end whatever it opened."""
    if name == "ChangesService":
        service = ChangesService(db, lambda change: None, clock=Clock(), **kwargs)
        service.startService()
        service.stopService()
        return
    consumer = Consumer(db)
    method = getattr(consumer, name)
    opened = method(lambda row: None, 0, **kwargs) if name == "fetch_rows" else method(0, **kwargs)
    if isinstance(opened, Deferred):
        opened.addErrback(lambda _: None)  # stop() cancels a wait_once
    else:
        opened.close()
    consumer.stop()


@pytest.mark.parametrize("name", CALLS)
def test_a_misspelled_keyword_is_refused_before_any_request(fake: FakeCouchDB, db: Database, name: str) -> None:
    """include_doc=True is a TypeError naming include_docs and params, and nothing is sent."""
    with pytest.raises(TypeError) as caught:
        call(name, db, include_doc=True)
    assert "unknown feed parameter 'include_doc' (did you mean 'include_docs'?); pass others in params={...}" in str(
        caught.value
    )
    assert changes_requests(fake) == []


@pytest.mark.parametrize("name", CALLS)
def test_the_same_keyword_spelled_right_is_sent(fake: FakeCouchDB, db: Database, name: str) -> None:
    """include_docs=True reaches the server as include_docs=true, on every entry point."""
    call(name, db, include_docs=True)
    assert [q.get("include_docs") for q in changes_requests(fake)][:1] == ["true"]


@pytest.mark.parametrize(
    "kwargs, suggestion",
    [
        ({"concurency": 8}, "concurrency"),
        ({"on_eror": "skip"}, "on_error"),
        ({"checkpoint_evry": 5}, "checkpoint_every"),
        ({"filtername": "app/f"}, "filter_name"),
    ],
)
def test_a_misspelled_service_option_names_the_option(fake: FakeCouchDB, db: Database, kwargs: dict[str, Any], suggestion: str) -> None:
    """ChangesService(concurency=8) is a TypeError suggesting the service's own option, not a query parameter."""
    with pytest.raises(TypeError, match=re.escape(f"(did you mean {suggestion!r}?)")):
        ChangesService(db, lambda change: None, clock=Clock(), **kwargs)
    assert fake.requests == []


def test_a_keyword_nothing_resembles_is_refused_without_a_guess(db: Database) -> None:
    """An unknown keyword with no close name is still refused, with the way to send it."""
    with pytest.raises(TypeError) as caught:
        Consumer(db).fetch(0, region="eu")
    assert str(caught.value) == (
        "Consumer.fetch(): unknown feed parameter 'region'; pass others in params={...}"
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"include_docs": "true"}, TypeError, "include_docs must be True or False, not 'true'"),
        ({"descending": 1}, TypeError, "descending must be True or False"),
        ({"limit": "10"}, TypeError, "limit must be a whole number, at least 0, not '10'"),
        ({"limit": True}, TypeError, "limit must be a whole number"),
        ({"limit": -1}, ValueError, "limit must be a whole number, at least 0, not -1"),
        ({"seq_interval": 0}, ValueError, "seq_interval must be a whole number, at least 1"),
        ({"style": "everything"}, ValueError, "style must be one of 'main_only', 'all_docs'"),
        ({"doc_ids": "a"}, TypeError, "doc_ids must be a list of str"),
        ({"doc_ids": ["a", 2]}, TypeError, "doc_ids must be a list of str"),
        ({"selector": [("type", "fruit")]}, TypeError, "selector must be a dict"),
        ({"view": 3}, TypeError, "view must be a str"),
        ({"heartbeat": "soon"}, TypeError, "heartbeat must be True, False, milliseconds"),
        ({"timeout": -5}, ValueError, "timeout must be 0 or more milliseconds"),
        ({"timeout": 1.5}, TypeError, "timeout must be milliseconds"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(fake: FakeCouchDB, db: Database, kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    """A feed parameter of the wrong type (or out of range) is refused with a message naming it, before any request."""
    with pytest.raises(error, match=re.escape(message)):
        call("wait", db, **kwargs)
    assert fake.requests == []


@pytest.mark.parametrize("name", ["fetch", "wait", "ChangesService"])
@pytest.mark.parametrize("key", ["include_docs", "limit", "filter", "feed", "since", "heartbeat", "timeout", "filter_name"])
def test_a_params_key_that_collides_is_refused(fake: FakeCouchDB, db: Database, name: str, key: str) -> None:
    """A key of params that is a named parameter, or one the method sets itself, is a ValueError naming it."""
    with pytest.raises(ValueError, match=re.escape(f"{key!r} in params is not allowed")):
        call(name, db, params={key: "1"})
    assert fake.requests == []


@pytest.mark.parametrize(
    "params, message",
    [
        (["type", "fruit"], "params must be a mapping, not list"),
        ({1: "x"}, "a key of params must be a non-empty str, not 1"),
        ({"type": object()}, "cannot send parameter type="),
    ],
)
def test_params_that_cannot_be_sent_are_refused(fake: FakeCouchDB, db: Database, params: Any, message: str) -> None:
    """params must map names to values CouchDB can read; anything else is a TypeError before any request."""
    with pytest.raises(TypeError, match=re.escape(message)):
        call("fetch", db, params=params)
    assert fake.requests == []


@pytest.mark.parametrize("name", CALLS)
def test_params_go_to_the_query_unchanged(fake: FakeCouchDB, db: Database, name: str) -> None:
    """params={...} are sent as they are (booleans as true/false), next to the filter they are for."""
    call(name, db, filter_name="app/by_type", params={"type": "fruit", "strict": True, "n": 2})
    [query, *_] = changes_requests(fake)
    assert (query["filter"], query["type"], query["strict"], query["n"]) == ("app/by_type", "fruit", "true", "2")


@pytest.mark.parametrize("keyword", ["heartbeat", "timeout"])
@pytest.mark.parametrize("name", ["fetch", "fetch_rows"])
def test_the_normal_feed_refuses_heartbeat_and_timeout(fake: FakeCouchDB, db: Database, name: str, keyword: str) -> None:
    """fetch and fetch_rows read the normal feed, which has no heartbeat or timeout: a ValueError, not a silent no-op."""
    with pytest.raises(ValueError, match=f"the normal feed has no {keyword}"):
        call(name, db, **{keyword: 1000})
    assert fake.requests == []


def test_the_service_refuses_timeout(db: Database) -> None:
    """The service sends heartbeat, which makes CouchDB ignore timeout: timeout= is a ValueError saying so."""
    with pytest.raises(ValueError, match="which makes CouchDB ignore timeout; see feed_max_duration"):
        ChangesService(db, lambda change: None, clock=Clock(), timeout=1000)  # type: ignore[call-arg]


#: A value of each FeedParams name that implies no filter, and how it is sent.
PLAIN_VALUES = {
    "include_docs": (True, "true"),
    "conflicts": (True, "true"),
    "attachments": (False, "false"),
    "att_encoding_info": (True, "true"),
    "style": ("all_docs", "all_docs"),
    "limit": (1, "1"),
    "descending": (True, "true"),
    "seq_interval": (2, "2"),
}


@pytest.mark.parametrize("name", sorted(FeedParams.__optional_keys__))
def test_every_feed_parameter_is_accepted_and_sent(fake: FakeCouchDB, db: Database, name: str) -> None:
    """Each name FeedParams declares is accepted as a keyword and reaches the request."""
    if name in PLAIN_VALUES:
        value, text = PLAIN_VALUES[name]
        call("fetch", db, **{name: value})
        assert changes_requests(fake)[0][name] == text
        return
    fake.register_filter("app/f", lambda doc, req: True)
    fake.register_view("app/v", lambda doc: [(doc["_id"], None)])
    filters = {"filter": ("app/f", "app/f"), "view": ("app/v", "_view"), "doc_ids": (["a"], "_doc_ids"),
               "selector": ({"type": "fruit"}, "_selector"), "fields": (["type"], "_selector")}
    value, sent_filter = filters[name]
    extra = {"selector": {"type": "fruit"}} if name == "fields" else {}
    call("fetch", db, **{name: value}, **extra)
    [request] = [r for r in fake.requests if r.path[-1:] == ["_changes"]]
    assert request.query["filter"] == sent_filter
    if name in ("doc_ids", "selector", "fields"):
        assert request.body is not None and request.body[name] == value


def test_mypy_rejects_a_misspelled_keyword(tmp_path: Path) -> None:
    """mypy reports include_doc=True on fetch and on ChangesService as an unexpected keyword suggesting include_docs,
    and a value of the wrong type, while the correct calls pass."""
    from mypy import api

    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent("""\
        from txchanges import ChangesService, Consumer, Database

        def use(db: Database) -> None:
            Consumer(db).fetch(0, include_docs=True, params={"type": "fruit"})
            ChangesService(db, print, include_docs=True, concurrency=8)
            Consumer(db).fetch(0, include_doc=True)
            ChangesService(db, print, include_doc=True)
            Consumer(db).wait(0, limit="10")
    """))
    out, err, status = api.run([
        str(snippet), "--strict", "--no-error-summary", "--hide-error-context", "--no-pretty",
        "--cache-dir", os.path.join(ROOT, ".mypy_cache"), "--config-file", str(ROOT / "setup.cfg"),
    ])
    errors = [line.split(": error: ")[1] for line in out.splitlines() if ": error: " in line]
    lines = [int(line.split(":")[1]) for line in out.splitlines() if ": error: " in line]
    assert status == 1, err
    assert lines == [6, 7, 8], out
    assert errors[0].startswith('Unexpected keyword argument "include_doc" for "fetch" of "Consumer"; did you mean "include_docs"?')
    assert errors[1].startswith('Unexpected keyword argument "include_doc" for "ChangesService"; did you mean "include_docs"?')
    assert 'Argument "limit" to "wait" of "Consumer" has incompatible type "str"; expected "int"' in errors[2]
