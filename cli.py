"""The esl-cb command line: the top-level group. Each command group lives in esl_cb/cli/.

Exit codes (for scripts and monitoring):
  0  success
  1  the operation failed; the message says why and what to do
  2  bad usage or invalid input (unknown option, invalid number, invalid script)
  3  a service is unreachable (the database or FreeSWITCH)
"""
from __future__ import annotations

import click

from esl_cb.cli import (agents, api, callbacks, database, demo, policy, reports, running, scripts, simulator, switches,
                        tokens)


@click.group()
@click.version_option(package_name="esl-cb")
def main() -> None:
    """esl-cb: queued callbacks for FreeSWITCH contact centres.

    \b
    First steps:
      esl-cb demo                       # see it work against the built-in simulator
      esl-cb db upgrade --db URL        # create the tables
      esl-cb agent add alice --dial-string user/7001 --skill support
      esl-cb run --db URL --esl 127.0.0.1:8021
    """


for command in (database.db, running.run, running.doctor, scripts.script, agents.agent, agents.skill, reports.status,
                callbacks.callback, reports.report, policy.audit, demo.demo, simulator.sim, switches.switch, api.api,
                tokens.token):
    main.add_command(command)


if __name__ == "__main__":
    main()
