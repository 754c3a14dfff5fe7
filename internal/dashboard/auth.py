"""Dashboard sessions and CSRF tokens.

With ``API_TOKEN`` set, the login form exchanges the token for a session cookie
(``Secure; HttpOnly; SameSite=Strict``, path ``/dashboard``) signed with a key derived
from the token, so changing the token ends every session. Without ``API_TOKEN`` the
dashboard is open, like the API, and a fresh session is issued on the first page.
Every POST action carries a CSRF token bound to the session's nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

__all__ = ["COOKIE", "SESSION_SECONDS", "Session", "Sessions"]

COOKIE = "tasksys_dashboard"
#: How long a login lasts.
SESSION_SECONDS = 12 * 3600
_OPEN_KEY = b"tasksys dashboard: no API_TOKEN, open mode"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    """A valid session: its nonce binds the CSRF token."""

    nonce: str
    issued: int


class Sessions:
    """Issue and check session cookies and CSRF tokens for one token (or none)."""

    def __init__(self, token: str | None) -> None:
        self.token = token.encode() if token else None
        self.key = (
            hmac.new(self.token, b"tasksys dashboard session v1", hashlib.sha256).digest()
            if self.token
            else _OPEN_KEY
        )

    @property
    def open(self) -> bool:
        """True when no API_TOKEN is set: no login needed."""
        return self.token is None

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison of a login form's token with API_TOKEN."""
        if self.token is None:
            return True
        return hmac.compare_digest(given.encode()[:4096], self.token)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue(self, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(24), int(now if now is not None else time.time()))
        payload = f"{session.issued}.{session.nonce}"
        return session, f"{payload}.{self._sign(payload)}"

    def check(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie value carries, or ``None`` if it is missing, forged or expired."""
        if not cookie or len(cookie) > 200:
            return None
        issued, _, rest = cookie.partition(".")
        nonce, _, signature = rest.partition(".")
        if not issued.isdigit() or not nonce or not signature:
            return None
        if not hmac.compare_digest(signature, self._sign(f"{issued}.{nonce}")):
            return None
        age = (now if now is not None else time.time()) - int(issued)
        if age < -60 or age > SESSION_SECONDS:
            return None
        return Session(nonce, int(issued))

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of a session (what every form sends back)."""
        return self._sign(f"csrf.{session.nonce}")

    def csrf_matches(self, session: Session, given: str | None) -> bool:
        """True if ``given`` is the session's CSRF token (constant time)."""
        return bool(given) and hmac.compare_digest(str(given), self.csrf_token(session))
