"""A real FreeSWITCH, SIPp phones and callers, a controller and a clean database, for real-switch tests.

The switch and the phones live for a test module (a switch starts in ~2 s); each test gets its own
controller (in this process, or a real `esl-cb run` process for the kill tests) on the port the
switch's dialplan hands calls to, and leaves no channel behind.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from esl_cb.config import Settings
from esl_cb.controller.service import Controller
from esl_cb.db.store import Store
from esl_cb.domain import script as scripts
from esl_cb.domain.states import AgentState

from ..fixtures import wait_until
from ..harness import TABLES, Looking
from .sipp import Caller, Phones
from .switch import RealSwitch, free_port, require_tools

DID = "3125557000"


class SwitchRig:
    """The module's switch and phones."""

    def __init__(self, root: Path, **switch_options) -> None:
        self.root = root
        self.controller_port = free_port()
        self.phones = Phones(root / "phones")
        self.switch = RealSwitch(root / "fs", f"127.0.0.1:{self.controller_port}", **switch_options).start()
        self.callers = 0

    def caller(self, ani: str, key: str | None = "1", key_after: float = 1.0, hangup_after: float | None = None,
               did: str = DID) -> Caller:
        self.callers += 1
        return Caller(self.root / "callers", self.switch.sip_port, ani, did, key=key, key_after=key_after,
                      hangup_after=hangup_after, name=f"caller{self.callers}")

    def close(self) -> None:
        self.switch.stop()
        self.phones.stop()


def switch_rig(tmp_path_factory, **options):
    require_tools()
    rig = SwitchRig(tmp_path_factory.mktemp("realfs"), **options)
    return rig


@pytest.fixture(scope="module")
def fs_rig(tmp_path_factory):
    rig = switch_rig(tmp_path_factory)
    yield rig
    rig.close()


class RealRig(Looking):
    """A controller (in this process) on the real switch, like tests/harness.Harness on the simulator."""

    def __init__(self, fs: SwitchRig, db_url: str, script: scripts.Script | None = None, start: bool = True,
                 **settings) -> None:
        self.fs = fs
        self.switch = fs.switch
        self.phones = fs.phones
        self.store = Store(db_url, "test")
        with self.store.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        base = dict(esl=self.switch.esl, listen=f"127.0.0.1:{fs.controller_port}", db=db_url,
                    dial_template=self.phones.dial_template(), retry_interval=0.5, max_attempts=3,
                    agent_ring_timeout=4, callback_ring_timeout=4, poll_interval=0.2, controller_id="test")
        base.update(settings)
        self.settings = Settings(**base).validate()
        self.script = script or scripts.load(scripts.DEFAULT_SCRIPT)
        self.controller: Controller | None = None
        self.callers: list[Caller] = []
        self.t0 = time.time()            # the phones' log is the module's: look only at our part
        if start:
            self.start()

    def start(self) -> Controller:
        self.controller = Controller(self.settings, self.store, self.script)
        self.controller.start()
        wait_until(self.controller.esl_ready.is_set, 10, what="the controller's ESL connection")
        return self.controller

    # -- driving --------------------------------------------------------
    def agent(self, name: str, phone: str = "agent1", skill: str = "support", available: bool = False) -> int:
        """An agent whose phone is one of the SIPp phones (its last character picks the behaviour)."""
        aid = self.store.add_agent(name, self.phones.dial(phone), [skill])
        if available:
            self.available(name)
        return aid

    def available(self, name: str) -> None:
        self.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))
        if self.controller is not None:
            self.controller.wake_dispatcher()

    def call(self, ani: str, key: str | None = "1", key_after: float = 1.0,
             hangup_after: float | None = None) -> Caller:
        caller = self.fs.caller(ani, key=key, key_after=key_after, hangup_after=hangup_after)
        self.callers.append(caller)
        return caller

    def api(self, cmd: str) -> str:
        return self.switch.api(cmd)

    def wait_connected(self, contact_id: int = 1, timeout: float = 15.0):
        """Connected and bridged. 'connected' is stored before the bridge: a test that hangs up a leg
        the moment it reads 'connected' races the bridge (and the retry that follows a failed one)."""
        c = self.wait_state("connected", contact_id, timeout)
        leg = c.callback_leg_uuid if c.callback_requested else c.caller_uuid
        until(lambda: f'"Other-Leg-Unique-ID":"{c.agent_leg_uuid}"' in self.api(f"uuid_dump {leg} json"),
              timeout=5, what=f"contact {contact_id}'s leg {leg} to be bridged to agent leg {c.agent_leg_uuid}")
        return c

    def invites_to(self, user: str) -> list:
        """INVITEs that reached a phone during this test (SIPp's trace: the time on the wire)."""
        return [m for m in self.phones.invites_to(user) if m.at >= self.t0]

    def close(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        for c in self.callers:
            c.stop()
        try:
            self.switch.hangup_all()
        except Exception:
            pass
        self.store.close()


@pytest.fixture
def real(fs_rig, pg_url):
    rig = RealRig(fs_rig, pg_url, start=False)
    yield rig
    rig.close()


def copy_logs(rig: SwitchRig, dest: Path) -> None:
    """Keep the switch's log beside a failing test's files."""
    shutil.copy(rig.switch.root / "log" / "freeswitch.log", dest)


def until(fn, timeout: float = 20.0, what: str = "condition"):
    return wait_until(fn, timeout, interval=0.05, what=what)


def now() -> float:
    return time.time()
