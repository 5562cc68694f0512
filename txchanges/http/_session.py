"""
CouchDB's cookie authentication, for a :class:`~txchanges.Server` made with
``auth="session"``: log in once with ``POST /_session``, send the
``AuthSession`` cookie with every request and feed connection, take the
renewed cookie CouchDB sends in ``Set-Cookie`` (on requests made after 10%
of the session's lifetime), and, when a request is refused with 401 (the
session expired, or the server restarted with a new secret), log in again
once and send it again. A 401 after that, or on the login itself, is the
request's answer: wrong credentials are not retried.

The password is kept in memory only: it is sent in the body of the login
request and nowhere else, and no ``repr``, log event or error holds it. The
cookie, a credential too, is never logged either.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from txchanges.errors import UnexpectedResponse
from txchanges.http._urls import ServerURL

__all__ = ["AUTH_MODES", "CookieSession", "authenticated", "cookie_session", "session_cookie"]

#: The values of ``Server(auth=...)``.
AUTH_MODES = ("basic", "session")

#: The path of CouchDB's session endpoint, below the server's URL.
SESSION_PATH = "_session"

_COOKIE_NAME = b"AuthSession"

Send = Callable[[Headers], Awaitable[IResponse]]
Discard = Callable[[IResponse], Awaitable[object]]
LogIn = Callable[[dict[str, str]], Awaitable[IResponse]]


def session_cookie(headers: Headers) -> Optional[bytes]:
    """
    The ``AuthSession`` cookie a response sets.

    :return: Its value, ``b""`` when the response clears it (a logout), or
        ``None`` when the response sets none.
    """
    found: Optional[bytes] = None
    for raw in headers.getRawHeaders(b"set-cookie", []):
        name, sep, value = raw.split(b";", 1)[0].partition(b"=")
        if sep and name.strip() == _COOKIE_NAME:
            found = value.strip().strip(b'"')
    return found


def _with_cookie(headers: Headers, cookie: bytes) -> Headers:
    sent = headers.copy()
    sent.setRawHeaders(b"Cookie", [_COOKIE_NAME + b"=" + cookie])
    return sent


class CookieSession:
    """
    The session of one user on one server.

    :param user: The user name.
    :param password: The password, sent in the login request only.
    :param where: The server's URL, without credentials, for the log.
    :param log_in: Sends ``POST /_session`` with the given JSON body,
        without a cookie, and returns the response once its status is
        known to be a success; it fails with the request's error
        (:class:`~txchanges.errors.Unauthorized` for wrong credentials).
    :param discard: Reads a response's body and forgets it.

    :ivar user: The user name.
    :ivar logins: How many logins succeeded.
    :ivar renewals: How many renewed cookies the server sent.
    """

    log = Logger()

    def __init__(self, user: str, password: str, where: str, log_in: LogIn, discard: Discard) -> None:
        self.user = user
        self._password = password
        self._where = where
        self._log_in = log_in
        self._discard = discard
        self._cookie: Optional[bytes] = None
        self._waiters: Optional[list[Deferred[bytes]]] = None
        self.logins = 0
        self.renewals = 0

    def __repr__(self) -> str:
        return f"<CookieSession {self._where} user={self.user!r} logins={self.logins} renewals={self.renewals}>"

    async def send(self, headers: Headers, send: Send) -> IResponse:
        """
        Send a request with the session's cookie, logging in first when
        there is none, and once more after a 401.

        :param headers: The request's headers, without a cookie.
        :param send: Sends the request with the headers given, and returns
            the response whatever its status.
        :return: The response: a 401 only when the request was refused
            again with a fresh cookie.
        """
        cookie = await self._current()
        response = await send(_with_cookie(headers, cookie))
        self.take(response.headers)
        if response.code != 401:
            return response
        await self._discard(response)
        cookie = await self._fresh(cookie)
        response = await send(_with_cookie(headers, cookie))
        self.take(response.headers)
        return response

    def take(self, headers: Headers) -> None:
        """
        Keep the cookie a response sets: CouchDB renews it in the answers to
        requests made after 10% of the session's lifetime.
        """
        cookie = session_cookie(headers)
        if cookie is None or cookie == self._cookie:
            return
        if not cookie:
            self._cookie = None
            return
        self._cookie = cookie
        self.renewals += 1
        self.log.debug("session cookie of {user} on {url} renewed", user=self.user, url=self._where)

    def _current(self) -> "Deferred[bytes]":
        if self._cookie is not None:
            return succeed(self._cookie)
        return self._login()

    def _fresh(self, refused: bytes) -> "Deferred[bytes]":
        """
        A cookie newer than *refused*: one another request already got, or
        a new login's.
        """
        if self._cookie is not None and self._cookie != refused:
            return succeed(self._cookie)
        self._cookie = None
        self.log.info("session of {user} on {url} refused (expired): logging in again", user=self.user, url=self._where)
        return self._login()

    def _login(self) -> "Deferred[bytes]":
        """
        Log in, or wait for the login already running.

        :return: A Deferred of its own for each caller (cancelling it leaves
            the login running for the others), firing with the new cookie.
        """
        waiter: Deferred[bytes] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        Deferred.fromCoroutine(self._log_in_now()).addBoth(self._logged_in)
        return waiter

    async def _log_in_now(self) -> bytes:
        response = await self._log_in({"name": self.user, "password": self._password})
        cookie = session_cookie(response.headers)
        await self._discard(response)
        if not cookie:
            raise UnexpectedResponse(
                response.code, "POST", self._where + SESSION_PATH, None,
                "the login succeeded but set no AuthSession cookie",
            )
        return cookie

    def _logged_in(self, result: Any) -> None:
        waiters, self._waiters = self._waiters or [], None
        if not isinstance(result, Failure):
            self._cookie = result
            self.logins += 1
            self.log.info("logged in to {url} as {user}", url=self._where, user=self.user)
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


async def authenticated(session: Optional[CookieSession], headers: Headers, send: Send) -> IResponse:
    """
    Send a request, through *session* when there is one.

    :return: The response, whatever its status.
    """
    if session is None:
        return await send(headers)
    return await session.send(headers, send)


def cookie_session(
    auth: Optional[str], url: ServerURL, authorization: Any, log_in: LogIn, discard: Discard
) -> Optional[CookieSession]:
    """
    The session of ``Server(auth=...)``, or ``None`` for basic auth.

    :raises ValueError: for an unknown *auth*, *auth* with an
        authorization function, or ``"session"`` without credentials.
    """
    if auth is None:
        return None
    if auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(repr(m) for m in AUTH_MODES)}, not {auth!r}")
    if authorization is not None:
        raise ValueError("auth chooses how credentials are sent; an authorization function sends its own header")
    if auth == "basic":
        return None
    if url.credentials is None:
        raise ValueError("auth='session' needs credentials: user:password@ in the URL, or the credentials argument")
    user, password = url.credentials
    return CookieSession(user, password, url.base, log_in, discard)
