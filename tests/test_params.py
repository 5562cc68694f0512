"""Feed parameters encoded as CouchDB expects, and misuse refused before any request."""

import pytest

from txchanges.feed._params import feed_request
from txchanges.http._query import encode_value


@pytest.mark.parametrize(
    "value, text",
    [
        (True, "true"),
        (False, "false"),
        (10, "10"),
        (1.5, "1.5"),
        ("app/by_type", "app/by_type"),
        (["a", "b"], '["a","b"]'),
        ({"type": "fruit"}, '{"type":"fruit"}'),
    ],
)
def test_encode_value(value, text):
    """Booleans, numbers, strings and JSON values become CouchDB's text."""
    assert encode_value("x", value) == text


def test_encode_value_rejects_objects():
    """A value that has no CouchDB encoding is a TypeError naming the parameter."""
    with pytest.raises(TypeError, match="limit"):
        encode_value("limit", object())


@pytest.mark.parametrize(
    "since, sent",
    [
        ("10-g1AAAACbeJzLYWBgYMpgTmEQ_-/=", "10-g1AAAACbeJzLYWBgYMpgTmEQ_-/="),
        ("now", "now"),
        (0, "0"),
        (42, "42"),
    ],
)
def test_since_is_sent_verbatim(since, sent):
    """since goes out exactly as given: opaque strings untouched, integers as numbers."""
    assert ("since", sent) in feed_request("normal", since).query


def test_since_omitted():
    """Without since, no since parameter is sent and the server starts at 0."""
    assert [k for k, _ in feed_request("normal").query] == ["feed"]


@pytest.mark.parametrize("since", [True, 1.5, {"a": 1}, b"1-x"])
def test_since_bad_types(since):
    """A since that is not a string or an int is a TypeError."""
    with pytest.raises(TypeError):
        feed_request("normal", since)


def test_booleans_and_passthrough():
    """Booleans become true/false, unknown parameters pass unchanged, None is left out."""
    r = feed_request(
        "normal",
        None,
        {"include_docs": True, "descending": False, "limit": 2, "new_thing": "x", "style": None},
    )
    assert r.method == "GET" and r.body is None
    assert r.query == [
        ("feed", "normal"),
        ("include_docs", "true"),
        ("descending", "false"),
        ("limit", "2"),
        ("new_thing", "x"),
    ]


def test_filter_name_alias_and_query_params():
    """filter_name is an alias of filter and extra parameters follow for the filter."""
    r = feed_request("normal", 0, {"filter_name": "app/by_type", "type": "fruit"})
    assert r.query == [("feed", "normal"), ("since", "0"), ("filter", "app/by_type"), ("type", "fruit")]
    assert feed_request("normal", 0, {"filter": "app/by_type", "type": "fruit"}).query == r.query


def test_filter_and_alias_disagree():
    """Giving filter and filter_name with different values is a ValueError."""
    with pytest.raises(ValueError):
        feed_request("normal", None, {"filter": "a/b", "filter_name": "c/d"})


@pytest.mark.parametrize("name", ["nofilter", "/x", "x/", "", "_bogus"])
def test_malformed_filter_name(name):
    """A filter name without ddoc/name form that is no built-in is refused before any request."""
    with pytest.raises(ValueError, match="filter"):
        feed_request("normal", None, {"filter_name": name})


def test_doc_ids_become_a_post():
    """doc_ids= sends filter=_doc_ids with the ids in a POST body."""
    r = feed_request("longpoll", "now", {"doc_ids": ["a", "b"]})
    assert r.method == "POST"
    assert r.body == {"doc_ids": ["a", "b"]}
    assert ("filter", "_doc_ids") in r.query


def test_selector_with_fields_becomes_a_post():
    """selector= sends filter=_selector with selector and fields in a POST body."""
    r = feed_request("normal", None, {"selector": {"type": "fruit"}, "fields": ["name"]})
    assert r.method == "POST"
    assert r.body == {"selector": {"type": "fruit"}, "fields": ["name"]}
    assert ("filter", "_selector") in r.query


def test_view_sets_filter_view():
    """view= sends filter=_view&view=ddoc/view."""
    r = feed_request("continuous", None, {"view": "app/by_type"})
    assert ("filter", "_view") in r.query and ("view", "app/by_type") in r.query


@pytest.mark.parametrize(
    "params",
    [
        {"filter": "_doc_ids"},
        {"filter": "_selector"},
        {"filter": "_view"},
        {"view": "noslash"},
        {"fields": ["a"]},
        {"doc_ids": ["a"], "filter": "app/f"},
        {"selector": {"a": 1}, "filter": "_doc_ids"},
        {"feed": "continuous"},
    ],
)
def test_contradictions_refused(params):
    """Built-in filters without their argument and contradicting arguments are ValueErrors."""
    with pytest.raises(ValueError):
        feed_request("normal", None, params)


def test_doc_ids_must_be_a_list_of_str():
    """doc_ids given as one string (a common slip) is a TypeError."""
    with pytest.raises(TypeError):
        feed_request("normal", None, {"doc_ids": "abc"})


@pytest.mark.parametrize(
    "heartbeat, sent", [(True, "true"), (1000, "1000"), (False, None), (None, None)]
)
def test_heartbeat(heartbeat, sent):
    """heartbeat=True asks for the default interval, an int is milliseconds, False omits it."""
    q = dict(feed_request("continuous", None, {"heartbeat": heartbeat}).query)
    assert q.get("heartbeat") == sent


def test_design_filter():
    """filter_name='_design' is a built-in filter sent as it is."""
    assert ("filter", "_design") in feed_request("normal", None, {"filter_name": "_design"}).query


def test_unknown_feed():
    """Only normal, longpoll and continuous feeds are built."""
    with pytest.raises(ValueError):
        feed_request("eventsource")
