"""`esl-cb doctor`: check an installation before (or beside) `esl-cb run`, without placing a call.

Each check gives OK, WARN or FAIL with what it found, and for every WARN/FAIL what to do. What the
checks rely on was measured on FreeSWITCH 1.11 (see FREESWITCH-FACTS and tests/test_real_learned.py):

- a refused ESL password gets `-ERR invalid` and a disconnect notice; anything that does not send
  `auth/request` first is not FreeSWITCH's event socket;
- `fsctl max_sessions` / `fsctl sps` print `+OK max sessions: N` / `+OK sessions per second: N`; the
  switch refuses (DESTINATION_OUT_OF_ORDER) every new session over sessions-per-second, inbound calls
  included, so the controller's --originate-rate must stay well below it;
- `user_exists id USER DOMAIN` is `true`/`false`; `sofia status gateway NAME` / `sofia status profile
  NAME` answer `Invalid Gateway!` / `Invalid Profile!` for what the switch does not have;
- the switch's clock: `Event-Date-Timestamp` of a BACKGROUND_JOB (microseconds, but it moves in 20 ms
  steps and reads up to 20 ms behind), several samples;
- `global_getvar run_dir` names the folder of `freeswitch.pid`: a switch on this host is found by it
  (FreeSWITCH runs SCHED_FIFO 10 unless started with -np).
"""
from __future__ import annotations

import logging
import re
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable

import gevent
from gevent.event import AsyncResult

from .config import Settings, masked_url
from .doctor_phones import phones
from .domain.script import Script, script_prompts
from .esl.commands import UnsafeDialString, dial_for
from .esl.inbound import ConnectionLost, ESLError, Event, InboundConnection
from .esl.prompts import check_prompts
from .netaddr import is_loopback, parse_hostport
from .scheduling import pid_from_file, priority_of, verdict

log = logging.getLogger(__name__)
OK, WARN, FAIL = "OK", "WARN", "FAIL"
CLOCK_WARN, CLOCK_FAIL = 0.1, 1.0          # seconds; CallDelaySec counts from the switch's answer time
INBOUND_SHARE = 1 / 3                       # of sessions-per-second left for callers, at least


@dataclass
class Result:
    check: str
    status: str
    found: str
    todo: str = ""
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.status:<4} {self.check:<13} {self.found}"]
        out += [f"{'':<18}- {d}" for d in self.details]
        if self.todo and self.status != OK:
            out.append(f"{'':<18}-> {self.todo}")
        return out


def render(results: list[Result]) -> str:
    return "\n".join(line for r in results for line in r.lines())


def exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


class _Switch:
    """The doctor's ESL connection: api commands, and BACKGROUND_JOB events for the clock."""

    def __init__(self, settings: Settings) -> None:
        host, port = parse_hostport(settings.esl)
        self.where = f"{host}:{port}"
        self._jobs: dict[str, AsyncResult] = {}
        self.conn = InboundConnection(host, port, settings.esl_password, self._on_event, timeout=5)
        self.conn.connect(["BACKGROUND_JOB"])

    def _on_event(self, event: Event) -> None:
        waiter = self._jobs.get(event.get("Job-UUID"))
        if waiter is not None:
            waiter.set((time.time(), event))

    def api(self, cmd: str) -> str:
        return self.conn.api(cmd, timeout=5)

    def clock_offset(self, samples: int = 5) -> tuple[float, float]:
        """(switch clock - ours, uncertainty) in seconds, from BACKGROUND_JOB timestamps: each reads
        0-20 ms behind the switch's clock at the moment it was made, which is between our send and
        our receipt."""
        low, high = float("-inf"), float("inf")
        for _ in range(samples):
            job = str(uuidlib.uuid4())
            waiter = self._jobs[job] = AsyncResult()
            sent = time.time()
            self.conn.bgapi("strepoch", job)
            received, event = waiter.get(timeout=5)
            del self._jobs[job]
            stamp = int(event.get("Event-Date-Timestamp") or 0) / 1e6
            low = max(low, stamp - received)
            high = min(high, stamp + 0.020 - sent)
            gevent.sleep(0.007)
        if low > high:                              # the clocks moved meanwhile: take the middle anyway
            low, high = high, low
        return (low + high) / 2, (high - low) / 2

    def close(self) -> None:
        self.conn.close()


