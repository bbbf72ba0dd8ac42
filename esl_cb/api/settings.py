"""The API process's settings. Those it shares with `run` (the database, the region, the destination
policy) come through the same layers (esl_cb/config.py: defaults < --config file < ESL_CB_*
environment < options); its own come from options or ESL_CB_API_* variables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from esl_cb.config import ConfigError, Settings
from esl_cb.netaddr import is_loopback, parse_hostport

DEFAULT_LISTEN = "127.0.0.1:8088"


@dataclass
class ApiSettings:
    shared: Settings = field(default_factory=Settings)      # db, region, policy: as `run` reads them
    listen: str = DEFAULT_LISTEN
    tls_cert: str = ""
    tls_key: str = ""
    behind_proxy: bool = False           # a TLS-terminating proxy in front: trust its X-Forwarded-* headers
    forwarded_allow_ips: str = "127.0.0.1"
    rate_limit: float = 20.0             # requests per second per token (0: no limit)
    rate_burst: int = 40
    webhook_ca: str = ""                 # a CA bundle to trust for webhook receivers (default: the system's)
    webhook_retry: float = 5.0           # seconds before the first retry; doubled each time, at most an hour
    webhook_give_up: float = 3 * 86400.0  # a delivery still failing after this long is given up (logged)
    webhook_timeout: float = 10.0
    event_heartbeat: float = 15.0        # seconds between the event stream's keep-alive comments
    event_log_hours: float = 6.0         # live events kept for Last-Event-ID replay (and at most 100,000)
    nice: int = 10                       # below the controller on a shared host: HTTP load yields the CPU to it
    workers: int = 1                     # processes (uvicorn's workers); PostgreSQL only above 1
    db_connections: int = 20             # database connections per worker at most: its statements at once

    @property
    def host(self) -> str:
        return parse_hostport(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_hostport(self.listen)[1]

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def validate(self) -> "ApiSettings":
        try:
            host, _ = parse_hostport(self.listen)
        except ValueError as e:
            raise ConfigError(f"listen: {e}") from None
        if not self.shared.db:
            raise ConfigError("no database: pass --db URL or set ESL_CB_DATABASE_URL "
                              "(e.g. postgresql+psycopg2://postgres@127.0.0.1/eslcb)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls: give both --tls-cert and --tls-key, or neither")
        for name in ("tls_cert", "tls_key", "webhook_ca"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise ConfigError(f"{name}: no file {value}")
        if not is_loopback(host) and not (self.tls or self.behind_proxy):
            raise ConfigError(f"listen: {self.listen} is reachable from other hosts and tokens would travel in clear "
                              "text; give --tls-cert and --tls-key, or --behind-proxy when a TLS proxy is in front, "
                              "or listen on 127.0.0.1")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise ConfigError("rate_limit must be 0 (none) or more requests per second, and rate_burst at least 1")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be 1 to 64, not {self.workers}")
        if self.workers > 1 and not self.shared.db.startswith("postgresql"):
            raise ConfigError("workers: several API processes need PostgreSQL (SQLite has one writer)")
        if not 1 <= self.db_connections <= 100:
            raise ConfigError(f"db_connections must be 1 to 100, not {self.db_connections}")
        if not 0 <= self.nice <= 19:
            raise ConfigError(f"nice must be 0 to 19, not {self.nice}")
        if not self.event_log_hours > 0:
            raise ConfigError("event_log_hours must be above 0")
        if not self.webhook_retry > 0:
            raise ConfigError("webhook_retry must be above 0 seconds")
        self.shared.policy()
        return self
