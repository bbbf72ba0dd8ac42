"""The Prometheus endpoint answers with the documented series."""
from __future__ import annotations

import urllib.request

from esl_cb.controller.metrics import Metrics

from .fixtures import wait_until
from .harness import Harness
from .test_concurrency import seed_callbacks


def test_metrics_endpoint_lists_the_series(pg_url):
    h = Harness(pg_url)
    try:
        h.agent("ann", "1001", available=True)
        metrics = Metrics(h.controller)
        h.controller.metrics = metrics
        port = metrics.start(0)
        body = wait_until(lambda: (b := urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
                          and 'esl_cb_agents{state="Available"} 1.0' in b and b, what="metrics sampled")
        for series in ("esl_cb_queue_depth", "esl_cb_contacts", "esl_cb_callbacks", "esl_cb_agents",
                       "esl_cb_ports_in_use", "esl_cb_ports_limit", "esl_cb_dial_outcomes_total",
                       "esl_cb_esl_reconnects_total", "esl_cb_event_loop_lag_seconds"):
            assert series in body, series
        # A callback dialled at its CallDelaySec due time is measured (how late the originate left).
        number = seed_callbacks(h.store, 1)[0]
        h.sim_api(f"endpoint {number} answer 0.05")
        h.controller.wake_dispatcher()
        body = wait_until(lambda: (b := urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
                          and "esl_cb_callback_dial_late_seconds_count 1.0" in b and b, what="the dial measured")
        assert 'esl_cb_callback_dial_late_seconds_bucket{le="5.0"} 1.0' in body
    finally:
        h.close()