def diagnose(settings: Settings, script: Script | None, script_error: str = "",
             agents: Callable[[], list[tuple[str, str]]] | None = None) -> list[Result]:
    """Every check, in order. agents() lists (name, dial string) from the database (None: read them
    with settings.db)."""
    results: list[Result] = []
    switch = _connect(settings, results)
    db = _database(settings, results)
    try:
        if switch is None:
            reason = "not checked: FreeSWITCH's event socket is not usable"
            for name in ("version", "max-sessions", "sessions/s", "prompts", "agents", "dial template", "phones"):
                results.append(Result(name, FAIL, reason, "fix the esl check first"))
        else:
            results.append(_version(switch))
            results.extend(_limits(switch, settings))
            results.append(_prompts(switch, script, script_error))
            results.append(_agents(switch, db, agents))
            results.append(_dial_template(switch, settings))
            results.extend(phones(switch.api, _domain_of(switch), db, agents or (lambda: _read_agents(db)), Result))
        results.append(_clocks(switch, db))
        results.append(_scheduling(switch, db, settings))
    finally:
        if switch is not None:
            switch.close()
        if db is not None:
            db.dispose()
    return results


# -- 1. ESL ----------------------------------------------------------------------
def _connect(settings: Settings, results: list[Result]) -> _Switch | None:
    try:
        switch = _Switch(settings)
    except ConnectionLost as e:
        text = str(e)
        if "cannot reach" in text:
            results.append(Result("esl", FAIL, f"nothing answers at {settings.esl} ({text.rsplit(': ', 1)[-1]})",
                                  "start FreeSWITCH, or point --esl at its event socket (event_socket.conf.xml: "
                                  "listen-ip, listen-port)"))
        else:
            results.append(Result("esl", FAIL, f"{settings.esl} hung up during the login ({text})",
                                  "is it FreeSWITCH's event socket? its apply-inbound-acl may refuse this host"))
        return None
    except ESLError as e:
        text = str(e)
        if "refused the ESL password" in text:
            results.append(Result("esl", FAIL, f"FreeSWITCH at {settings.esl} refused the password",
                                  "put the event socket's password (event_socket.conf.xml) in a file given with "
                                  "--esl-password-file, or ESL_CB_ESL_PASSWORD, or --esl-password"))
        else:
            results.append(Result("esl", FAIL, f"{settings.esl} is not FreeSWITCH's event socket ({text})",
                                  "point --esl at FreeSWITCH's event socket (event_socket.conf.xml, port 8021 "
                                  "by default)"))
        return None
    results.append(Result("esl", OK, f"FreeSWITCH's event socket at {switch.where} accepted the password"))
    return switch


# -- 2. version ------------------------------------------------------------------
def _version(switch: _Switch) -> Result:
    text = switch.api("version").strip()
    m = re.search(r"Version (\d+)\.(\d+)", text)
    if not m:
        return Result("version", WARN, f"unexpected answer to 'api version': {text[:80]!r}",
                      "esl-cb is tested on FreeSWITCH 1.10 and 1.11")
    if (int(m.group(1)), int(m.group(2))) < (1, 10):
        return Result("version", WARN, text, "esl-cb is tested on FreeSWITCH 1.10 and 1.11; upgrade if calls misbehave")
    return Result("version", OK, text)


# -- 3. limits -------------------------------------------------------------------
def _number(reply: str) -> int | None:
    m = re.match(r"\+OK [a-z ]+: (\d+)", reply.strip())
    return int(m.group(1)) if m else None


