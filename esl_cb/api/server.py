"""Serving the API with uvicorn: one process (the event listener, the rate limits and the webhooks'
loop are per process), TLS when a certificate is given, the proxy's X-Forwarded-* headers trusted
only behind one."""
from __future__ import annotations

import logging
import os

import uvicorn

from .app import create_app
from .settings import ApiSettings

log = logging.getLogger(__name__)


def serve(settings: ApiSettings, log_level: str = "info") -> None:
    more = settings.nice - os.nice(0)
    if more > 0:
        os.nice(more)                             # threads started later (the pools') inherit it
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level.lower(),
                            ssl_certfile=settings.tls_cert or None, ssl_keyfile=settings.tls_key or None,
                            proxy_headers=settings.behind_proxy,
                            forwarded_allow_ips=settings.forwarded_allow_ips if settings.behind_proxy else None,
                            timeout_graceful_shutdown=3, server_header=False, access_log=False)
    log.info("settings: listen %s, db %s, region %s, tls %s, behind proxy %s, rate %g/s (bursts %d) per token, "
             "nice %d", settings.listen, settings.shared.masked()["db"], settings.shared.region,
             "yes" if settings.tls else "no", "yes" if settings.behind_proxy else "no", settings.rate_limit,
             settings.rate_burst, settings.nice)
    scheme = "https" if settings.tls else "http"
    log.info("esl-cb api on %s://%s (pages at /ui/supervisor, OpenAPI at /api/v1/openapi.json)", scheme,
             settings.listen)
    uvicorn.Server(config).run()
