"""The esl-cb command line.

Exit codes: 0 success; 1 the operation failed (the message says why);
2 bad usage or input (click's convention); 3 a service (database, FreeSWITCH) is unreachable.
"""
from __future__ import annotations

import logging

import click

from esl_cb.netaddr import parse_hostport


class HostPort(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_hostport(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


HOSTPORT = HostPort()


@click.group()
@click.version_option(package_name="esl-cb")
def main() -> None:
    """esl-cb: queued callbacks for FreeSWITCH contact centres."""


@main.command()
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
def sim(listen, password, socket_target, time_scale, seed, event_lag_ms, max_sessions) -> None:
    """Run the FreeSWITCH simulator (speaks the real ESL wire protocol).

    \b
    Example:
      esl-cb sim --listen 127.0.0.1:8021 --socket-target 127.0.0.1:8084
      # then, from any ESL client:  api sim call 3125550199 5000 dtmf 1 31
    """
    from gevent import monkey

    monkey.patch_all()
    from esl_cb.sim.server import Simulator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Simulator(listen, password=password, socket_target=socket_target, time_scale=time_scale,
                       seed=seed, event_lag=event_lag_ms / 1000, max_sessions=max_sessions)
    click.echo(f"FreeSWITCH simulator on {listen[0]}:{listen[1]}; calls go to {socket_target[0]}:{socket_target[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
