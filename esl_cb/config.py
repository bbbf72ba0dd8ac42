"""Controller settings, in layers: defaults < config file < ESL_CB_* environment < command line."""
from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from .domain.errors import InvalidInput
from .domain.policy import DEFAULT_REFUSED_TYPES, DestinationPolicy, PolicyError
from .esl.commands import UnsafeDialString, dial_for
from .netaddr import is_loopback, parse_hostport

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.0/8,::1"
DEFAULT_ESL_PASSWORD = "ClueCon"
# systemd credentials (LoadCredential=NAME:PATH in the unit) the controller reads from
# $CREDENTIALS_DIRECTORY: the ESL password, and a libpq password file for the database.
ESL_PASSWORD_CREDENTIAL = "esl-password"
PGPASS_CREDENTIAL = "pgpass"


class ConfigError(InvalidInput, ValueError):
    """A setting (file, environment, option) that cannot be used; the message names it. A fault of
    the server's configuration, not of a client's request: 500 if an API ever meets one."""

    code = "invalid_config"
    http_status = 500
    title = "a setting cannot be used"


@dataclass
class Settings:
    esl: str = "127.0.0.1:8021"
    esl_password: str = "ClueCon"
    esl_password_file: str = ""       # read the ESL password from this file (off the command line)
    listen: str = "127.0.0.1:8084"
    db: str = ""
    script: str = ""
    dial_template: str = "sofia/gateway/pstn/{number}"
    ports: int = 30                   # voice ports the callback dialler may use at once
    originate_rate: float = 20.0      # originates per second at most (the switch's sessions-per-second, 30 by
                                      # default, counts inbound calls too)
    retry_interval: float = 300.0     # seconds between callback attempts
    max_attempts: int = 3
    agent_ring_timeout: int = 20      # seconds an agent's phone rings before it counts as refused
    callback_ring_timeout: int = 30   # seconds the customer's phone rings per attempt
    confirm_timeout: float = 15.0     # seconds from the answer for the customer's key (a ConfirmPrompt)
    refused_reset: float = 0.0        # seconds after which a Refused agent is Available again; 0 = never
    region: str = "US"                # how national numbers (no +) are read
    controller_id: str = ""
    poll_interval: float = 1.0        # backstop: look for work even when nobody woke us
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 10.0   # a controller silent this long has its contacts taken over
    stop_grace: float = 10.0          # seconds a clean stop (SIGTERM) waits for the work in flight
    db_wait: float = 60.0             # how long a new caller hears music while the database is away
    arrival_db_connections: int = 4   # database connections for callers' arrivals (the rest keep theirs)
    admission_max_lag: float = 0.02   # new callers wait while the event loop is later than this (s); 0: off
    admission_max_wait: float = 10.0  # ... for at most this long (s)
    # A NOTIFY's chosen controller claims at once, the others this much later (controller/wakeups.py);
    # 0: every controller claims at once.
    notify_others_after: float = 0.25
    metrics_port: int = 0
    realtime_priority: int = 0        # run SCHED_RR at this priority (1-99), above FreeSWITCH's 10; 0: normal
    watchdog_max_lag: float = 1.0     # systemd's watchdog is fed only while the event loop is later than
                                      # this by less (seconds)
    callback_wait_target: str = "900"  # seconds a due callback may wait for an agent (skill=seconds,... and a
                                       # bare number for the other skills); exported for the alert
    # Who may be called back (esl_cb/domain/policy.py): toll fraud and flooding.
    allowed_countries: str = ""       # ISO codes, comma-separated; empty: the --region country only; * any
    refused_number_types: str = ",".join(DEFAULT_REFUSED_TYPES)
    allow_prefixes: str = ""          # E.164 prefixes always allowed (e.g. +1800)
    deny_prefixes: str = ""           # E.164 prefixes never dialled (e.g. +1900,+1876)
    callbacks_per_number_per_day: int = 3
    callbacks_per_caller_per_hour: int = 5
    # Who may connect to our outbound-socket server (FreeSWITCH's `socket` application).
    allow_from: str = LOOPBACK

    def validate(self) -> "Settings":
        for name in ("esl", "listen"):
            try:
                parse_hostport(getattr(self, name))
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from None
        if not self.db:
            raise ConfigError("no database: pass --db URL or set ESL_CB_DATABASE_URL "
                              "(e.g. postgresql+psycopg2://postgres@127.0.0.1/eslcb)")
        try:
            dial_for(self.dial_template, "+13125550100")
        except UnsafeDialString as e:
            raise ConfigError(f"dial_template: {e}") from None
        if "{number}" not in self.dial_template and "{digits}" not in self.dial_template:
            raise ConfigError("dial_template must contain {number} (E.164, with +) or {digits}")
        for name in ("ports", "max_attempts", "agent_ring_timeout", "callback_ring_timeout", "arrival_db_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.originate_rate > 0:
            raise ConfigError(f"originate_rate must be above 0 (originates per second), not {self.originate_rate}")
        if self.retry_interval < 0:
            raise ConfigError("retry_interval cannot be negative")
        if self.stop_grace < 0:
            raise ConfigError(f"stop_grace cannot be negative (seconds), not {self.stop_grace}")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout / 2:
            raise ConfigError(f"heartbeat_interval ({self.heartbeat_interval}s) must be above 0 and under half of "
                              f"heartbeat_timeout ({self.heartbeat_timeout}s), or a slow beat looks like a death")
        if self.admission_max_lag < 0 or self.admission_max_wait < 0:
            raise ConfigError(f"admission_max_lag and admission_max_wait must not be negative, not "
                              f"{self.admission_max_lag} and {self.admission_max_wait}")
        if self.notify_others_after < 0:
            raise ConfigError(f"notify_others_after must not be negative (seconds), not {self.notify_others_after}")
        if not self.watchdog_max_lag > 0:
            raise ConfigError(f"watchdog_max_lag must be above 0 (seconds), not {self.watchdog_max_lag}")
        self.callback_wait_targets()
        if not 0 <= self.realtime_priority <= 99:
            raise ConfigError(f"realtime_priority must be 0 (normal) or a SCHED_RR priority 1-99, not "
                              f"{self.realtime_priority}")
        self.policy()
        networks = self.allowed_networks()
        listen_host = parse_hostport(self.listen)[0]
        if not is_loopback(listen_host) and self.allow_from == LOOPBACK:
            raise ConfigError(f"listen: {self.listen} is reachable from other hosts; name the switch's address with "
                              "--allow-from (e.g. --allow-from 10.0.0.5), or listen on 127.0.0.1")
        if not networks:
            raise ConfigError("allow_from: give at least one address or network (e.g. 127.0.0.1 or 10.0.0.0/24)")
        if not self.controller_id:
            # Stable across restarts on one host, so a restarted controller finds its own contacts.
            self.controller_id = f"{socket.gethostname()}:{parse_hostport(self.listen)[1]}"
        return self

    def policy(self) -> DestinationPolicy:
        """The destination policy these settings describe (ConfigError naming the bad setting)."""
        try:
            return DestinationPolicy.from_settings(
                self.region, self.allowed_countries, self.refused_number_types, self.allow_prefixes,
                self.deny_prefixes, self.callbacks_per_number_per_day, self.callbacks_per_caller_per_hour)
        except PolicyError as e:
            raise ConfigError(str(e)) from None

    def callback_wait_targets(self) -> tuple[float, dict[str, float]]:
        """(the target of every skill not named, {skill: its own target}), in seconds."""
        default, per_skill = None, {}
        for item in (w.strip() for w in str(self.callback_wait_target).split(",")):
            if not item:
                continue
            skill, sep, value = item.rpartition("=")
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if seconds <= 0 or (sep and not skill.strip()):
                raise ConfigError(f"callback_wait_target: {item!r} is not seconds above 0 or skill=seconds "
                                  "(e.g. 900 or support=600,sales=1200,900)")
            if sep:
                per_skill[skill.strip()] = seconds
            elif default is not None:
                raise ConfigError(f"callback_wait_target: two targets for the other skills ({default:g} and "
                                  f"{seconds:g}); name the skill of one (skill=seconds)")
            else:
                default = seconds
        return (900.0 if default is None else default), per_skill

    def allowed_networks(self) -> list:
        out = []
        for word in (w.strip() for w in self.allow_from.replace(";", ",").split(",")):
            if not word:
                continue
            try:
                out.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                raise ConfigError(f"allow_from: {word!r} is not an IP address or network (e.g. 10.0.0.5 or "
                                  "10.0.0.0/24)") from None
        return out

    def security_warnings(self) -> list[str]:
        """Settings that work but that an operator should not run with."""
        out = []
        esl_host = parse_hostport(self.esl)[0]
        if self.esl_password == DEFAULT_ESL_PASSWORD and not is_loopback(esl_host):
            out.append(f"the ESL password is FreeSWITCH's default and the switch ({self.esl}) is not on this host: "
                       "anyone who reaches its event socket controls it; set a password in event_socket.conf.xml "
                       "and --esl-password")
        return out

    def masked(self) -> dict:
        """For the start-up log line: never a password (the ESL one, the database URL's)."""
        out = asdict(self)
        out["esl_password"] = "***"
        out["db"] = masked_url(out["db"])
        return out


# user:password@ before the host(s), and libpq's password= among a multi-host URL's parameters.
_URL_PASSWORD = re.compile(r"(?<=://)([^:/@?]*):[^@/?]*(?=@)")
_QUERY_PASSWORD = re.compile(r"(?<=[?&])password=[^&]*", re.I)


def masked_url(url: str) -> str:
    """A database URL as logs and messages may show it: every password replaced by ***."""
    return _QUERY_PASSWORD.sub("password=***", _URL_PASSWORD.sub(r"\1:***", url))


def url_password(url: str) -> str:
    """The password a database URL carries ('' for none)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:       # not a URL: validate() says so where it matters
        return ""
    return parsed.password or str(parsed.query.get("password", "") or "")


def read_secret(path: str, what: str) -> str:
    """A password from a file: its first line, without the line end (ConfigError saying what is wrong)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    secret = text.splitlines()[0] if text.strip() else ""
    if not secret:
        raise ConfigError(f"{what}: {path} is empty; write the password on its first line")
    return secret


ENV_PREFIX = "ESL_CB_"
# ESL_CB_* names that are no setting of `run` but are read elsewhere: the CLI's, the API's own layer
# (ESL_CB_API_*), and the test suite's and its tools'.
OTHER_ENV = frozenset({"DATABASE_URL", "OPERATOR", "PORTS", "REQUIRE_FREESWITCH", "REQUIRE_BROWSER", "TEST_PG",
                       "FREESWITCH", "FREESWITCH_CONF", "CAPTURES", "FUZZ_EXAMPLES", "PG_BIN", "PATRONI", "ETCD",
                       "CHROMIUM", "CHROMEDRIVER"})


def unknown_environment(environ) -> list[str]:
    """One sentence per ESL_CB_* variable that nothing reads (a typo in an EnvironmentFile would
    otherwise be ignored in silence), naming the setting it was probably meant to be."""
    known = [ENV_PREFIX + f.name.upper() for f in fields(Settings)] + [ENV_PREFIX + n for n in OTHER_ENV]
    out = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(ENV_PREFIX + "API_"):
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]}?" if near else ""
        out.append(f"environment variable {name} is no esl-cb setting and is ignored{hint}")
    return out


