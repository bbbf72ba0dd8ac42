"""The FastAPI application of `esl-cb api`: the routes, every error as an RFC 9457 problem document
(application/problem+json, with the stable code of esl_cb/domain/errors.py), a bounded request
body, and the background work (the event listener, the webhooks' delivery) for its lifetime."""
from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from esl_cb.app import AgentService
from esl_cb.app.changes import CallbackChanges, CallerIds
from esl_cb.app.tokens import TokenService
from esl_cb.db.api_records import ApiRecords
from esl_cb.db.store import NotFound, Store, make_engine
from esl_cb.domain.errors import EslCbError, InvalidInput

from . import callbacks, queues
from .auth import Authenticator, RateLimiter
from .errors import MethodNotAllowed, RequestTooLarge, TooManyRequests, Unauthenticated
from .settings import ApiSettings
from .views import ApiCallbacks, Services

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024            # a booking is well under 8 KiB (its data at most 4 KiB)
PROBLEM = "application/problem+json"


def build_services(settings: ApiSettings, store: Store | None = None) -> Services:
    if store is None:
        # At most db_connections statements of this worker at once: PostgreSQL's CPU is shared with the
        # controllers' statements, and each connection is one more runnable backend beside theirs.
        n = settings.db_connections
        store = Store(make_engine(settings.shared.db, pool_size=min(n, 10), max_overflow=n - min(n, 10)), "api")
    tokens = TokenService(store)
    return Services(settings, store, ApiCallbacks(store, settings.shared.policy(), settings.shared.region),
                    CallbackChanges(store), CallerIds(store, settings.shared.region), AgentService(store), tokens,
                    ApiRecords(store.engine), Authenticator(tokens, RateLimiter(settings.rate_limit, settings.rate_burst)))


def create_app(settings: ApiSettings, store: Store | None = None, background: bool = True) -> FastAPI:
    """The application; `background` False leaves out the event listener and the webhooks' loop."""
    svc = build_services(settings, store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from .events import EventHub
        from .webhooks import Deliverer

        app.state.hub = EventHub(settings.shared.db, svc) if background else None
        deliverer = Deliverer(svc) if background else None
        if app.state.hub is not None:
            app.state.hub.listeners.append(deliverer.on_event)
            app.state.hub.start()
        if deliverer is not None:
            deliverer.start()
        try:
            yield
        finally:
            if deliverer is not None:
                deliverer.stop()
            if app.state.hub is not None:
                app.state.hub.stop()
            svc.store.close()

    app = FastAPI(title="esl-cb", version="1", lifespan=lifespan, openapi_url="/api/v1/openapi.json",
                  docs_url=None, redoc_url=None,           # both would load their scripts from a CDN
                  description="Queued callbacks for FreeSWITCH contact centres: book, follow and cancel callbacks, "
                              "watch queues and agents. Every error is an RFC 9457 problem document "
                              "(application/problem+json) with a stable `code`.")
    app.state.services = svc
    app.state.hub = None
    app.include_router(callbacks.router)
    app.include_router(queues.router)
    from . import events, pages
    app.include_router(events.router)
    pages.mount(app)
    _problems(app)
    app.add_middleware(Unexpected)
    app.add_middleware(BodyLimit)
    return app


def problem_response(request: Request, error: EslCbError) -> JSONResponse:
    doc = error.problem()
    doc["instance"] = request.url.path
    headers = {}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="esl-cb"'
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(max(1, round(error.retry_after + 0.5)))
    return JSONResponse(doc, error.http_status, headers=headers, media_type=PROBLEM)


def _problems(app: FastAPI) -> None:
    @app.exception_handler(EslCbError)
    async def domain_error(request: Request, error: EslCbError):
        if error.http_status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, error)
        return problem_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = []
        where = ""
        for e in error.errors():
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
            field = ".".join(loc) or "body"
            where = where or field
            problems.append(f"{field}: {e.get('msg', 'invalid')}")
        return problem_response(request, InvalidInput("; ".join(problems), where=where))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            return problem_response(request, NotFound(f"nothing at {request.url.path} (see /api/v1/openapi.json)"))
        if error.status_code == 405:
            return problem_response(request, MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        doc = {"type": "about:blank", "title": str(error.detail), "status": error.status_code, "code": "error",
               "detail": str(error.detail), "instance": request.url.path}
        return JSONResponse(doc, error.status_code, media_type=PROBLEM)



class Unexpected:
    """Any other failure is a 500 problem document, logged, and the connection stays usable. (An
    exception_handler(Exception) answers too, but Starlette raises the error again after it, and
    uvicorn then drops the keep-alive connection: a client's retry on it is reset.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)
        try:
            await self.app(scope, receive, watched)
        except Exception as error:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            problem = EslCbError(f"{type(error).__name__}: the API could not do it (see its log)").problem()
            problem["instance"] = scope.get("path", "")
            body = json.dumps(problem).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse a request body over MAX_BODY bytes (413 request_too_large), declared or streamed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return await self._refuse(scope, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise _TooLarge()
            return message
        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, send)

    @staticmethod
    async def _refuse(scope, send) -> None:
        error = RequestTooLarge(f"the body is over {MAX_BODY} bytes (a booking's data may hold {4096})")
        doc = error.problem()
        doc["instance"] = scope.get("path", "")
        body = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
