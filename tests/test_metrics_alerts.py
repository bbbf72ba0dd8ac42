"""The series the alert rules and the dashboard read (deploy/prometheus, deploy/grafana), sampled
from a controller on the simulator and a real PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine, text

from esl_cb.controller.metrics import Metrics

from .fixtures import wait_until
from .harness import Harness
from .test_concurrency import seed_callbacks


def value(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def set_open(h: Harness, skill: str, is_open: bool) -> None:
    """Close a skill for today (or open it again); the controller's calendar loop applies it."""
    h.store.set_skill_hours(skill, closed="" if is_open else datetime.now(timezone.utc).date().isoformat())
    wait_until(lambda: h.count("SELECT count(*) FROM skills WHERE name = :n AND callbacks_open = :o", n=skill,
                               o=is_open), 5, what=f"{skill} {'open' if is_open else 'closed'}")


def test_queue_depth_goes_back_to_zero_when_the_queue_empties(pg_url):
    h = Harness(pg_url, callback_wait_target="support=600,1200")
    try:
        h.agent("ann", "1001", answer=0.05)
        h.call("3125550100")                                   # waits: nobody is available
        h.wait_state("queued")
        metrics = Metrics(h.controller)
        metrics.sample()
        assert value(metrics, "esl_cb_queue_depth", skill="support") == 1
        h.available("ann")
        h.wait_connected()
        metrics.sample()
        assert value(metrics, "esl_cb_queue_depth", skill="support") == 0, "the last depth stayed on"
    finally:
        h.close()


def test_per_skill_agents_hours_callback_waits_and_the_heartbeat(pg_url):
    h = Harness(pg_url, callback_wait_target="support=600,1200")
    try:
        h.agent("ann", "1001")
        h.store.add_skill("billing")
        h.agent("bob", "1002", skill="billing", available=True)
        seed_callbacks(h.store, 1)                            # a callback waits; nobody for support
        h.wait_state("callback_queued")
        ago = datetime.now(timezone.utc) - timedelta(seconds=700)
        with h.store.engine.begin() as conn:
            conn.execute(text("UPDATE contacts SET callback_requested_at = :t"), {"t": ago})
        set_open(h, "billing", False)
        metrics = Metrics(h.controller)
        wait_until(lambda: h.count("SELECT count(*) FROM controllers WHERE id = 'test'"), 10,
                   what="the controller's first heartbeat")
        metrics.sample()
        assert value(metrics, "esl_cb_skill_agents", skill="support", state="LoggedOut") == 1
        assert value(metrics, "esl_cb_skill_agents", skill="support", state="Available") == 0
        assert value(metrics, "esl_cb_skill_agents", skill="billing", state="Available") == 1
        assert value(metrics, "esl_cb_skill_open", skill="support") == 1
        assert value(metrics, "esl_cb_skill_open", skill="billing") == 0
        assert 699 < value(metrics, "esl_cb_callback_oldest_wait_seconds", skill="support") < 760
        assert value(metrics, "esl_cb_callback_oldest_wait_seconds", skill="billing") == 0
        assert value(metrics, "esl_cb_callback_wait_target_seconds", skill="support") == 600
        assert value(metrics, "esl_cb_callback_wait_target_seconds", skill="billing") == 1200
        port = metrics.start(0)
        assert port
        wait_until(lambda: value(metrics, "esl_cb_esl_connected") == 1 and value(metrics, "esl_cb_database_up") == 1,
                   5, what="the sample loop")
        assert 0 <= value(metrics, "esl_cb_heartbeat_age_seconds") < h.settings.heartbeat_interval + 2

        # Closed, the skill's callbacks wait by design; opened again, they have waited since the opening.
        set_open(h, "support", False)
        metrics.sample()
        assert value(metrics, "esl_cb_callback_oldest_wait_seconds", skill="support") == 0
        set_open(h, "support", True)
        metrics.sample()
        assert value(metrics, "esl_cb_callback_oldest_wait_seconds", skill="support") < 30

        # A callback scheduled for later (NotBefore) is not waiting yet.
        with h.store.engine.begin() as conn:
            conn.execute(text("UPDATE contacts SET not_before = :t"), {"t": datetime.now(timezone.utc)
                                                                       + timedelta(hours=1)})
        metrics.sample()
        assert value(metrics, "esl_cb_callback_oldest_wait_seconds", skill="support") == 0
        metrics.stop()
    finally:
        h.close()


def test_the_heartbeat_ages_while_the_database_is_away(pg_url):
    h = Harness(pg_url)
    try:
        metrics = Metrics(h.controller)
        wait_until(lambda: h.count("SELECT count(*) FROM controllers WHERE id = 'test'"), 10,
                   what="the controller's first heartbeat")
        metrics.sample()
        beat = metrics._heartbeat_at
        real_engine = h.store.engine
        h.store.engine = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/eslcb")   # the database away
        metrics.start(0)
        wait_until(lambda: value(metrics, "esl_cb_database_up") == 0, 5, what="the failed sample")
        wait_until(lambda: value(metrics, "esl_cb_heartbeat_age_seconds") > 2, 10, what="the heartbeat ageing")
        assert metrics._heartbeat_at == beat
        metrics.stop()
        h.store.engine = real_engine
    finally:
        h.close()
