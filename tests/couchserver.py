"""Start and stop the project's CouchDB-compatible test server.

The server lives in ``testserver/`` (Node.js, PouchDB in memory; see its
README). Tests start it with :func:`start`, which runs
``node testserver/server.js --port 0`` and waits for the single
``listening http://HOST:PORT/`` line it prints once it accepts requests.
Everything here is synchronous (``subprocess`` and ``urllib``) so it can be
used from fixtures without a reactor.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_ADMIN",
    "RunningServer",
    "TestServerError",
    "ensure_installed",
    "start",
]

ROOT = Path(__file__).resolve().parent.parent
SERVER_DIR = ROOT / "testserver"
DEFAULT_ADMIN = ("admin", "secret")
#: The HS256 key the server checks bearer tokens with (CouchDB's JWT
#: authentication); see :func:`jwt`.
DEFAULT_JWT_SECRET = "test-jwt-secret"
START_TIMEOUT = 15.0
_LISTENING = re.compile(rb"^listening (http://\S+?:(\d+)/)\s*$")

_running: set["RunningServer"] = set()


class TestServerError(RuntimeError):
    """The test server is not installed, did not start, or did not stop."""

    __test__ = False  # not a test class, despite the name


def ensure_installed() -> str:
    """Return the path of ``node``; fail clearly if anything is missing.

    The packages are never installed from here: the test command runs
    ``npm ci --prefix testserver`` first.
    """
    node = shutil.which("node")
    if node is None:
        raise TestServerError(
            "`node` (Node.js 18 or newer) is not on PATH; the CouchDB-compatible "
            "test server needs it. Install Node.js, then run "
            "`npm ci --prefix testserver`."
        )
    if not (SERVER_DIR / "node_modules").is_dir():
        raise TestServerError(
            "testserver/node_modules is missing: run `npm ci --prefix testserver` "
            "(from the repository root) before the tests."
        )
    return node


@dataclass(eq=False)
class RunningServer:
    """A started test server; stop it with :meth:`stop`."""

    port: int
    admin: tuple[str, str] | None
    process: subprocess.Popen[bytes]
    _stderr: IO[bytes] = field(repr=False)
    jwt_secret: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        """Base URL without credentials, ending in ``/``."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def admin_url(self) -> str:
        """Base URL with the admin's credentials in it, ending in ``/``."""
        if self.admin is None:
            return self.url
        name, password = (urllib.parse.quote(part, safe="") for part in self.admin)
        return f"http://{name}:{password}@127.0.0.1:{self.port}/"

    def auth_header(self) -> dict[str, str]:
        if self.admin is None:
            return {}
        token = base64.b64encode(":".join(self.admin).encode()).decode()
        return {"Authorization": "Basic " + token}

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """Send one admin request and return ``(status, decoded JSON body)``.

        HTTP error statuses are returned, not raised.
        """
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **self.auth_header()}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.url + path.lstrip("/"), data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        return status, json.loads(raw) if raw else None

    def create_db(self, name: str) -> None:
        status, body = self.request("PUT", urllib.parse.quote(name, safe=""))
        if status != 201:
            raise TestServerError(f"PUT /{name} answered {status}: {body}")

    def delete_db(self, name: str) -> None:
        """Delete a database; a missing one is fine."""
        status, body = self.request("DELETE", urllib.parse.quote(name, safe=""))
        if status not in (200, 404):
            raise TestServerError(f"DELETE /{name} answered {status}: {body}")

    def stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server by its pid, wait, and SIGKILL it if it lingers."""
        _running.discard(self)
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(
    admin: tuple[str, str] | None = DEFAULT_ADMIN,
    *,
    jwt_secret: str | None = DEFAULT_JWT_SECRET,
    session_timeout: int | None = None,
    log: bool = False,
    timeout: float = START_TIMEOUT,
) -> RunningServer:
    """Start a fresh, empty server on a free port of 127.0.0.1.

    With ``admin`` (the default) databases are admin-only as on CouchDB 3;
    ``admin=None`` runs it in "admin party" mode. ``log=True`` makes the
    server write one line per request to its stderr (see
    :meth:`RunningServer.stderr_text`). ``session_timeout`` is the lifetime
    of a cookie session in seconds (CouchDB's ``[chttpd_auth] timeout``,
    600 by default).
    """
    node = ensure_installed()
    args = [node, str(SERVER_DIR / "server.js"), "--port", "0", "--host", "127.0.0.1"]
    if admin is not None:
        args += ["--admin", f"{admin[0]}:{admin[1]}"]
    if jwt_secret is not None:
        args += ["--jwt-secret", jwt_secret]
    if session_timeout is not None:
        args += ["--session-timeout", str(session_timeout)]
    if log:
        args.append("--log")
    # A file, not a pipe: nobody drains stderr while the server runs.
    stderr = tempfile.TemporaryFile()
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
        cwd=str(SERVER_DIR),
    )
    server = RunningServer(0, admin, process, stderr, jwt_secret)
    try:
        line = _read_line(process, timeout)
    except TestServerError as err:
        text = server.stderr_text()
        server.stop()
        raise TestServerError(f"{err}; stderr:\n{text}") from None
    except BaseException:
        server.stop()
        raise
    match = _LISTENING.match(line)
    if match is None:
        text = server.stderr_text()
        server.stop()
        raise TestServerError(
            f"test server printed {line!r} instead of its listening line; "
            f"stderr:\n{text}"
        )
    server.port = int(match.group(2))
    _running.add(server)
    return server


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestServerError(
                f"test server (pid {process.pid}) printed no listening line "
                f"within {timeout:.0f} s"
            )
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            data = os.read(fd, 4096)
            if not data:
                break
            buf += data
        elif process.poll() is not None:
            break
    if b"\n" not in buf:
        process.wait(timeout=5)
        raise TestServerError(
            f"test server exited with status {process.returncode} before listening"
        )
    return buf.split(b"\n", 1)[0]


@atexit.register
def _stop_leftovers() -> None:
    # A crashed session must not leave servers behind; each is stopped by pid.
    for server in list(_running):
        server.stop()


def jwt(secret: str, sub: str, roles: list[str] | None = None, expires_in: float | None = 300.0) -> str:
    """An HS256 JSON Web Token as CouchDB's JWT authentication takes it."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims: dict[str, Any] = {"sub": sub}
    if roles is not None:
        claims["_couchdb.roles"] = roles
    if expires_in is not None:
        claims["exp"] = int(time.time() + expires_in)
    signed = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + part(signature)
