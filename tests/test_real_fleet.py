"""Two real FreeSWITCH processes, one controller each (A in this process, B a real `esl-cb run`), one
database, both switches registered with `esl-cb switch add` (issue 18). Every phone (agents' and
customers') is one SIPp on loopback that both switches dial directly, so the INVITEs it saw say who
was dialled how often and, by their Via, through which switch."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from esl_cb.db.base import NotFound
from esl_cb.domain import script as scripts
from esl_cb.domain.states import AgentState

from .freeswitch.rig import RealRig, switch_rig, until
from .procs import REPO, ControllerProcess
from .test_real_flows import digits, quick_yaml

pytestmark = pytest.mark.freeswitch

X, Y = "+13125550471", "+13125550481"      # phones.xml: ending in 1, they answer
BEAT, TIMEOUT = 0.5, 3.0


@pytest.fixture(scope="module")
def two_switches(tmp_path_factory):
    a = switch_rig(tmp_path_factory)
    b = switch_rig(tmp_path_factory)
    yield a, b
    a.close()
    b.close()


def esl_cb(*args: str) -> str:
    done = subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"esl-cb {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


class Fleet:
    """Controller A (in-process, on switch A) and controller B (`esl-cb run`, on switch B)."""

    def __init__(self, rigs, pg_url: str, tmp_path, delay: int = 0, b_ring_timeout: int = 5,
                 b_esl_port: int | None = None) -> None:
        """`b_esl_port`: where controller B finds switch B's event socket (a relay in front of it)."""
        self.fs_a, self.fs_b = rigs
        if self.fs_b.switch.proc.poll() is not None:      # killed by an earlier test
            self.fs_b.switch.start()
        script_file = tmp_path / "quick.yaml"
        script_file.write_text(quick_yaml(delay=delay))
        phones = self.fs_a.phones                          # every phone, dialled by both switches
        self.a = RealRig(self.fs_a, pg_url, scripts.load(script_file), start=False, controller_id="ctl-a",
                         heartbeat_interval=BEAT, heartbeat_timeout=TIMEOUT, agent_ring_timeout=5,
                         callback_ring_timeout=8)
        self.a.store.controller_id = "ctl-a"
        self.db = self.a.settings.db
        esl_cb("switch", "add", "fs-a", "--esl", self.fs_a.switch.esl, "--sessions-per-second", "20",
               "--ports", "20", "--db", self.db)
        b_esl_port = b_esl_port or self.fs_b.switch.esl_port
        esl_cb("switch", "add", "fs-b", "--esl", f"127.0.0.1:{b_esl_port}", "--sessions-per-second", "20",
               "--ports", "20", "--db", self.db)
        config = tmp_path / "b.yaml"
        config.write_text(f"heartbeat_timeout: {TIMEOUT}\nheartbeat_interval: {BEAT}\ncontroller_id: ctl-b\n")
        self.log = tmp_path / "controller.log"
        self.b = ControllerProcess(tmp_path, self.db, b_esl_port, self.fs_b.controller_port,
                                   script_file, "--config", str(config), "--dial-template", phones.dial_template(),
                                   "--agent-ring-timeout", str(b_ring_timeout), "--callback-ring-timeout", "8")
        self.b_callers = []

    def start_a(self) -> None:
        self.a.start()

    def phones(self):
        return self.fs_a.phones

    def agent(self, name: str, phone: str) -> None:
        self.a.store.add_agent(name, self.fs_a.phones.dial(phone), ["support"])

    def available(self, name: str) -> None:
        self.a.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))
        self.a.store.notify("test")

    def call_b(self, ani: str):
        c = self.fs_b.caller(ani, key="1", key_after=0.5)
        self.b_callers.append(c)
        return c

    def invites_to(self, user: str) -> list:
        return self.a.invites_to(user)

    def through(self, invite) -> str:
        """Which switch sent an INVITE: its top Via's port is that switch's SIP port."""
        port = int(re.search(r"^Via:\s*SIP/2.0/UDP\s+[^:;\s]+:(\d+)", invite.text, re.M | re.I).group(1))
        return {self.fs_a.switch.sip_port: "A", self.fs_b.switch.sip_port: "B"}.get(port, f"port {port}")

    def hang_up(self, contact_id: int) -> None:
        c = self.a.contact(contact_id)
        switch = self.fs_a.switch if c.controller_id == "ctl-a" else self.fs_b.switch
        switch.api(f"uuid_kill {c.callback_leg_uuid}")

    def wait_b_draining(self, draining: bool, timeout: float = 10.0) -> None:
        """Until controller B's latest word on its share says it drains (or not)."""
        def latest():
            lines = re.findall(r"switch fs-b: .*", self.log.read_text())
            return lines and ("draining" in lines[-1]) == draining
        until(latest, timeout=timeout, what=f"controller B to see fs-b {'' if draining else 'un'}drained ({self.log})")

    def close(self) -> None:
        self.b.stop()
        for c in self.b_callers:
            c.stop()
        self.a.close()
        if self.fs_b.switch.proc.poll() is None:
            try:
                self.fs_b.switch.hangup_all()
            except Exception:
                pass


