"""Dialplan applications run on a simulated caller's channel (sendmsg execute).

Each runs in its own greenlet so uuid_break (Break) and hangup (Hangup) can
interrupt it, as they interrupt the media thread in FreeSWITCH.
"""
from __future__ import annotations

import re
import time
from collections import deque
from typing import TYPE_CHECKING

import gevent

from .channel import Channel, Hangup
from .sounds import FOREVER, media_seconds

if TYPE_CHECKING:
    from .switch import Switch


class Break(Exception):
    """uuid_break: stop the application that is running now."""


def _wait_digits(switch: "Switch", ch: Channel, count: int, timeout: float, terminators: str,
                 play: str | None) -> str:
    """Collect up to count digits; media plays until the first digit arrives.

    As FreeSWITCH does (tests/test_learned_menu_interrupted.py): uuid_break during the prompt stops the
    prompt only, and the read goes on to its timeout; one during the read is held and cuts the next
    sound (the invalid-input one). While the read waits, `ch.reading` is set: a uuid_bridge then ends
    the application with read_result failure (during the prompt, with none)."""
    got = ""
    if play:
        end_play = gevent.Timeout(media_seconds(play) * switch.time_scale)
        end_play.start()
        try:
            while not ch.dtmf:
                ch.dtmf_event.clear()
                ch.dtmf_event.wait()
        except gevent.Timeout as t:
            if t is not end_play:
                raise
        except Break:
            pass
        finally:
            end_play.cancel()
    ch.reading = True
    try:
        while len(got) < count:
            if ch.dtmf:
                d = ch.dtmf.pop(0)
                if d in terminators:
                    break
                got += d
                continue
            if not _wait_for_digit(switch, ch, timeout * switch.time_scale):
                break
    finally:
        ch.reading = False
    return got


def _wait_for_digit(switch: "Switch", ch: Channel, seconds: float) -> bool:
    """Wait up to `seconds` for a key; a uuid_break meanwhile is held for the next sound."""
    until = time.monotonic() + max(seconds, 0)
    while True:
        ch.dtmf_event.clear()
        try:
            return ch.dtmf_event.wait(max(until - time.monotonic(), 0))
        except Break:
            ch.break_pending = True


def finish_playback(ch: Channel, seconds: float, respond: bool = True) -> None:
    """The variables playback leaves on the channel when it ends."""
    ch.finish_playback(seconds, respond)


def _play_through(switch: "Switch", ch: Channel, path: str) -> None:
    """Play a short sound to its end (pagd's invalid-input sound), if the switch has it; a break held
    from the read cuts it at once, as does one while it plays."""
    if not path or switch.sounds.playable(path) is None:
        return
    seconds = media_seconds(path)
    if ch.break_pending:
        ch.break_pending = False
        seconds = 0.0
    else:
        try:
            gevent.sleep(seconds * switch.time_scale)
        except Break:
            seconds = 0.0
    ch.finish_playback(seconds, respond=False)


