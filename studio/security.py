"""The locked door: what a visitor who has not signed in can learn, and how fast they may guess.

Gradio checks the login on its data routes, but its page and a few open routes still describe
the whole API (``window.gradio_api_info`` in ``GET /`` lists every endpoint with parameters,
defaults and install paths; FastAPI serves ``/openapi.json``), and its ``/login`` takes any
number of guesses. `LockedDoor` is a plain ASGI middleware (no Gradio import) that, when a
login is required and the request carries no valid session:

- strips the API description from every HTML page and refuses the description routes (401);
- slows failed sign-ins per client: after `free_failures` wrong passwords a client waits
  (doubling, up to `max_wait_s`) before it may try again, right password or not, and gets
  ``429 Too Many Requests`` with ``Retry-After`` meanwhile. A success clears its record.

The client is the peer address, or for requests through a loopback proxy (Gradio's share
tunnel) the last ``X-Forwarded-For`` address (the one the proxy saw).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from typing import Any

# Routes that describe the API. Gradio's own (`/gradio_api/info`, its `openapi.json`) already
# check the login; these are refused here too, so no version of Gradio can reopen them.
DESCRIBING = ("/openapi.json", "/docs", "/redoc", "/info", "/gradio_api/info",
              "/gradio_api/openapi.json", "/gradio_api/api_info", "/config/info", "/api/info")
_API_INFO = re.compile(rb"window\.gradio_api_info\s*=\s*.*?;\s*</script>", re.S)
_EMPTY_INFO = b"window.gradio_api_info = null;</script>"


def is_loopback(host: str | None) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return True
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class LoginThrottle:
    """Failed sign-ins per client, and how long each must wait before the next try."""

    def __init__(self, free_failures: int = 5, base_wait_s: float = 1.0,
                 max_wait_s: float = 300.0, clock: Any = time.monotonic):
        self.free_failures = free_failures
        self.base_wait_s = base_wait_s
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (count, last failure)

    def wait_s(self, client: str) -> float:
        """Seconds `client` must still wait before its next sign-in attempt (0: may try)."""
        with self._lock:
            count, last = self._failures.get(client, (0, 0.0))
        if count < self.free_failures:
            return 0.0
        wait = min(self.max_wait_s, self.base_wait_s * 2 ** (count - self.free_failures))
        return max(0.0, last + wait - self.clock())

    def failed(self, client: str) -> None:
        with self._lock:
            count, _ = self._failures.get(client, (0, 0.0))
            self._failures[client] = (count + 1, self.clock())
            if len(self._failures) > 10_000:  # bounded: forget the oldest
                oldest = sorted(self._failures.items(), key=lambda kv: kv[1][1])[:5000]
                for k, _ in oldest:
                    self._failures.pop(k, None)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def client_of(scope: dict[str, Any]) -> str:
    peer = (scope.get("client") or ("", 0))[0] or ""
    if is_loopback(peer):
        for k, v in scope.get("headers") or []:
            if k == b"x-forwarded-for":
                # the last address is the one the proxy itself saw; earlier ones are whatever
                # the client wrote, and would let it pose as a new client at every guess
                return v.decode("latin-1").split(",")[-1].strip() or peer
    return peer


class LockedDoor:
    """ASGI middleware; pass it to the Gradio app with ``app_kwargs={"middleware": [...]}``.

    It reads the login state from the Gradio app in ``scope["app"]`` (its ``auth``, session
    ``tokens`` and ``cookie_id``), so it needs nothing at construction."""

    def __init__(self, app: Any, throttle: LoginThrottle | None = None):
        self.app = app
        self.throttle = throttle or LoginThrottle()

    @staticmethod
    def _signed_in(scope: dict[str, Any]) -> bool | None:
        """None when no login is required; else whether the request has a valid session."""
        gapp = scope.get("app")
        if gapp is None or (getattr(gapp, "auth", None) is None
                            and getattr(gapp, "auth_dependency", None) is None):
            return None
        cookie_id = getattr(gapp, "cookie_id", "")
        names = {f"access-token-{cookie_id}".encode(),
                 f"access-token-unsecure-{cookie_id}".encode()}
        tokens = getattr(gapp, "tokens", {}) or {}
        for k, v in scope.get("headers") or []:
            if k != b"cookie":
                continue
            for part in v.split(b";"):
                name, _, value = part.strip().partition(b"=")
                if name in names and value.decode("latin-1") in tokens:
                    return True
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        signed_in = self._signed_in(scope)
        if signed_in is None or signed_in:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        root = (scope.get("root_path") or "").rstrip("/")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path.rstrip("/") in DESCRIBING:
            return await _respond(send, 401, {"detail": "Not authenticated"})
        if path.rstrip("/") == "/login" and scope.get("method") == "POST":
            return await self._login(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD"):
            return await self._strip_api_info(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _login(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = client_of(scope)
        wait = self.throttle.wait_s(client)
        if wait > 0:
            return await _respond(send, 429, {"detail": f"Too many failed sign-ins; try again "
                                                        f"in {wait:.0f} s."},
                                  [(b"retry-after", str(max(1, round(wait))).encode())])
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] == 200:
            self.throttle.succeeded(client)
        elif status and status[0] in (400, 401, 403):
            self.throttle.failed(client)

    async def _strip_api_info(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start: dict[str, Any] = {}
        body: list[bytes] = []
        html = False

        async def buffer(message: dict[str, Any]) -> None:
            nonlocal html
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                html = headers.get(b"content-type", b"").startswith(b"text/html")
                if not html:
                    return await send(message)
                start.update(message)
                return None
            if message["type"] == "http.response.body" and html:
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    data = _API_INFO.sub(_EMPTY_INFO, b"".join(body))
                    headers = [(k, v) for k, v in start.get("headers", [])
                               if k != b"content-length"]
                    headers.append((b"content-length", str(len(data)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": data})
                return None
            return await send(message)

        await self.app(scope, receive, buffer)


async def _respond(send: Any, status: int, payload: dict[str, Any],
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})
