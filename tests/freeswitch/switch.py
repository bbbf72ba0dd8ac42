"""A real FreeSWITCH for tests: our own configuration (tests/freeswitch/conf), every folder in a
temporary directory, every port free at start, loopback only.

The binary is /usr/local/freeswitch/bin/freeswitch (installed by ../shared/freeswitch/install);
ESL_CB_FREESWITCH points elsewhere. Tests that need it and SIPp skip, with the reason, when they
are missing, unless ESL_CB_REQUIRE_FREESWITCH=1 (CI), where they fail instead.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
import wave
from pathlib import Path

import pytest

from esl_cb.esl.inbound import ESLError, InboundConnection

CONF = Path(__file__).resolve().parent / "conf"
FREESWITCH = os.environ.get("ESL_CB_FREESWITCH", "/usr/local/freeswitch/bin/freeswitch")
REQUIRED = os.environ.get("ESL_CB_REQUIRE_FREESWITCH") == "1"
PASSWORD = "ClueCon"
# The prompts a stock English sound package has and our example script plays, as the package lays
# them out (<prefix>/<dir>/8000/<file>); the switch resolves 'ivr/x.wav' the same way.
STOCK_PROMPTS = ("ivr/ivr-if_you_would_like_us_to_call_back.wav", "digits/1.wav", "ivr/ivr-thank_you.wav",
                 "ivr/ivr-we_will_return_your_call_at_this_number.wav", "ivr/ivr-you_are_number.wav",
                 "ivr/ivr-in_line.wav", "ivr/ivr-estimated_hold_time.wav", "ivr/ivr-hold_connect_call.wav",
                 # the numbers Queuestatus' sound variables say (domain/speech.py, as mod_say_en does)
                 *(f"digits/{n}.wav" for n in (0, *range(2, 20), *range(20, 100, 10))),
                 "digits/hundred.wav", "digits/thousand.wav", "digits/million.wav", "time/minute.wav",
                 "time/minutes.wav", "ivr/ivr-to_accept_press_one.wav",
                 # agents' feature codes (app/phones.py)
                 "voicemail/vm-enter_id.wav", "voicemail/vm-enter_pass.wav", "voicemail/vm-fail_auth.wav",
                 "voicemail/vm-goodbye.wav", "ivr/ivr-you_are_now_logged_in.wav", "ivr/ivr-you_are_now_logged_out.wav",
                 "ivr/ivr-please_try_again.wav")


def missing_tools() -> str | None:
    """Why the real-switch tests cannot run here, or None."""
    if not os.access(FREESWITCH, os.X_OK):
        return f"FreeSWITCH is not installed at {FREESWITCH} (run ../shared/freeswitch/install or set ESL_CB_FREESWITCH)"
    if shutil.which("sipp") is None:
        return "sipp is not installed (../shared/freeswitch/install installs it)"
    return None


def require_tools() -> None:
    reason = missing_tools()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"ESL_CB_REQUIRE_FREESWITCH=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port(udp_too: bool = True) -> int:
    """A port free for TCP (and UDP: SIP listens on both) on loopback."""
    for _ in range(50):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        try:
            if udp_too:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    u.bind(("127.0.0.1", port))
                finally:
                    u.close()
            return port
        except OSError:
            continue
        finally:
            t.close()
    raise RuntimeError("no free port")


def write_wav(path: Path, seconds: float, hz: float = 440.0) -> None:
    """A prompt the switch can play: 8 kHz mono 16-bit, a soft tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(8000 * seconds)
    frames = b"".join(struct.pack("<h", int(3000 * math.sin(2 * math.pi * hz * i / 8000))) for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames)


class RealSwitch:
    """One FreeSWITCH process with our test configuration."""

    def __init__(self, root: Path, socket_target: str, sessions_per_second: int = 30, max_sessions: int = 100,
                 music: bool = True, prompts: tuple[str, ...] = STOCK_PROMPTS) -> None:
        self.root = root
        self.socket_target = socket_target
        self.sessions_per_second = sessions_per_second
        self.max_sessions = max_sessions
        self.esl_port = free_port()
        self.sip_port = free_port()
        base = random.randrange(20000, 59000, 200)
        self.rtp = (base, base + 199)
        for d in ("conf", "log", "db", "run", "sounds") + (("music",) if music else ()):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.sound_prefix = root / "sounds" / "en" / "us" / "callie"
        for prompt in prompts:
            self.add_prompt(prompt)
        if music:
            write_wav(root / "music" / "hold.wav", 5.0, 330.0)
        self.proc: subprocess.Popen | None = None
        self._esl: InboundConnection | None = None

    @property
    def esl(self) -> str:
        return f"127.0.0.1:{self.esl_port}"

    def dial(self, user: str) -> str:
        """A dial string for one of the test phones (tests/freeswitch/sipp/phones.xml)."""
        return f"sofia/test/{user}@127.0.0.1:{self.phones_port}"

    phones_port = 0      # set by the rig once the phones run

    def add_prompt(self, relative: str, seconds: float = 0.4) -> None:
        d, name = os.path.split(relative)
        write_wav(self.sound_prefix / d / "8000" / name, seconds)

    def _write_vars(self) -> None:
        values = {
            "esl_port": self.esl_port, "esl_password": PASSWORD, "sip_port": self.sip_port,
            "rtp_start": self.rtp[0], "rtp_end": self.rtp[1], "max_sessions": self.max_sessions,
            "sessions_per_second": self.sessions_per_second, "log_dir": self.root / "log",
            "db_dir": self.root / "db", "music_dir": self.root / "music", "sounds_dir": self.root / "sounds",
            "sound_prefix": self.sound_prefix, "socket_target": self.socket_target, "domain": "127.0.0.1",
        }
        lines = [f'  <X-PRE-PROCESS cmd="set" data="{k}={v}"/>' for k, v in values.items()]
        (self.root / "conf" / "vars.xml").write_text("<include>\n" + "\n".join(lines) + "\n</include>\n")
        shutil.copy(CONF / "freeswitch.xml", self.root / "conf" / "freeswitch.xml")

    def start(self, timeout: float = 30.0) -> "RealSwitch":
        self._write_vars()
        r = self.root
        out = (r / "log" / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [FREESWITCH, "-nf", "-nc", "-np", "-nonat", "-nonatmap", "-conf", str(r / "conf"), "-log",
             str(r / "log"), "-db", str(r / "db"), "-run", str(r / "run")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FreeSWITCH exited at start ({self.proc.returncode}); see {r / 'log'}")
            try:
                if "RUNNING" in self.api("sofia status"):
                    return self
            except (ESLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"FreeSWITCH did not come up within {timeout}s; see {r / 'log'}")

    def api(self, cmd: str, timeout: float = 10.0) -> str:
        if self._esl is None or not self._esl.connected:
            self._esl = InboundConnection("127.0.0.1", self.esl_port, PASSWORD, lambda e: None, timeout=5)
            self._esl.connect([])
        return self._esl.api(cmd, timeout=timeout)

    def channels(self) -> list[dict]:
        import json
        return json.loads(self.api("show channels as json")).get("rows", [])

    def hangup_all(self) -> None:
        """Leave nothing behind for the next test."""
        self.api("hupall NORMAL_CLEARING")
        deadline = time.time() + 10
        while time.time() < deadline and int(self.api("show channels count").split()[0]) > 0:
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        # FreeSWITCH sometimes hangs for good in its module clean-up; a test does not wait for it.
        if self._esl is not None:
            self._esl.close()
            self._esl = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return (self.root / "log" / "freeswitch.log").read_text(errors="replace")
        except OSError:
            return ""
