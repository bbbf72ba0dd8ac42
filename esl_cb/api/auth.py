"""Bearer tokens and roles: who may do what, and how often.

Roles: `booking` (a website or CRM) books callbacks and sees only its own; `agent` sees and sets
its own agent; `supervisor` sees and acts on every callback, queue and agent; `admin` as a
supervisor (and, by the command line, manages tokens). A valid token over its rate is refused with
429 too_many_requests and Retry-After."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from esl_cb.app.tokens import TokenService
from esl_cb.db.api_records import Token

from .errors import Forbidden, TooManyRequests, Unauthenticated

OVERSEERS = ("supervisor", "admin")
bearer = HTTPBearer(auto_error=False, description="A token made with `esl-cb token create NAME --role ROLE`.")
CACHE_SEC = 2.0              # a revoked token is refused within this long


@dataclass(frozen=True)
class Caller:
    """The token behind a request."""

    token: Token

    @property
    def role(self) -> str:
        return self.token.role

    @property
    def operator(self) -> str:
        """Who did it, in the audit log."""
        return f"token:{self.token.name}"[:64]

    @property
    def oversees(self) -> bool:
        return self.role in OVERSEERS

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"a {self.role} token may not do this (it takes a {' or '.join(roles)} token)")

    def require_agent(self, name: str) -> None:
        """An agent token acts on its own agent only; overseers on any."""
        if self.oversees:
            return
        if self.role != "agent" or self.token.agent != name:
            raise Forbidden(f"this {self.role} token may not see or change agent {name!r}")


class RateLimiter:
    """A token bucket per token: `rate` requests a second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[int, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, token_id: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        with self.lock:
            level, at = self.buckets.get(token_id, (float(self.burst), now))
            level = min(float(self.burst), level + (now - at) * self.rate)
            if level < 1.0:
                self.buckets[token_id] = (level, now)
                raise TooManyRequests(f"more than {self.rate:g} requests a second (bursts of {self.burst}) with this "
                                      "token", retry_after=(1.0 - level) / self.rate)
            self.buckets[token_id] = (level - 1.0, now)


class Authenticator:
    def __init__(self, tokens: TokenService, limiter: RateLimiter) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.cache: dict[str, tuple[float, Token | None]] = {}
        self.lock = threading.Lock()

    def __call__(self, credentials: HTTPAuthorizationCredentials | None) -> Caller:
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise Unauthenticated("send the header Authorization: Bearer <token> (esl-cb token create)")
        token = self._lookup(credentials.credentials)
        if token is None:
            raise Unauthenticated("the bearer token is not valid: never issued, or revoked (esl-cb token list)")
        self.limiter.take(token.id)
        return Caller(token)

    def _lookup(self, secret: str) -> Token | None:
        now = time.monotonic()
        with self.lock:
            kept = self.cache.get(secret)
        if kept is not None and now - kept[0] < CACHE_SEC:
            return kept[1]
        token = self.tokens.authenticate(secret)
        with self.lock:
            if len(self.cache) > 10_000:          # guessed secrets must not grow it without end
                self.cache.clear()
            self.cache[secret] = (now, token)
        return token


def current_caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """The dependency of every route: the token of the request, or 401 / 429."""
    return request.app.state.services.auth(credentials)