def _limits(switch: _Switch, settings: Settings) -> list[Result]:
    out = []
    max_sessions = _number(switch.api("fsctl max_sessions"))
    if max_sessions is None:
        out.append(Result("max-sessions", WARN, "the switch did not answer 'fsctl max_sessions'"))
    elif settings.ports >= max_sessions:
        out.append(Result("max-sessions", WARN, f"the switch takes {max_sessions} sessions at most; --ports "
                          f"{settings.ports} lets callbacks alone use them all",
                          "lower --ports or raise max-sessions in switch.conf.xml"))
    else:
        out.append(Result("max-sessions", OK, f"{max_sessions} sessions at most; callbacks use up to {settings.ports}"))
    sps = _number(switch.api("fsctl sps"))
    rate = settings.originate_rate
    if sps is None:
        out.append(Result("sessions/s", WARN, "the switch did not answer 'fsctl sps'"))
    elif rate >= sps:
        out.append(Result("sessions/s", FAIL, f"--originate-rate {rate:g}/s is not below the switch's "
                          f"sessions-per-second {sps}: it refuses the excess (DESTINATION_OUT_OF_ORDER), callers "
                          "included",
                          f"lower --originate-rate to {max(int(sps * (1 - INBOUND_SHARE)), 1)} or less, or raise "
                          "sessions-per-second in switch.conf.xml"))
    elif sps - rate < sps * INBOUND_SHARE:
        out.append(Result("sessions/s", WARN, f"--originate-rate {rate:g}/s leaves {sps - rate:g} of the switch's "
                          f"{sps} sessions per second for callers",
                          f"keep a third for inbound calls: --originate-rate {max(int(sps * (1 - INBOUND_SHARE)), 1)}"
                          " or less"))
    else:
        out.append(Result("sessions/s", OK, f"--originate-rate {rate:g}/s, the switch takes {sps} new sessions "
                          "per second"))
    return out


# -- 4. prompts ------------------------------------------------------------------
def _prompts(switch: _Switch, script: Script | None, script_error: str) -> Result:
    if script is None:
        return Result("prompts", FAIL, f"not checked: the script is invalid: {script_error}",
                      "fix the script (esl-cb script check FILE)")
    pairs = script_prompts(script)
    if not pairs:
        return Result("prompts", OK, f"script {script.name!r} plays no prompt")
    problems = check_prompts(switch.api, pairs)
    missing = [p for p in problems if p.missing]
    runtime = [p for p in problems if p.at_run_time]
    unsure = [p for p in problems if not p.missing and p not in runtime]
    checked = len(pairs) - len(runtime) - len(unsure)
    note = f"; {len(runtime)} with {{variables}} checked at run time" if runtime else ""
    details = [str(p) for p in missing + unsure]
    if missing:
        return Result("prompts", FAIL, f"{len(missing)} of {len(pairs)} prompts of script {script.name!r} are not "
                      f"on the switch{note}", "install them under the switch's sound_prefix (a sound package lays "
                      "them out as <dir>/8000/<file>) or change the script; a missing Menu prompt never hears the "
                      "caller", details)
    if unsure:
        return Result("prompts", WARN, f"{checked} prompts of script {script.name!r} on the switch, "
                      f"{len(unsure)} not checkable{note}", "play them once on a test call", details)
    return Result("prompts", OK, f"all {checked} prompts of script {script.name!r} are on the switch{note}")


# -- 6/7. dial strings -----------------------------------------------------------------
def _dial_problem(switch: _Switch, dial: str, domain: Callable[[], str]) -> tuple[str, str]:
    """(status, what was found) for one dial string."""
    tech, _, rest = dial.partition("/")
    if tech == "user":
        user, _, dom = rest.partition("@")
        dom = dom or domain()
        if switch.api(f"user_exists id {user} {dom}").strip() == "true":
            return OK, f"user {user}@{dom} is in the switch's directory"
        return FAIL, f"{dial}: no user {user} in the switch's directory for domain {dom}"
    if tech == "sofia" and rest.startswith("gateway/"):
        name = rest.split("/")[1]
        text = switch.api(f"sofia status gateway {name}")
        if text.startswith("Invalid Gateway"):
            return FAIL, f"{dial}: the switch has no gateway {name!r}"
        m = re.search(r"^Status\s+(\S+)", text, re.M)
        if m and m.group(1) != "UP":
            return WARN, f"{dial}: gateway {name!r} is {m.group(1)}"
        return OK, f"gateway {name!r} is up"
    if tech == "sofia":
        name = rest.split("/")[0]
        if switch.api(f"sofia status profile {name}").startswith("Invalid Profile"):
            return FAIL, f"{dial}: the switch runs no sofia profile {name!r}"
        return OK, f"sofia profile {name!r} is running"
    return WARN, f"{dial}: {tech}/ dial strings cannot be checked from here"


