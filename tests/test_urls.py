"""Server URLs, credentials, names and ids as they go on the wire."""

import pytest

from txchanges.http._urls import (
    parse_server_url,
    query_string,
    quote_db_name,
    quote_doc_id,
    redact,
    validate_db_name,
)


@pytest.mark.parametrize(
    "url, base, host, port, creds",
    [
        ("http://127.0.0.1:5984/", "http://127.0.0.1:5984/", "127.0.0.1", 5984, None),
        ("http://127.0.0.1:5984", "http://127.0.0.1:5984/", "127.0.0.1", 5984, None),
        ("https://couch.example", "https://couch.example/", "couch.example", 443, None),
        ("http://couch.example/", "http://couch.example/", "couch.example", 80, None),
        (
            "http://admin:s%40cret@localhost:5984/",
            "http://localhost:5984/",
            "localhost",
            5984,
            ("admin", "s@cret"),
        ),
        (
            "http://admin:pw@proxy.example/couch",
            "http://proxy.example/couch/",
            "proxy.example",
            80,
            ("admin", "pw"),
        ),
        ("http://[::1]:5984/", "http://[::1]:5984/", "::1", 5984, None),
    ],
)
def test_parse_server_url(url, base, host, port, creds):
    """A server URL splits into a credential-free base, host, port and credentials."""
    parsed = parse_server_url(url)
    assert (parsed.base, parsed.host, parsed.port, parsed.credentials) == (
        base,
        host,
        port,
        creds,
    )


def test_explicit_credentials_override_url():
    """Credentials given as an argument win over those in the URL."""
    parsed = parse_server_url("http://a:b@h:1/", ("c", "d"))
    assert parsed.credentials == ("c", "d")
    assert parsed.base == "http://h:1/"


@pytest.mark.parametrize(
    "url", ["ftp://h/", "127.0.0.1:5984", "localhost", "http://", "http://h:notaport/", ""]
)
def test_bad_server_url(url):
    """A URL without http/https and a host is a ValueError naming it."""
    with pytest.raises(ValueError) as e:
        parse_server_url(url)
    assert repr(url) in str(e.value) or url == ""


def test_bad_url_message_has_no_password():
    """The ValueError for a bad URL never shows its password."""
    with pytest.raises(ValueError) as e:
        parse_server_url("ftp://admin:topsecret@h/")
    assert "topsecret" not in str(e.value)
    assert "admin" in str(e.value)


def test_repr_has_no_password():
    """The parsed URL's repr names the user but not the password."""
    r = repr(parse_server_url("http://admin:topsecret@h/"))
    assert "topsecret" not in r and "admin" in r


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://a:b@h/x", "http://a:***@h/x"),
        ("http://h/x", "http://h/x"),
        ("http://a@h/", "http://a:***@h/"),
        ("not a url", "not a url"),
    ],
)
def test_redact(url, shown):
    """redact() hides the password of a URL and leaves the rest."""
    assert redact(url) == shown


@pytest.mark.parametrize(
    "name", ["a", "mydb", "a/b", "db_1$()+-/x", "_users", "_replicator", "_global_changes"]
)
def test_valid_db_names(name):
    """Names CouchDB accepts pass validation unchanged."""
    assert validate_db_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "1db", "_foo", "my db", "café", "db.x", "-a"])
def test_invalid_db_names(name):
    """Names CouchDB rejects raise ValueError naming the bad value."""
    with pytest.raises(ValueError) as e:
        validate_db_name(name)
    assert repr(name) in str(e.value)


def test_db_name_type():
    """A database name that is not a str is a TypeError."""
    with pytest.raises(TypeError):
        validate_db_name(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name, quoted",
    [("a/b", "a%2Fb"), ("db$(x)+y", "db%24%28x%29%2By"), ("plain", "plain")],
)
def test_quote_db_name(name, quoted):
    """A database name becomes one path segment, its slashes encoded."""
    assert quote_db_name(name) == quoted


@pytest.mark.parametrize(
    "docid, quoted",
    [
        ("apple", "apple"),
        ("a/b", "a%2Fb"),
        ("café-ümläut", "caf%C3%A9-%C3%BCml%C3%A4ut"),
        ("_design/app", "_design/app"),
        ("_design/a/b", "_design/a%2Fb"),
        ("_local/ckpt", "_local/ckpt"),
        ("_design/", "_design%2F"),
        ("a b?c#d", "a%20b%3Fc%23d"),
    ],
)
def test_quote_doc_id(docid, quoted):
    """Document ids are encoded as one segment, _design/ and _local/ keep their slash."""
    assert quote_doc_id(docid) == quoted


def test_empty_doc_id():
    """An empty document id is refused."""
    with pytest.raises(ValueError):
        quote_doc_id("")


def test_query_string_keeps_opaque_values():
    """Characters with a meaning in a query are encoded so the value arrives unchanged."""
    q = query_string([("since", "4-g1A/=+&x"), ("key", "é")])
    assert q == "since=4-g1A/%3D%2B%26x&key=%C3%A9"