def load_settings(config_file: str | None = None, overrides: dict | None = None,
                  environ: dict | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    for sentence in unknown_environment(environ):
        log.warning("%s", sentence)
    values: dict = {}
    names = {f.name: f for f in fields(Settings)}
    if config_file:
        path = Path(config_file)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must be a mapping of setting: value")
        for key, value in doc.items():
            k = str(key).replace("-", "_")
            if k not in names:
                raise ConfigError(f"config file {path}: unknown setting {key!r}; known: {', '.join(names)}")
            values[k] = value
    for k in names:
        env = environ.get(ENV_PREFIX + k.upper())
        if env is not None:
            values[k] = env
    if "db" not in values and environ.get("ESL_CB_DATABASE_URL"):
        values["db"] = environ["ESL_CB_DATABASE_URL"]
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    settings = Settings()
    for k, v in values.items():
        typ = type(getattr(settings, k))
        try:
            setattr(settings, k, typ(v))
        except (TypeError, ValueError):
            raise ConfigError(f"setting {k}: {v!r} is not a valid {typ.__name__}") from None
    _esl_password_from_files(settings, "esl_password" in values, environ)
    return settings


def _esl_password_from_files(settings: Settings, given: bool, environ) -> None:
    """The ESL password from --esl-password-file or the systemd credential esl-password: one source
    only, so that no one wonders which password is in use."""
    sources = []
    if settings.esl_password_file:
        sources.append(("esl_password_file", settings.esl_password_file))
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / ESL_PASSWORD_CREDENTIAL).is_file():
        sources.append((f"the systemd credential {ESL_PASSWORD_CREDENTIAL}",
                        str(Path(credentials) / ESL_PASSWORD_CREDENTIAL)))
    if not sources:
        return
    if given or len(sources) > 1:
        names = (["esl_password"] if given else []) + [name for name, _ in sources]
        raise ConfigError(f"the ESL password is given {len(names)} ways ({', '.join(names)}); keep one")
    settings.esl_password = read_secret(sources[0][1], sources[0][0])


def pgpass_from_credentials(environ) -> str:
    """The libpq password file systemd passes as the credential pgpass, when PGPASSFILE is not set
    already ('' otherwise): the caller exports it as PGPASSFILE, and libpq reads the database
    password there."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if environ.get("PGPASSFILE") or not credentials:
        return ""
    path = Path(credentials) / PGPASS_CREDENTIAL
    return str(path) if path.is_file() else ""
