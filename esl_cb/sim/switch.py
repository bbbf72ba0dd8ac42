"""The simulated switch: channels, SIP endpoints, and the events they cause.

Each channel walks through the same lifecycle steps a real FreeSWITCH 1.10
channel does (profile.json holds the recorded events of each step). Timing
of endpoints (ringing, answering, busy...) is scaled by time_scale.
"""
from __future__ import annotations

import logging
import random
import re
import time
import uuid as uuidlib
from typing import Callable

import gevent

from .channel import (FAIL_MODES, Channel, EndpointBehaviour, Hangup, OriginateError, deliver_dtmf, endpoint_user,
                      parse_dial_string, split_args)
from .config import SwitchConfig
from .coredb import CoreDB
from .events import Event, Identity, Sequencer, has_variables, profile, render
from .sounds import Sounds, media_seconds

log = logging.getLogger(__name__)

class Switch:
    """The core of the simulated FreeSWITCH."""

    def __init__(self, identity: Identity | None = None, time_scale: float = 1.0, seed: int | None = None,
                 socket_target: tuple[str, int] = ("127.0.0.1", 8084), max_sessions: int = 5000,
                 clock: Callable[[], float] = time.time, sessions_per_second: int = 0) -> None:
        self.identity = identity or Identity(core_uuid=str(uuidlib.uuid4()))
        self.time_scale = time_scale
        self.rng = random.Random(seed)
        self.socket_target = socket_target
        self.max_sessions = max_sessions
        # FreeSWITCH's sessions-per-second: new sessions (inbound ones too) counted per second; an
        # originate over it fails at once. 0: no limit. (Here inbound calls count but are not refused.)
        self.sessions_per_second = sessions_per_second
        self._second = (0, 0)                        # (which second, sessions begun in it)
        self.sps_last = 0                            # sessions begun in the last whole second
        self.sps_peak = 0
        self.refused_over_sps = 0
        self.clock = clock
        self.seq = Sequencer(self.identity, clock)
        self.sounds = Sounds()
        self.config = SwitchConfig(hostname=self.identity.hostname, domain=self.identity.ipv4)
        self.coredb = CoreDB(clock)
        self.channels: dict[str, Channel] = {}
        self.endpoints: dict[str, EndpointBehaviour] = {}
        self.listeners: set = set()       # inbound connections with subscriptions
        self.started = clock()
        self.sessions_since_startup = 0
        self.peak = 0
        # What the switch received, for tests and benchmarks: (time, kind, text).
        self.command_log: list[tuple[float, str, str]] = []
        self.originates: list[dict] = []
        self.answered_at: dict[str, float] = {}     # leg uuid -> when the far end answered
        self.ended_at: dict[str, float] = {}        # leg uuid -> when it hung up
        self.hangup_sent: dict[str, float] = {}     # leg uuid -> when its CHANNEL_HANGUP first left for a listener
        self._steps = profile()["steps"]
        self._events = profile()["events"]
        self.profile_connect = profile()["connect"]
        # Capture 11: without linger, the disconnect notice can overtake every hangup event.
        self.nolinger_race = False
        self.caller_name: str | None = None   # caller-id name of injected calls (default: the number)
        # The dialplan's 'socket ADDR async full' (connection.run_inbound, set by the Simulator): the core
        # does not import the socket front end.
        self.socket_app: Callable[["Switch", Channel, list], None] | None = None

    # -- time ------------------------------------------------------------
    def now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    def sleep(self, seconds: float) -> None:
        gevent.sleep(max(seconds * self.time_scale, 0))

    # -- events ----------------------------------------------------------
    def publish(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener.deliver(event)
        ch = self.channels.get(event.channel_uuid)
        if ch is not None and ch.session is not None and not ch.session.muted:
            ch.session.deliver(event)

    def emit_step(self, step: str, a: Channel, b: Channel | None = None,
                  skip: Callable[[str, Channel], bool] | None = None,
                  overrides: dict[str, str] | None = None) -> None:
        for role, template in self._steps[step]:
            ch, other = (a, b) if role == "a" else (b, a)
            if ch is None:
                continue
            name = template[0][1]
            if skip is not None and skip(name, ch):
                continue
            self.emit_channel_event(template, ch, other, overrides)

    def _wanted(self, name: str, ch: Channel) -> bool:
        """Could anyone receive this channel event? (A superset of what deliver() will send.)"""
        session = ch.session
        if session is not None and not session.muted:
            return True
        return any(listener.format is not None and (listener.all_events or name in listener.event_names)
                   for listener in self.listeners)

    def emit_channel_event(self, template: list[list[str]], ch: Channel, other: Channel | None = None,
                           overrides: dict[str, str] | None = None) -> Event | None:
        common = self.seq.common(template[0][1])      # numbered even when nobody listens, as in FreeSWITCH
        if has_variables(template):
            ch.dump_template = template
        if not self._wanted(template[0][1], ch):
            return None                                 # rendering ~200 headers nobody reads costs the sim ~1 ms
        tokens = ch.tokens()
        if other is not None:
            tokens.update(other.tokens("o_"))
        headers = render(template, common, tokens, ch.originate_vars, ch.vars, overrides)
        event = Event(headers, channel_uuid=ch.uuid)
        self.publish(event)
        return event

    def emit_simple(self, template_name: str, extra: list[tuple[str, str]], body: str = "") -> Event:
        template = self._events[template_name]
        common = self.seq.common(template_name)
        headers = []
        for k, v in template:
            if k in common:
                headers.append((k, common[k]))
            elif k.startswith("Event-") and k in ("Event-Name", "Event-Calling-File", "Event-Calling-Function",
                                                   "Event-Calling-Line-Number"):
                headers.append((k, v))
        headers.extend(extra)
        event = Event(headers, body=body)
        self.publish(event)
        return event

    def emit_api(self, command: str, arg: str) -> None:
        extra = [("API-Command", command)]
        if arg:
            extra.append(("API-Command-Argument", arg))
        self.emit_simple("API", extra)

    def emit_background_job(self, job_uuid: str, command: str, arg: str, result: str) -> None:
        extra = [("Job-UUID", job_uuid), ("Job-Command", command)]
        if arg:
            extra.append(("Job-Command-Arg", arg))
        self.emit_simple("BACKGROUND_JOB", extra, body=result)

    def emit_heartbeat(self) -> None:
        up = self.clock() - self.started
        values = {"Up-Time": self.uptime_text(), "Uptime-msec": str(int(up * 1000)),
                  "Session-Count": str(len(self.channels)), "Max-Sessions": str(self.max_sessions),
                  "FreeSWITCH-Version": self.identity.version,
                  "Session-Since-Startup": str(self.sessions_since_startup),
                  "Session-Peak-Max": str(self.peak), "Session-Peak-FiveMin": str(self.peak)}
        template = self._events["HEARTBEAT"]
        common = self.seq.common("HEARTBEAT")
        headers = [(k, common.get(k, values.get(k, v))) for k, v in template]
        self.publish(Event(headers))
        template = self._events["RE_SCHEDULE"]
        common = self.seq.common("RE_SCHEDULE")
        runtime = {"Task-Runtime": str(int(self.clock()) + 20)}
        self.publish(Event([(k, common.get(k, runtime.get(k, v))) for k, v in template]))

    def uptime_text(self) -> str:
        up = self.clock() - self.started
        secs = int(up)
        ms = int((up - secs) * 1000)
        us = int((up - secs) * 1_000_000) % 1000
        return (f"0 years, {secs // 86400} days, {secs // 3600 % 24} hours, {secs // 60 % 60} minutes, "
                f"{secs % 60} seconds, {ms} milliseconds, {us} microseconds")

    # -- endpoints -------------------------------------------------------
    def behaviour(self, number: str) -> EndpointBehaviour:
        return self.endpoints.get(number, EndpointBehaviour())

    def _new_channel(self, **kw) -> Channel:
        ch = Channel(**kw)
        ch.times["created"] = self.now_us()
        ch.db = self.coredb
        self.channels[ch.uuid] = ch
        self.sessions_since_startup += 1
        self.peak = max(self.peak, len(self.channels))
        return ch

    # -- originate -------------------------------------------------------
    def originate(self, arg: str, received_at: float | None = None) -> Channel:
        """Validate and start an outbound leg; returns at once with the ringing channel.

        Raises OriginateError for what FreeSWITCH rejects before any channel exists.
        """
        words = split_args(arg)
        if not words:
            raise OriginateError("USAGE")
        dial_full, target = words[0], " ".join(words[1:]) or "&park()"
        variables, dial = parse_dial_string(dial_full)
        var_map = dict(variables)
        tech, _, rest = dial.partition("/")
        if tech not in ("sofia", "user", "loopback"):
            raise OriginateError("CHAN_NOT_IMPLEMENTED")
        if tech == "sofia":
            profile_name, _, who = rest.partition("/")
            if profile_name == "gateway":
                gateway, _, who = who.partition("/")
                if self.config.gateway(gateway) is None:
                    self._stillborn()
                    raise OriginateError("INVALID_GATEWAY")
            elif profile_name not in self.config.profiles:
                self._stillborn()
                raise OriginateError("INVALID_PROFILE")
            if not who:
                self._stillborn()
                raise OriginateError("USER_NOT_REGISTERED")
        elif not rest or (tech == "user" and rest.partition("@")[0] in getattr(self, "phones", {}).get("unregistered", ())):
            # (as the real switch, a user with no registration too: tests/test_real_vanilla.py)
            self._stillborn()
            raise OriginateError("USER_NOT_REGISTERED")
        new_uuid = var_map.get("origination_uuid") or str(uuidlib.uuid4())
        if new_uuid in self.channels:
            raise OriginateError("DESTINATION_OUT_OF_ORDER")
        if len(self.channels) >= self.max_sessions:
            raise OriginateError("DESTINATION_OUT_OF_ORDER")
        if not self._count_session():
            self.refused_over_sps += 1
            raise OriginateError("DESTINATION_OUT_OF_ORDER")
        number = endpoint_user(dial)
        ch = self._new_channel(
            uuid=new_uuid, direction="outbound", channel_name=dial.split(",")[0],
            cid_num=var_map.get("origination_caller_id_number", "0000000000"),
            cid_name=var_map.get("origination_caller_id_name", "FreeSWITCH"),
            dest=number, originate_vars=variables)
        ch.set_state("ringing")
        self.originates.append({"t": received_at or self.clock(), "uuid": new_uuid, "dial": dial, "vars": var_map,
                                "number": number, "target": target})
        self.emit_step("out.create", ch)
        gevent.spawn(self._ring, ch, target, float(var_map.get("originate_timeout", "60") or 60))
        return ch

    def _stillborn(self) -> None:
        """The session sofia creates before it rejects the dial string, and destroys at once."""
        ch = Channel(uuid=str(uuidlib.uuid4()), direction="outbound", channel_name="N/A",
                     cid_num="", cid_name="", dest="")
        self.sessions_since_startup += 1
        self.emit_step("out.stillborn", ch)

    def _ring(self, ch: Channel, target: str, timeout: float) -> None:
        beh = self.behaviour(ch.dest)
        try:
            if beh.mode in ("busy", "reject", "fail"):
                self.sleep(min(beh.delay, 0.02) if beh.delay else 0.02)
                if ch.alive:
                    self._fail(ch, FAIL_MODES[beh.mode])
                return
            self.sleep(0.01)
            if not ch.alive:
                return
            ch.times["progress"] = self.now_us()
            self.emit_step("out.progress", ch)
            wait = timeout if beh.mode == "noanswer" else min(beh.delay, timeout)
            if ch.hungup_event.wait(max(wait * self.time_scale, 0)):
                return
            if beh.mode == "noanswer" or beh.delay > timeout:
                self._fail(ch, "NO_ANSWER")
                return
            ch.times["answered"] = self.now_us()
            self.answered_at[ch.uuid] = self.clock()
            ch.set_state("answered")
            self.emit_step("out.answer", ch)
            ch.answered_event.set()
            if ch.job is not None:
                ch.job(f"+OK {ch.uuid}\n")
            self._run_target(ch, target)
            if beh.press:
                gevent.spawn_later(max(beh.press_after * self.time_scale, 0),
                                   lambda: [self.deliver_dtmf(ch, d) for d in beh.press])
            if beh.hangup_after is not None:
                if not ch.hungup_event.wait(max(beh.hangup_after * self.time_scale, 0)):
                    self.hangup(ch, "NORMAL_CLEARING")
        except gevent.GreenletExit:
            pass

    def deliver_dtmf(self, ch: Channel, digit: str) -> None:
        deliver_dtmf(self, ch, digit)

    def _run_target(self, ch: Channel, target: str) -> None:
        m = re.match(r"&([\w:]+)\((.*)\)$", target.strip())
        app, data = (m.group(1), m.group(2)) if m else ("park", "")
        ch.state = "parked" if app == "park" else "executing"
        ch.start_app(app, data, str(uuidlib.uuid4()))      # written to the core db with its application
        self.emit_step("out.park", ch, skip=lambda name, c: name == "CHANNEL_PARK" and app != "park")

    def _fail(self, ch: Channel, cause: str) -> None:
        self.ended_at[ch.uuid] = self.clock()
        ch.hangup_cause = cause
        ch.times["hangup"] = self.now_us()
        ch.set_state("hungup")
        ch.hungup_event.set()
        step = "out.fail." + cause
        if step not in self._steps:
            step = "out.fail.NORMAL_TEMPORARY_FAILURE"
        for role, template in self._steps[step]:
            if template[0][1] == "CHANNEL_DESTROY" and ch.job is not None:
                ch.job(f"-ERR {cause}\n")
                ch.job = None
            self.emit_channel_event(template, ch)
        if ch.job is not None:
            ch.job(f"-ERR {cause}\n")
            ch.job = None
        self.channels.pop(ch.uuid, None)
        self.coredb.delete(ch)

    # -- hangup ----------------------------------------------------------
    def hangup(self, ch: Channel, cause: str = "NORMAL_CLEARING", via_app: bool = False) -> None:
        """Hang up a channel (and its bridged peer) with FreeSWITCH's event sequence."""
        if not ch.alive:
            return
        if ch.state in ("new", "ringing"):
            self._fail(ch, cause if cause != "NORMAL_CLEARING" else "ORIGINATOR_CANCEL")
            return
        peer = ch.peer if ch.peer is not None and ch.peer.alive else None
        running = (ch.app_greenlet is not None and not ch.app_greenlet.dead
                   and ch.app_greenlet is not gevent.getcurrent())
        now = self.now_us()
        for c in (ch, peer):
            if c is not None:
                self.ended_at[c.uuid] = self.clock()
                c.hangup_cause = cause if c is ch else "NORMAL_CLEARING"
                c.times["hangup"] = now
                c.set_state("hungup")
                c.hungup_event.set()
        for c in (ch, peer):
            # Stop media first so nothing it does races the hangup events.
            if c is not None and c.app_greenlet is not None and not c.app_greenlet.dead \
                    and c.app_greenlet is not gevent.getcurrent():
                c.app_greenlet.kill(Hangup(), block=False)
        if self.nolinger_race and ch.session is not None and ch.session.linger is None:
            ch.session.muted = True
        if peer is not None:
            self.emit_step("bridge.hangup", ch, peer)
        elif ch.direction == "outbound":
            self.emit_step("out.hangup_parked", ch)
        else:
            self._hangup_socket_leg(ch, via_app, running)
        for c in (ch, peer):
            if c is None:
                continue
            self.channels.pop(c.uuid, None)
            self.coredb.delete(c)
            session, c.session = c.session, None
            if c.direction == "inbound" and peer is None:
                # Listeners see the destroy; the outbound socket never does.
                for _, template in self._steps["out.hangup_parked"][-2:]:
                    self.emit_channel_event(template, c)
            if session is not None:
                session.channel_hungup()

    def _hangup_socket_leg(self, ch: Channel, via_app: bool, app_running: bool) -> None:
        step = "in.exec_hangup" if via_app else "in.caller_hangup"
        completes = 0
        digits = {"variable_digits_dialed": ch.digits_dialed or "none"}
        for _, template in self._steps[step]:
            name = template[0][1]
            if name == "CHANNEL_EXECUTE_COMPLETE" and completes == 0 and app_running and ch.app == "playback":
                # A playback cut short by the hangup reports how far it got, as an error.
                ch.finish_playback(time.time() - ch.media_started_at, respond=False)
                ch.set_var("current_application_response", "PLAYBACK ERROR")
            if name == "CHANNEL_EXECUTE_COMPLETE":
                completes += 1
                if completes == 2:        # the socket application itself ends
                    ch.app, ch.app_data = "socket", "%s:%d async full" % self.socket_target
                elif not via_app and not app_running:
                    continue
            self.emit_channel_event(template, ch, overrides=digits)

    def broadcast(self, ch: Channel, app: str, arg: str) -> None:
        """uuid_broadcast onto a parked leg: the application runs, then park resumes."""
        parked = (ch.app, ch.app_data, ch.app_uuid)
        ch.start_app(app, arg, str(uuidlib.uuid4()))
        started = self.clock()
        for _, template in self._steps["out.broadcast"]:
            if not ch.alive:
                return
            name = template[0][1]
            if name.startswith("PLAYBACK_") and app != "playback":
                continue
            if name == "PLAYBACK_STOP":
                ch.finish_playback(self.clock() - started, respond=False)
            if name == "CHANNEL_EXECUTE_COMPLETE" and app == "playback":
                ch.set_var("current_application_response", "FILE PLAYED")
            if name == "PLAYBACK_START":
                ch.media_started()
            self.emit_channel_event(template, ch)
            if name == "PLAYBACK_START":
                if ch.hungup_event.wait(media_seconds(arg) * self.time_scale):
                    return
        # Park resumes: the application on the stack is park again.
        ch.app, ch.app_data, ch.app_uuid = parked

    # -- bridge ----------------------------------------------------------
    def bridge(self, a: Channel, b: Channel) -> None:
        now = self.now_us()
        for c in (a, b):
            c.end_application_for_bridge()
        a.peer, b.peer = b, a
        a.bridge_a, b.bridge_a = True, False
        a.times["bridged"] = b.times["bridged"] = now
        # uuid_bridge runs outside the application stack: current_application keeps
        # its value (park) on both legs, as the recording shows.
        a.set_state("bridged")
        b.set_state("bridged")
        self.emit_step("bridge.bridge", a, b)
        for c in (a, b):
            beh = self.endpoints.get(c.dest) if c.direction == "outbound" else None
            if beh is not None and beh.talk is not None:
                gevent.spawn(self._talk_then_hang_up, c, c.peer, beh.talk)

    def _talk_then_hang_up(self, ch: Channel, peer: Channel, seconds: float) -> None:
        if not ch.hungup_event.wait(max(seconds * self.time_scale, 0)) and ch.peer is peer:
            self.hangup(ch, "NORMAL_CLEARING")

    # -- inbound calls ---------------------------------------------------
    def _count_session(self) -> bool:
        """Count a new session in this second; False when it is over sessions-per-second."""
        second = int(self.clock())
        if self._second[0] != second:
            self.sps_last = self._second[1] if self._second[0] == second - 1 else 0
        n = self._second[1] + 1 if self._second[0] == second else 1
        if self.sessions_per_second and n > self.sessions_per_second:
            return False
        self._second = (second, n)
        self.sps_peak = max(self.sps_peak, n)
        return True

    def inbound_call(self, from_number: str, to_did: str) -> Channel:
        self._count_session()
        ch = self._new_channel(
            uuid=str(uuidlib.uuid4()), direction="inbound",
            channel_name=f"sofia/lab/{from_number}@127.0.0.1:5070",
            cid_num=from_number, cid_name=self.caller_name or from_number, dest=to_did)
        ch.set_state("answered")
        ch.times["answered"] = self.now_us()
        answer_uuid = str(uuidlib.uuid4())

        def run_answer(name: str, c: Channel) -> bool:
            if name == "CHANNEL_EXECUTE":         # the dialplan's answer starts here
                c.start_app("answer", "", answer_uuid)
            return False
        self.emit_step("in.arrive", ch, skip=run_answer)
        ch.answered_event.set()
        return ch