def _domain_of(switch: _Switch) -> Callable[[], str]:
    cache: list[str] = []

    def domain() -> str:
        if not cache:
            reply = switch.api("global_getvar domain").strip()
            cache.append("" if reply.startswith("-ERR") else reply)
        return cache[0]
    return domain


def _agents(switch: _Switch, db, agents: Callable[[], list[tuple[str, str]]] | None) -> Result:
    if agents is None:
        if db is None:
            return Result("agents", FAIL, "not checked: the database is not usable", "fix the database check first")
        agents = lambda: _read_agents(db)  # noqa: E731
    try:
        listed = agents()
    except Exception as e:                          # a database that is not migrated has no agents table
        return Result("agents", FAIL, f"not checked: cannot read the agents ({type(e).__name__})",
                      "fix the database check first")
    if not listed:
        return Result("agents", WARN, "no agents yet", "add them: esl-cb agent add NAME --dial-string user/1001 "
                      "--skill support")
    domain = _domain_of(switch)
    found = [(name, dial) + _dial_problem(switch, dial, domain) for name, dial in listed]
    bad = [f"agent {name}: {what}" for name, dial, status, what in found if status == FAIL]
    warn = [f"agent {name}: {what}" for name, dial, status, what in found if status == WARN]
    if bad:
        return Result("agents", FAIL, f"{len(bad)} of {len(listed)} agents cannot be rung", "fix the switch's "
                      "directory / sofia configuration, or the agent (esl-cb agent remove NAME, then agent add "
                      "NAME --dial-string ...)", bad + warn)
    if warn:
        return Result("agents", WARN, f"{len(listed) - len(warn)} of {len(listed)} agents' dial strings checked",
                      "ring them once to be sure", warn)
    return Result("agents", OK, f"all {len(listed)} agents' dial strings resolve on the switch")


def _read_agents(db) -> list[tuple[str, str]]:
    from sqlalchemy import text

    with db.connect() as conn:
        return [(r.name, r.dial_string) for r in conn.execute(text("SELECT name, dial_string FROM agents "
                                                                   "ORDER BY name"))]


def _dial_template(switch: _Switch, settings: Settings) -> Result:
    try:
        dial = dial_for(settings.dial_template, "+13125550100")
    except UnsafeDialString as e:
        return Result("dial template", FAIL, str(e), "fix --dial-template")
    status, what = _dial_problem(switch, dial, _domain_of(switch))
    todo = "" if status == OK else "fix --dial-template, or the switch's gateway/profile"
    return Result("dial template", status, f"{settings.dial_template}: {what}", todo)


# -- 5. database ------------------------------------------------------------------
def _database(settings: Settings, results: list[Result]):
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from .db.migrate import alembic_config

    if not settings.db:
        results.append(Result("database", FAIL, "no database given", "pass --db URL or set ESL_CB_DATABASE_URL"))
        return None
    args = {"connect_timeout": 5} if settings.db.startswith("postgresql") else {}
    try:
        engine = create_engine(settings.db, connect_args=args)
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as e:
        first = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(getattr(e, "orig", e)).strip() else str(e)
        results.append(Result("database", FAIL, f"cannot reach the database ({first})",
                              "is PostgreSQL running and the --db URL right?"))
        return None
    heads = ScriptDirectory.from_config(alembic_config(settings.db)).get_heads()
    if current not in heads:
        results.append(Result("database", FAIL, f"the database is at revision {current or 'none (no tables)'}, "
                              f"not {', '.join(heads)}", f"run: esl-cb db upgrade --db {_masked(settings.db)}"))
        return engine
    results.append(Result("database", OK, f"reachable and migrated ({current})"))
    return engine


