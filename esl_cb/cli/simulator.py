"""esl-cb sim: the FreeSWITCH simulator on its own (it speaks the real ESL wire protocol)."""
from __future__ import annotations

import logging

import click

from esl_cb.netaddr import parse_hostport

from .common import (
    EXIT_FAILED,
    HOSTPORT,
    fail,
    patch_gevent,
)


@click.command()
@click.option("--listen", type=HOSTPORT, default="127.0.0.1:8021", show_default=True,
              help="Where the simulated switch accepts inbound ESL connections.")
@click.option("--password", default="ClueCon", show_default=True, help="ESL password clients must send.")
@click.option("--socket-target", type=HOSTPORT, default="127.0.0.1:8084", show_default=True,
              help="The controller's outbound-socket server that simulated calls are handed to.")
@click.option("--time-scale", type=click.FloatRange(min=0.0001), default=1.0, show_default=True,
              help="Multiply every simulated delay (ringing, prompts); 0.1 runs ten times faster.")
@click.option("--seed", type=int, default=None, help="Seed for the simulator's random choices.")
@click.option("--event-lag-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Hold events back like a real switch does (it polls every 20 ms).")
@click.option("--max-sessions", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--sessions-per-second", type=click.IntRange(min=0), default=0, show_default=True,
              help="Refuse originates over this many new sessions a second, as FreeSWITCH does (0: no limit).")
def sim(listen, password, socket_target, time_scale, seed, event_lag_ms, max_sessions, sessions_per_second) -> None:
    """Run the FreeSWITCH simulator (speaks the real ESL wire protocol).

    \b
    Example:
      esl-cb sim --listen 127.0.0.1:8021 --socket-target 127.0.0.1:8084
      # then, from any ESL client:  api sim call 3125550199 5000 dtmf 1 31
    """
    patch_gevent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from esl_cb.sim.server import Simulator

    server = Simulator(parse_hostport(listen), password=password, socket_target=parse_hostport(socket_target),
                       time_scale=time_scale, seed=seed, event_lag=event_lag_ms / 1000, max_sessions=max_sessions,
                       sessions_per_second=sessions_per_second)
    click.echo(f"FreeSWITCH simulator on {listen}; calls go to {socket_target}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    except OSError as e:
        fail(f"cannot listen on {listen}: {e.strerror}", EXIT_FAILED)
