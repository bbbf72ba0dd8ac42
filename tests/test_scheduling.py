"""--realtime-priority and the doctor's scheduling verdict (issue 12: who gets a CPU first)."""
from __future__ import annotations

import os

import pytest

from esl_cb.config import ConfigError, Settings
from esl_cb.domain.script import DEFAULT_SCRIPT
from esl_cb.scheduling import Priority, priority_of, verdict

from .fixtures import wait_until
from .procs import ControllerProcess, SimProcess, free_port, spawn

NORMAL = Priority("normal", 0)
FIFO10 = Priority("SCHED_FIFO", 10)
RR20 = Priority("SCHED_RR", 20)


def test_a_switch_running_realtime_above_the_controller_is_a_warning():
    fine, found, todo = verdict(FIFO10, 0, NORMAL)
    assert not fine
    assert found == "controller normal, FreeSWITCH SCHED_FIFO 10, PostgreSQL normal"
    assert "--realtime-priority 20" in todo and "CPUSchedulingPriority=20" in todo
    assert not verdict(FIFO10, 10, RR20)[0]                      # equal is not above: FIFO 10 runs first
    assert not verdict(Priority("SCHED_FIFO", 30), 20, RR20)[0]
    assert "--realtime-priority 31" in verdict(Priority("SCHED_FIFO", 30), 20, RR20)[2]


def test_a_realtime_controller_waiting_for_a_normal_database_is_a_warning():
    fine, _, todo = verdict(FIFO10, 20, NORMAL)
    assert not fine and "PostgreSQL on this host SCHED_RR 20" in todo
    assert verdict(FIFO10, 20, RR20)[0]
    assert verdict(FIFO10, 20, None)[0]                          # the database on another host


def test_a_switch_at_the_top_priority_cannot_be_outrun():
    fine, _, todo = verdict(Priority("SCHED_FIFO", 99), 20, RR20)
    assert not fine and "highest real-time priority (99)" in todo and "--realtime-priority 100" not in todo


def test_normal_everywhere_or_a_remote_switch_is_fine():
    assert verdict(NORMAL, 0, NORMAL) == (True, "controller normal, FreeSWITCH normal, PostgreSQL normal", "")
    assert verdict(None, 0, None) == (True, "controller normal, FreeSWITCH on another host, "
                                            "PostgreSQL on another host", "")
    assert verdict(None, 0, None, "not used")[1] == "controller normal, FreeSWITCH on another host, PostgreSQL not used"


@pytest.mark.parametrize("value", [-1, 100])
def test_a_priority_out_of_range_is_refused(value):
    with pytest.raises(ConfigError, match=f"realtime_priority must be 0 .* 1-99, not {value}"):
        Settings(db="sqlite://", realtime_priority=value).validate()


def test_run_with_a_realtime_priority_runs_sched_rr(tmp_path, pg_url):
    """As root (CI) the controller runs SCHED_RR 20; without CAP_SYS_NICE it refuses to start and
    says what it needs, rather than run at a priority it was not given."""
    port = free_port()
    sim = SimProcess(tmp_path, port)
    script = DEFAULT_SCRIPT
    try:
        if os.geteuid() != 0:
            proc = spawn(["run", "--db", pg_url, "--esl", f"127.0.0.1:{sim.port}", "--listen", f"127.0.0.1:{port}",
                          "--script", str(script), "--realtime-priority", "20"], tmp_path / "refused.log")
            assert proc.wait(30) == 1
            assert "needs CAP_SYS_NICE" in (tmp_path / "refused.log").read_text()
            return
        ctl = ControllerProcess(tmp_path, pg_url, sim.port, port, script, "--realtime-priority", "20")
        try:
            assert priority_of(ctl.proc.pid) == RR20
            wait_until(lambda: "running SCHED_RR 20" in (tmp_path / "controller.log").read_text(), 10,
                       what="the controller to say it runs SCHED_RR 20")
        finally:
            ctl.stop()
    finally:
        sim.stop()


def test_the_priority_comes_from_the_environment_as_the_readme_shows():
    from esl_cb.config import load_settings
    assert load_settings(environ={"ESL_CB_REALTIME_PRIORITY": "20"}).realtime_priority == 20
    with pytest.raises(ConfigError, match="setting realtime_priority: 'high' is not a valid int"):
        load_settings(environ={"ESL_CB_REALTIME_PRIORITY": "high"})
