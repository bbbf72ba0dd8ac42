"""Shared fixtures: the simulator on port 0 and real PostgreSQL databases."""
from __future__ import annotations

import pytest

from esl_cb.sim.events import Identity
from esl_cb.sim.server import Simulator

LAB = Identity(core_uuid="aadb703e-a2e0-49c9-a225-eac6612582c4", hostname="fs-lab", ipv4="192.0.2.2",
               ipv6="fd00::2", version="1.11.3-dev~64bit")


@pytest.fixture
def sim():
    # The lab switch of the captures ran with max-sessions 100.
    s = Simulator(("127.0.0.1", 0), identity=LAB, heartbeat=0, max_sessions=100).start()
    yield s
    s.stop()
