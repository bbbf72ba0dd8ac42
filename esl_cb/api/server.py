"""Serving the API with uvicorn: TLS when a certificate is given, the proxy's X-Forwarded-* headers
trusted only behind one, and `workers` processes (uvicorn's: they share the listening socket).

Each worker is a whole API: its own pool, its own event listener (one LISTEN session each; the
events' ids come from the database, the same in every worker, so a reconnect may land on any),
its own webhooks' loop (deliveries are leased in the database: none is sent twice at once). The
per-token rate limit is kept per worker with the limit divided (rate / workers, bursts of
ceil(burst / workers)): together they never let a token past its limit, and a client whose
requests all reach one worker (one keep-alive connection) gets that worker's share."""
from __future__ import annotations

import base64
import logging
import math
import os
import pickle
from dataclasses import replace

import uvicorn

from .app import create_app
from .settings import ApiSettings

log = logging.getLogger(__name__)
WORKER_SETTINGS = "ESL_CB_API_WORKER_SETTINGS"      # the settings handed to each worker process


def worker_share(settings: ApiSettings) -> ApiSettings:
    """One worker's settings: its share of the per-token rate limit."""
    n = max(settings.workers, 1)
    if n == 1 or not settings.rate_limit:
        return settings
    return replace(settings, rate_limit=settings.rate_limit / n, rate_burst=max(1, math.ceil(settings.rate_burst / n)))


def worker_app():
    """The application of one worker process (uvicorn's factory), from the settings serve() left."""
    settings = pickle.loads(base64.b64decode(os.environ[WORKER_SETTINGS]))
    return create_app(worker_share(settings))


def serve(settings: ApiSettings, log_level: str = "info") -> None:
    more = settings.nice - os.nice(0)
    if more > 0:
        os.nice(more)                             # threads and workers started later inherit it
    common = dict(host=settings.host, port=settings.port, log_level=log_level.lower(),
                  ssl_certfile=settings.tls_cert or None, ssl_keyfile=settings.tls_key or None,
                  proxy_headers=settings.behind_proxy,
                  forwarded_allow_ips=settings.forwarded_allow_ips if settings.behind_proxy else None,
                  timeout_graceful_shutdown=3, server_header=False, access_log=False)
    log.info("settings: listen %s, db %s, region %s, tls %s, behind proxy %s, rate %g/s (bursts %d) per token, "
             "nice %d, workers %d", settings.listen, settings.shared.masked()["db"], settings.shared.region,
             "yes" if settings.tls else "no", "yes" if settings.behind_proxy else "no", settings.rate_limit,
             settings.rate_burst, settings.nice, settings.workers)
    scheme = "https" if settings.tls else "http"
    log.info("esl-cb api on %s://%s (pages at /ui/supervisor, OpenAPI at /api/v1/openapi.json)", scheme,
             settings.listen)
    if settings.workers > 1:
        os.environ[WORKER_SETTINGS] = base64.b64encode(pickle.dumps(settings)).decode()
        uvicorn.run("esl_cb.api.server:worker_app", factory=True, workers=settings.workers, **common)
        return
    uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
