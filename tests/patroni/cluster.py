"""A real PostgreSQL 15 pair managed by Patroni, with one etcd, for failover tests.

Everything on loopback, on ports free at start, in one temporary folder: one etcd (v3 API, what
Patroni's `etcd3` section speaks), two Patroni nodes in synchronous mode (a primary and its
synchronous standby). PostgreSQL refuses to run as root, so as root the nodes run as the
`postgres` system user and their folders are theirs.

    with PatroniPair().start() as pair:
        url = pair.url("eslcb")               # both hosts, target_session_attrs=read-write
        pair.failover()                       # SIGKILL of the primary's postmaster
        pair.wait_ready()                     # a leader and a synchronous standby again

Debian packages: etcd-server, patroni, postgresql-15 (.ci/run installs them). Tests that need them
skip with the reason where they are missing, and fail instead under ESL_CB_REQUIRE_FREESWITCH=1
(the suite's "CI: nothing may skip").
"""
from __future__ import annotations

import atexit
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
import yaml

from tests.freeswitch.switch import REQUIRED, free_port

ETCD = os.environ.get("ESL_CB_ETCD", "/usr/bin/etcd")
PATRONI = os.environ.get("ESL_CB_PATRONI", "/usr/bin/patroni")
PG_BIN = Path(os.environ.get("ESL_CB_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres"               # PostgreSQL's own system user, when we are root
SUPERUSER, PASSWORD = "postgres", "pw-never-logged"   # the tests look for this password in the logs
SCOPE = "eslcb"


def missing_tools() -> str | None:
    """Why the Patroni tests cannot run here, or None."""
    for path, package in ((ETCD, "etcd-server"), (PATRONI, "patroni"), (PG_BIN / "postgres", "postgresql-15")):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (Debian package {package}; .ci/run installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"no {RUN_AS!r} system user to run PostgreSQL as (it refuses root)"
    return None


def require_tools() -> None:
    reason = missing_tools()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"ESL_CB_REQUIRE_FREESWITCH=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _get(url: str, timeout: float = 2.0) -> dict | list:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def _wait(what: str, timeout: float, probe):
    """Poll `probe` (None or False: not yet; exceptions: not yet) until it gives a value."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, LookupError, psycopg2.Error) as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


class Etcd:
    """One etcd member, its data in root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_port, self.peer_port = free_port(udp_too=False), free_port(udp_too=False)
        self.proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> "Etcd":
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [ETCD, "--name", "etcd1", "--data-dir", str(self.root / "data"),
             "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"etcd1={peer}", "--initial-cluster-state", "new", "--log-level", "warn",
             "--logger", "zap"],
            stdout=(self.root / "etcd.log").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        _wait("etcd to be healthy", timeout,
              lambda: self._exited() or _get(self.client_url + "/health").get("health") == "true")
        return self

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited at start ({self.proc.returncode}); see {self.root / 'etcd.log'}")
        return False

    def stop(self) -> None:
        _end(self.proc, 5.0)


class Node:
    """One Patroni with its PostgreSQL."""

    def __init__(self, root: Path, name: str, etcd: Etcd, strict: bool = False) -> None:
        self.root, self.name, self.etcd, self.strict = root, name, etcd, strict
        self.pg_port, self.api_port = free_port(udp_too=False), free_port(udp_too=False)
        self.data_dir = root / "data"
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.pg_port}"

    def config(self) -> dict:
        here = f"127.0.0.1:{self.api_port}"
        pg = f"127.0.0.1:{self.pg_port}"
        return {
            "scope": SCOPE, "name": self.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": here, "connect_address": here},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd.client_port}"},
            "bootstrap": {
                "dcs": {
                    # A member lost is noticed within loop_wait; its leader key lapses after ttl.
                    "ttl": 20, "loop_wait": 1, "retry_timeout": 5,
                    "synchronous_mode": True, "synchronous_mode_strict": self.strict,
                    # A crashed primary fails over at once instead of restarting in place first
                    # (Patroni's default waits 300 s for it to come back).
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"synchronous_commit": "on", "wal_log_hints": "on", "max_connections": 100,
                                       "max_wal_senders": 5, "max_replication_slots": 5,
                                       "wal_keep_size": "128MB"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                "pg_hba": ["local all all trust",
                           "host replication replicator 127.0.0.1/32 scram-sha-256",
                           "host all all 127.0.0.1/32 scram-sha-256"],
            },
            "postgresql": {
                "listen": pg, "connect_address": pg, "data_dir": str(self.data_dir), "bin_dir": str(PG_BIN),
                "pgpass": str(self.root / "pgpass"),
                "authentication": {"superuser": {"username": SUPERUSER, "password": PASSWORD},
                                   "replication": {"username": "replicator", "password": "repl-pw"},
                                   "rewind": {"username": "rewinder", "password": "rewind-pw"}},
                "parameters": {"unix_socket_directories": str(self.root), "shared_buffers": "32MB",
                               "logging_collector": "on", "log_directory": str(self.root / "pglog"),
                               "log_min_messages": "warning"},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def start(self) -> "Node":
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "patroni.yml"
        conf.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        as_user = _run_as()
        if as_user is not None:
            _chown_tree(self.root, as_user)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.root), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [PATRONI, str(conf)], cwd=self.root, env=env, user=as_user.pw_uid if as_user else None,
            group=as_user.pw_gid if as_user else None, extra_groups=[] if as_user else None,
            stdout=(self.root / "patroni.log").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        return self

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def connect(self, database: str = "postgres"):
        return psycopg2.connect(host="127.0.0.1", port=self.pg_port, user=SUPERUSER, password=PASSWORD,
                                dbname=database, connect_timeout=3)

    def stop(self) -> None:
        """Patroni stops its PostgreSQL when told to stop; whatever is left is killed."""
        _end(self.proc, 20.0)
        pid = self.postmaster_pid()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return (self.root / "patroni.log").read_text(errors="replace")
        except OSError:
            return ""


class PatroniPair:
    """etcd and two Patroni nodes in synchronous mode, in one temporary folder removed at stop."""

    def __init__(self, root: Path | None = None, strict: bool = False) -> None:
        """strict: synchronous_mode_strict (a primary without a standby takes no writes; README says why
        the reference setup does not use it)."""
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="eslcb-patroni-"))
        self.own_root = root is None
        self.root.chmod(0o755)          # the postgres user must reach its folders below
        self.etcd = Etcd(self.root / "etcd")
        self.nodes = [Node(self.root / name, name, self.etcd, strict) for name in ("pg1", "pg2")]

    def start(self, timeout: float = 90.0) -> "PatroniPair":
        atexit.register(self.stop)          # a test run cut short leaves nothing running either
        try:
            self.etcd.start()
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "PatroniPair":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- looking -------------------------------------------------------
    def members(self) -> list[dict]:
        """Patroni's view of the cluster (GET /cluster of the first node that answers)."""
        for node in self.nodes:
            try:
                return _get(node.api_url + "/cluster")["members"]
            except (OSError, ValueError):
                continue
        raise OSError("no Patroni REST API answers")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def leader(self) -> Node:
        for m in self.members():
            if m["role"] == "leader" and m.get("state") == "running":
                return self.node(m["name"])
        raise LookupError("no running leader")

    def standby(self) -> Node:
        leader = self.leader()
        return next(n for n in self.nodes if n is not leader)

    def wait_ready(self, timeout: float = 90.0) -> tuple[Node, Node]:
        """A running leader whose standby streams synchronously (PostgreSQL's own word, not Patroni's)."""
        def ready():
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"patroni {n.name} exited ({n.proc.returncode}); see {n.root}/patroni.log")
            roles = {m["name"]: m["role"] for m in self.members()}
            leader = self.leader()
            standby = next(n for n in self.nodes if n is not leader)
            if roles.get(standby.name) != "sync_standby":
                return None
            with leader.connect() as conn, conn.cursor() as cur:
                cur.execute("SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync' "
                            "AND state = 'streaming'")
                names = [r[0] for r in cur.fetchall()]
            conn.close()
            return (leader, standby) if names == [standby.name] else None
        return _wait("a leader and a synchronous standby", timeout, ready)

    def setting(self, name: str) -> str:
        with self.leader().connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting(%s)", (name,))
            value = cur.fetchone()[0]
        conn.close()
        return value

    # -- the database the tests use --------------------------------------
    def url(self, database: str, first: Node | None = None, **params: str) -> str:
        """The URL a controller is given: both hosts (`first` first), and libpq keeps only the one that
        takes writes."""
        nodes = sorted(self.nodes, key=lambda n: n is not first)
        query = "&".join([*(f"host={n.host}" for n in nodes), "target_session_attrs=read-write",
                          *(f"{k}={v}" for k, v in params.items())])
        return f"postgresql+psycopg2://{SUPERUSER}:{PASSWORD}@/{database}?{query}"

    def create_database(self, name: str, timeout: float = 30.0) -> None:
        """Created on the primary, and waited for on the standby: synchronous_commit 'on' waits for the
        standby's flush, not its replay, and libpq does not try the next host of a URL when one says
        the database does not exist."""
        conn = self.leader().connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        for node in self.nodes:
            _wait(f"database {name} on {node.name}", timeout, lambda: node.connect(name).close() or True)

    # -- faults ----------------------------------------------------------
    def failover(self) -> tuple[Node, float]:
        """SIGKILL of the primary's postmaster (Patroni stays up and fails over: primary_start_timeout 0).
        Returns the node killed and when (time.monotonic())."""
        leader = self.leader()
        pid = leader.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{leader.name} has no postmaster.pid")
        os.kill(pid, signal.SIGKILL)
        return leader, time.monotonic()

    def switchover(self) -> tuple[Node, float]:
        """A planned switchover to the synchronous standby, through Patroni's REST API."""
        leader, standby = self.leader(), self.standby()
        body = json.dumps({"leader": leader.name, "candidate": standby.name}).encode()
        req = urllib.request.Request(leader.api_url + "/switchover", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        at = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"switchover refused: {e.code} {e.read().decode(errors='replace')}") from None
        return leader, at

    def wait_leader_other_than(self, old: Node, timeout: float = 60.0) -> Node:
        return _wait(f"a leader other than {old.name}", timeout,
                     lambda: (lambda n: n if n is not old else None)(self.leader()))

    # -- the end ---------------------------------------------------------
    def stop(self) -> None:
        """Stop all it started, then make sure of it: nothing running from our folder is left."""
        for node in self.nodes:
            node.stop()
        self.etcd.stop()
        for pid in _pids_under(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


def _run_as():
    return pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None


def _chown_tree(root: Path, user) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)):
            os.chown(name, user.pw_uid, user.pw_gid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end(proc: subprocess.Popen | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _pids_under(root: Path) -> list[int]:
    """Processes whose command line names our folder (a postmaster and its children, an orphan)."""
    mark = str(root).encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
        except OSError:
            continue
    return out