@pytest.fixture
def fleet(two_switches, pg_url, tmp_path):
    made = []

    def make(**options) -> Fleet:
        made.append(Fleet(two_switches, pg_url, tmp_path, **options))
        return made[-1]
    yield make
    for f in made:
        f.close()


def test_callers_on_both_switches_are_served_and_each_customer_is_dialled_once(fleet):
    f = fleet()
    f.start_a()
    f.agent("ann", "ann1")
    f.agent("bob", "bob1")
    f.a.call(X, key="1", key_after=0.5)                 # arrives on A
    f.call_b(Y)                                         # arrives on B
    f.a.wait_state("callback_queued", 1, timeout=20)
    f.a.wait_state("callback_queued", 2, timeout=20)
    assert {f.a.contact(1).controller_id, f.a.contact(2).controller_id} == {"ctl-a", "ctl-b"}
    f.available("ann")
    f.available("bob")
    for cid in (1, 2):
        f.a.wait_state("connected", cid, timeout=25)
    until(lambda: len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1,
          what="each customer's INVITE")
    for cid in (1, 2):
        f.hang_up(cid)
    for cid in (1, 2):
        assert f.a.wait_state("ended", cid).outcome == "callback_completed"
    assert len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1
    listed = esl_cb("switch", "list", "--db", f.db)
    assert "fs-a" in listed and "fs-b" in listed


def test_draining_switch_a_finishes_its_call_and_the_next_callback_goes_through_b(fleet):
    f = fleet()
    esl_cb("switch", "drain", "fs-b", "--db", f.db)       # the first callback must go through A
    f.wait_b_draining(True)
    f.start_a()
    f.agent("ann", "ann1")
    f.a.call(X, key="1", key_after=0.5)
    f.a.wait_state("callback_queued", 1, timeout=20)
    f.available("ann")
    x = f.a.wait_connected(1, timeout=25)
    assert x.controller_id == "ctl-a"
    assert [f.through(i) for i in f.invites_to(digits(X))] == ["A"]

    esl_cb("switch", "drain", "fs-a", "--db", f.db)
    until(lambda: f.a.controller.dispatcher.draining, timeout=5, what="A to see its switch draining")
    drained_at = time.time()
    esl_cb("switch", "undrain", "fs-b", "--db", f.db)
    f.wait_b_draining(False)
    f.a.call(Y, key="1", key_after=0.5)                 # a caller on the draining switch asks for a callback
    f.a.wait_state("callback_queued", 2, timeout=20)
    assert f.a.contact(1).state == "connected"          # the call on A is still up
    f.hang_up(1)                                        # it finishes; ann is free again
    assert f.a.wait_state("ended", 1).outcome == "callback_completed"
    y = f.a.wait_state("connected", 2, timeout=25)
    assert y.controller_id == "ctl-b"
    after = [m for m in f.phones().messages() if not m.sent and m.first_line.startswith("INVITE ")
             and m.at >= drained_at]
    assert after and {f.through(m) for m in after} == {"B"}, [(m.first_line, f.through(m)) for m in after]
    f.hang_up(2)
    assert f.a.wait_state("ended", 2).outcome == "callback_completed"
    assert len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1


