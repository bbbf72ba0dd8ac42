"""esl-cb api: the HTTP API and the web pages, in a process of their own."""
from __future__ import annotations

import click

from .common import EXIT_USAGE, HOSTPORT, db_option, fail, open_store, setup_logging
from .policy import policy_options
from .running import use_credentials


@click.command()
@click.option("--listen", type=HOSTPORT, envvar="ESL_CB_API_LISTEN", show_envvar=True,
              help="Where to serve. [default: 127.0.0.1:8088] Another host's address needs --tls-cert/--tls-key "
                   "or --behind-proxy.")
@db_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The YAML file `run` uses (the database, the region, the destination policy).")
@click.option("--region", help="Country for numbers written without + (ISO code). [default: US]")
@click.option("--tls-cert", envvar="ESL_CB_API_TLS_CERT", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", envvar="ESL_CB_API_TLS_KEY", type=click.Path(dir_okay=False), help="Its private key (PEM).")
@click.option("--behind-proxy", is_flag=True, envvar="ESL_CB_API_BEHIND_PROXY",
              help="A TLS-terminating proxy is in front: listen in plain HTTP and trust its X-Forwarded-* headers.")
@click.option("--forwarded-allow-ips", envvar="ESL_CB_API_FORWARDED_ALLOW_IPS",
              help="The proxy's addresses (comma-separated) with --behind-proxy. [default: 127.0.0.1]")
@click.option("--rate-limit", type=float, envvar="ESL_CB_API_RATE_LIMIT",
              help="Requests a second per token, on average (0: no limit). [default: 20]")
@click.option("--rate-burst", type=int, envvar="ESL_CB_API_RATE_BURST", help="Requests at once per token. [default: 40]")
@click.option("--webhook-ca", envvar="ESL_CB_API_WEBHOOK_CA", type=click.Path(dir_okay=False),
              help="CA certificates (PEM) to trust for webhook receivers. [default: the system's]")
@click.option("--webhook-retry", type=float, envvar="ESL_CB_API_WEBHOOK_RETRY",
              help="Seconds before a failed webhook is tried again; doubled each time, at most an hour. [default: 5]")
@click.option("--workers", type=int, envvar="ESL_CB_API_WORKERS",
              help="API processes sharing the port (PostgreSQL only), e.g. one per core the API may use; each "
                   "takes rate-limit / workers of a token's rate. [default: 1]")
@click.option("--db-connections", type=int, envvar="ESL_CB_API_DB_CONNECTIONS",
              help="Database connections per API process at most, so at most this many of its statements run in "
                   "PostgreSQL at once beside the controllers'; more requests wait in the API. [default: 20]")
@click.option("--event-log-hours", type=float, envvar="ESL_CB_API_EVENT_LOG_HOURS",
              help="Live events kept for a client that reconnects with Last-Event-ID (and at most the last "
                   "100,000). [default: 6]")
@click.option("--nice", type=int, envvar="ESL_CB_API_NICE",
              help="Run at this niceness (0-19), below a controller on the same host, so a flood of requests takes "
                   "CPU from the API, not from a due dial. [default: 10]")
@policy_options
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def api(config_file, db, region, log_level, log_format, **options) -> None:
    """Serve the HTTP API (/api/v1, OpenAPI at /api/v1/openapi.json) and the web pages (/ui/supervisor,
    /ui/agent, /ui/reports). It talks only to the database: the controllers are woken by NOTIFY.

    \b
    Example:
      esl-cb token create wallboard --role supervisor
      esl-cb api --listen 127.0.0.1:8088 --db postgresql+psycopg2://postgres@127.0.0.1/eslcb
    """
    setup_logging(log_level, log_format)
    use_credentials()                 # systemd's LoadCredential=pgpass (deploy/systemd/esl-cb-api.service)
    from esl_cb.api.settings import ApiSettings
    from esl_cb.config import ConfigError, load_settings

    policy = {k: options.pop(k) for k in list(options) if k.startswith(("allowed_", "refused_", "allow_", "deny_",
                                                                       "callbacks_per_"))}
    try:
        shared = load_settings(config_file, {**policy, "db": db, "region": region})
        given = {k: v for k, v in options.items() if v is not None and v is not False}    # 0 is a value
        settings = ApiSettings(shared, **given).validate()
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    open_store(settings.shared.db).close()          # a clear error now if the database does not answer
    from esl_cb.api.server import serve

    serve(settings, log_level)
