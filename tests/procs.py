"""Real processes for fault-injection tests: `esl-cb sim` and `esl-cb run`, killed for real."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.common import free_port, wait_port  # noqa: F401  (shared with the benchmarks)
from esl_cb.esl.inbound import InboundConnection

REPO = Path(__file__).resolve().parent.parent


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_CB_")}
    return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


class SimProcess:
    def __init__(self, tmp: Path, controller_port: int) -> None:
        self.port = free_port()
        self.proc = spawn(["sim", "--listen", f"127.0.0.1:{self.port}", "--socket-target",
                           f"127.0.0.1:{controller_port}"], tmp / "sim.log")
        wait_port(self.port)
        self.esl = InboundConnection("127.0.0.1", self.port, "ClueCon", lambda e: None, timeout=10)
        self.esl.connect([])

    def api(self, line: str) -> str:
        return self.esl.api(line)

    def originates(self) -> list[dict]:
        return json.loads(self.api("sim originates"))

    def stop(self) -> None:
        self.esl.close()
        self.proc.terminate()
        self.proc.wait(5)


class ControllerProcess:
    def __init__(self, tmp: Path, db: str, sim_port: int, port: int, script: Path, *extra: str) -> None:
        self.args = ["run", "--db", db, "--esl", f"127.0.0.1:{sim_port}", "--listen", f"127.0.0.1:{port}",
                     "--script", str(script), "--retry-interval", "0.5", "--agent-ring-timeout", "10",
                     "--callback-ring-timeout", "10", *extra]
        self.tmp = tmp
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = spawn(self.args, self.tmp / "controller.log")
        wait_port(self.port)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