def test_switch_b_killed_its_callbacks_are_dialled_once_all_through_a(fleet):
    delay, b_ring = 10, 15
    f = fleet(delay=delay, b_ring_timeout=b_ring)
    f.start_a()
    esl_cb("switch", "drain", "fs-a", "--db", f.db)       # B takes both callbacks
    until(lambda: f.a.controller.dispatcher.draining, timeout=5, what="A to see its switch draining")
    for name, phone in (("ann", "ann1"), ("carl", "carl3"), ("dan", "dan1"), ("eve", "eve1")):
        f.agent(name, phone)
    f.call_b(X)
    f.a.wait_state("callback_queued", 1, timeout=20)
    f.call_b(Y)
    f.a.wait_state("callback_queued", 2, timeout=20)
    f.available("ann")                                  # X: accepted, in CallDelaySec on B
    held = f.a.wait_state("accepted", 1, timeout=20)
    assert held.controller_id == "ctl-b"
    f.available("carl")                                 # Y: ringing carl's phone (never answers) on B
    f.a.wait_state("offered", 2, timeout=20)
    until(lambda: f.invites_to("carl3"), timeout=10, what="carl's phone to ring")
    f.available("dan")
    f.available("eve")

    f.fs_b.switch.proc.kill()                           # SIGKILL
    killed_at = time.time()
    f.fs_b.switch.proc.wait(5)
    esl_cb("switch", "undrain", "fs-a", "--db", f.db)

    def customers():
        return f.invites_to(digits(X)) + f.invites_to(digits(Y))
    until(lambda: customers(), timeout=delay + b_ring + 30, what="a customer of B's dialled through A")
    first = min(customers(), key=lambda m: m.at)
    print(f"\nkill -> first of B's callbacks dialled through A: {first.at - killed_at:.2f}s "
          f"({first.first_line.split()[1]})")
    until(lambda: len(f.invites_to(digits(X))) >= 1 and len(f.invites_to(digits(Y))) >= 1,
          timeout=delay + b_ring + 30, what="both customers dialled")
    for cid in (1, 2):
        c = f.a.wait_state("connected", cid, timeout=20)
        assert c.controller_id == "ctl-a"
    due = f.phones().answered(f.invites_to("ann1")[0]) + delay
    print(f"  X's CallDelaySec on B fell due at kill+{due - killed_at:.2f}s")
    for m in f.invites_to("dan1") + f.invites_to("eve1"):
        print(f"  agent {m.first_line.split()[1]} offered at kill+{m.at - killed_at:.2f}s through {f.through(m)}")
    for m in customers():
        print(f"  {m.first_line.split()[1]} at kill+{m.at - killed_at:.2f}s through {f.through(m)}")
    for cid in (1, 2):
        f.hang_up(cid)
        assert f.a.wait_state("ended", cid).outcome == "callback_completed"
    assert len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1
    assert {f.through(m) for m in customers()} == {"A"}


def state_of(f: Fleet, contact_id: int) -> str | None:
    try:
        return f.a.store.contact(contact_id).state
    except NotFound:
        return None


def test_a_caller_gone_between_the_agents_answer_and_the_bridge_leaves_no_agent_leg_up(fleet):
    f = fleet()
    f.start_a()
    f.agent("ann", "ann1")
    f.available("ann")
    f.a.call(X, key=None)                                   # a live caller on A, offered to ann at once
    deadline = time.time() + 20
    while state_of(f, 1) != "connected":                    # as soon as it is stored (10 ms polls)
        assert time.time() < deadline, "never connected"
        time.sleep(0.01)
    c = f.a.contact(1)
    f.fs_a.switch.api(f"uuid_kill {c.caller_uuid}")         # the caller hangs up before the bridge took
    assert f.a.wait_state("ended", 1).outcome == "handled"
    try:
        until(lambda: c.agent_leg_uuid not in f.fs_a.switch.api("show channels"), timeout=10,
              what=f"ann's leg {c.agent_leg_uuid} to be hung up once her caller left")
    except AssertionError as e:
        raise AssertionError(f"{e}; ann is {f.a.store.agent('ann').state} in the database; the leg: "
                             f"{f.fs_a.switch.api(f'uuid_getvar {c.agent_leg_uuid} current_application')}") from None