def _masked(url: str) -> str:
    return masked_url(url)


# -- 8. clocks --------------------------------------------------------------------
def _db_offset(db) -> tuple[float, float] | None:
    from sqlalchemy import text

    if db is None or db.dialect.name != "postgresql":
        return None
    best = None
    with db.connect() as conn:
        for _ in range(3):
            sent = time.time()
            stamp = float(conn.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar())
            received = time.time()
            sample = (stamp - (sent + received) / 2, (received - sent) / 2)
            if best is None or sample[1] < best[1]:
                best = sample
    return best


def _clocks(switch: _Switch | None, db) -> Result:
    offsets: list[tuple[str, float, float]] = []
    try:
        if switch is not None:
            offsets.append(("switch", *switch.clock_offset()))
    except (ESLError, gevent.Timeout, ValueError) as e:
        return Result("clocks", WARN, f"could not read the switch's clock ({e})", "check the switch's time by hand")
    try:
        db_offset = _db_offset(db)
    except Exception as e:                          # noqa: BLE001 - any database error: say so, go on
        return Result("clocks", WARN, f"could not read the database's clock ({type(e).__name__})")
    if db_offset is not None:
        offsets.append(("database", *db_offset))
    if not offsets:
        return Result("clocks", FAIL, "not checked: neither the switch nor a PostgreSQL database is usable",
                      "fix the checks above")
    worst = max(abs(o) for _, o, _ in offsets)
    found = ", ".join(f"{name} {o * 1000:+.0f} ms (±{u * 1000:.0f})" for name, o, u in offsets)
    found = f"against this host: {found}"
    todo = ("run NTP (chrony, systemd-timesyncd) on the controller, the switch and the database hosts: "
            "CallDelaySec counts from the switch's answer time")
    if worst > CLOCK_FAIL:
        return Result("clocks", FAIL, found, todo)
    if worst > CLOCK_WARN:
        return Result("clocks", WARN, found, todo)
    return Result("clocks", OK, found)


# -- 9. who gets a CPU first -------------------------------------------------------
def _scheduling(switch: _Switch | None, db, settings: Settings) -> Result:
    """The controller's priority against FreeSWITCH's and PostgreSQL's when they run on this host
    (their pid file / backend pid name a process here)."""
    switch_prio = db_prio = None
    try:
        if switch is not None and is_loopback(parse_hostport(settings.esl)[0]):
            run_dir = switch.api("global_getvar run_dir").strip()
            pid = pid_from_file(f"{run_dir}/freeswitch.pid") if run_dir.startswith("/") else None
            switch_prio = priority_of(pid) if pid else None
        where = "not used" if db is not None and db.dialect.name != "postgresql" else "on another host"
        if db is not None and db.dialect.name == "postgresql" and _is_local_db(db.url.host):
            from sqlalchemy import text
            with db.connect() as conn:
                backend = conn.execute(text("SELECT pg_backend_pid()")).scalar()
                db_prio = priority_of(backend) if _is_postgres(backend) else None
    except Exception as e:                          # noqa: BLE001 - informative only: say so, go on
        return Result("scheduling", WARN, f"could not read the processes' priorities ({type(e).__name__})")
    fine, found, todo = verdict(switch_prio, settings.realtime_priority, db_prio, where)
    return Result("scheduling", OK if fine else WARN, found, todo)


def _is_local_db(host: str | None) -> bool:
    """A backend pid means a process here only when the server is here (not a container's namespace)."""
    return not host or host.startswith("/") or is_loopback(host)


def _is_postgres(pid: int | None) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() in ("postgres", "postmaster")
    except OSError:
        return False