def run(switch: "Switch", ch: Channel, app: str, arg: str) -> str:
    """Execute one application. Its Application-Response reaches the events through the channel's
    current_application_response variable (set by playback), as in FreeSWITCH."""
    if app == "answer" or app == "pre_answer" or app == "ring_ready":
        return "_none_"
    if app == "playback":
        ch.media_started()
        if switch.sounds.playable(arg) is None:
            # Not on the switch: playback ends at once (esl-captures 12).
            ch.set_var("current_application_response", "FILE NOT FOUND")
            return "FILE NOT FOUND"
        started = switch.clock()
        try:
            gevent.sleep(media_seconds(arg) * switch.time_scale)
        except Break:
            finish_playback(ch, switch.clock() - started)
            raise
        finish_playback(ch, switch.clock() - started)
        return "FILE PLAYED"
    if app == "sleep":
        gevent.sleep(int(arg or 0) / 1000 * switch.time_scale)
        return "_none_"
    if app == "set":
        name, _, value = arg.partition("=")
        ch.set_var(name, value)
        return "_none_"
    if app == "export":
        name, _, value = arg.partition("=")
        ch.set_var(name, value)
        return "_none_"
    if app == "park":
        ch.set_state("parked")
        gevent.sleep(FOREVER)
        return "_none_"
    if app == "play_and_get_digits":
        parts = arg.split()
        # min max tries timeout terminators file invalid_file var_name regexp [digit_timeout]
        if len(parts) < 6:
            return "_none_"
        mn, mx, tries, timeout_ms = (int(x) for x in parts[:4])
        terminators, path = parts[4], parts[5]
        invalid = parts[6] if len(parts) > 6 else ""
        var = parts[7] if len(parts) > 7 else "pagd_input"
        regex = parts[8] if len(parts) > 8 else r"\d+"
        ch.set_var(var, None)
        ch.break_pending = False
        if switch.sounds.playable(path) is None:
            # A prompt the switch lacks: the invalid-input sound plays and the application returns,
            # no digit and no read_result, whatever its timeout (esl-captures 12: after 0.28 s).
            ch.media_started()
            _play_through(switch, ch, invalid)
            return "_none_"
        for _ in range(max(tries, 1)):
            digits = _wait_digits(switch, ch, mx, timeout_ms / 1000, terminators, path)
            if len(digits) >= mn and re.fullmatch(regex, digits):
                ch.set_var("read_result", "success")
                ch.set_var(var, digits)
                return "_none_"
            _play_through(switch, ch, invalid)
        ch.set_var("read_result", "failure")      # no key or a wrong one, every try (measured)
        return "_none_"
    return "_none_"


def start(switch: "Switch", ch: Channel, app: str, arg: str, event_uuid: str) -> gevent.Greenlet:
    """Run app on the channel with FreeSWITCH's EXECUTE / EXECUTE_COMPLETE events."""
    steps = switch._steps

    def body() -> None:
        if not ch.alive:
            return
        if app == "hangup":
            run_hangup(switch, ch, arg or "NORMAL_CLEARING", event_uuid)
            return
        ch.start_app(app, arg, event_uuid)
        if app == "playback":
            execute, complete = steps["in.exec_playback"][0][1], steps["in.done_playback"][0][1]
        elif app == "play_and_get_digits":
            execute, complete = steps["in.exec_pagd"][0][1], steps["in.done_pagd"][0][1]
        else:
            execute, complete = steps["in.exec_answer"][0][1], steps["in.exec_answer"][1][1]
        switch.emit_channel_event(execute, ch)
        try:
            run(switch, ch, app, arg)
        except Break:
            pass                       # broken media completes normally (FILE PLAYED, capture 07)
        except (Hangup, gevent.GreenletExit):
            return
        if not ch.alive:
            return
        switch.emit_channel_event(complete, ch)

    g = gevent.spawn(body)
    ch.app_greenlet = g
    return g


def run_hangup(switch: "Switch", ch: Channel, cause: str, event_uuid: str) -> None:
    """The hangup application: its own EXECUTE/COMPLETE around the hangup events."""
    ch.start_app("hangup", cause, event_uuid)
    ch.hangup_cause = cause
    switch.hangup(ch, cause, via_app=True)


def deliver_dtmf(switch: "Switch", ch: Channel, digit: str) -> None:
    """A digit from the caller's phone (RFC 2833): DTMF event, then the collector sees it."""
    switch.deliver_dtmf(ch, digit)


def queue_app(switch: "Switch", ch: "Channel", app: str, arg: str, event_uuid: str) -> None:
    """Applications sent with sendmsg run one after another on the channel."""
    q = ch.__dict__.get("_app_queue")
    if q is None:
        q = ch.__dict__["_app_queue"] = deque()
    q.append((app, arg, event_uuid))
    runner = ch.__dict__.get("_app_runner")
    if runner is None or runner.dead:
        ch.__dict__["_app_runner"] = gevent.spawn(_run_queue, switch, ch, q)


def _run_queue(switch: "Switch", ch: "Channel", q: deque) -> None:
    while q and ch.alive:
        app, arg, event_uuid = q.popleft()
        g = start(switch, ch, app, arg, event_uuid)
        g.join()
