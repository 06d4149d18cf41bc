"""Who may use ``zq http``: the token, the browser's login session, CSRF, the Host guard.

* **Token mode** (``--token-file``): every route but ``/login`` and ``/static/`` needs
  ``Authorization: Bearer TOKEN`` or the session cookie the login form sets (HttpOnly,
  SameSite=Strict, Secure under TLS, signed with a key derived from the token and a
  per-process secret: a restart logs every browser out).  A browser asking for a page
  without a session is sent to ``/login``; anything else gets 401 JSON.
* **Open mode** (loopback without a token, or ``--insecure``): no login; the Host header
  must name a loopback host when bound to loopback (DNS-rebinding guard).
* **CSRF** in both modes: a POST/PUT/PATCH/DELETE carrying a Bearer token is not
  ambient and passes; otherwise, a request from a browser (it sent ``Origin`` or
  ``Sec-Fetch-Site``) or one riding a session cookie must carry the page's CSRF token
  (``X-CSRF-Token`` header or ``csrf_token`` form field) equal to its ``zq_csrf`` cookie
  (double submit; the cookie is HttpOnly, the pages embed the value).  A plain HTTP
  client in open mode (curl, urllib: no Origin, no cookie) passes, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from typing import Optional

from zq.errors import ConfigError

log = logging.getLogger("zq.http")

SESSION_COOKIE = "zq_session"
CSRF_COOKIE = "zq_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC_PREFIXES = ("/login", "/static/", "/favicon.ico")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in ``path`` (first line, stripped); ConfigError if missing, empty or short."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token must be at least 16 characters "
                          "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--token-file %s is readable by other users (chmod 600 it)", path)
    return token


def check_bind(host: str, token: Optional[str], insecure: bool) -> None:
    """Refuse a non-loopback bind with no token unless ``insecure``."""
    if token is None and not insecure and not is_loopback(host):
        from zq.errors import InsecureBindError

        raise InsecureBindError(
            f"refusing to serve zq http on {host} without authentication: give --token-file FILE "
            "(or --insecure to serve it open anyway)")


@dataclass
class Guard:
    """The security settings of one ``zq http`` process and the checks they imply."""

    token: Optional[str] = None
    loopback: bool = True
    tls: bool = False
    insecure: bool = False
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def open(self) -> bool:
        return self.token is None

    def describe(self) -> dict:
        """The security state the Overview page shows."""
        return {"auth": "token" if self.token else "none", "tls": self.tls,
                "loopback_only": self.loopback, "insecure": self.insecure and not self.loopback}

    # -- the token and the session cookie ---------------------------------------------
    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, authorization: Optional[str]) -> bool:
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        return self.token_ok(authorization[7:].strip())

    def _sign(self, text: str) -> str:
        key = hmac.new(self._key, (self.token or "").encode(), hashlib.sha256).digest()
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: Optional[float] = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        body = f"{expires}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(body)}"

    def session_ok(self, cookie: Optional[str], now: Optional[float] = None) -> bool:
        if self.token is None or not cookie or cookie.count(".") != 2:
            return False
        body, _, sig = cookie.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(body)):
            return False
        try:
            return int(body.split(".")[0]) > (now or time.time())
        except ValueError:
            return False

    # -- requests ----------------------------------------------------------------------
    def authenticated(self, authorization: Optional[str], session: Optional[str]) -> bool:
        return self.open or self.bearer_ok(authorization) or self.session_ok(session)

    def host_ok(self, host_header: Optional[str]) -> bool:
        """Open mode on loopback answers only requests addressed to a loopback name."""
        if not (self.open and self.loopback):
            return True
        if not host_header:
            return True  # HTTP/1.0 without Host: not a browser
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        return name.lower() in LOOPBACK_NAMES or is_loopback(name)

    @staticmethod
    def csrf_ok(method: str, bearer_valid: bool, from_browser: bool, has_session: bool,
                cookie: Optional[str], given: Optional[str]) -> bool:
        if method not in UNSAFE or bearer_valid:
            return True
        if not from_browser and not has_session:
            return True  # a plain HTTP client: no ambient credential to abuse
        return bool(cookie and given and hmac.compare_digest(cookie.encode(), given.encode()))


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
