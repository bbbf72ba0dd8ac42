"""esl-cb agent and esl-cb skill: who takes the calls, and for which queues."""
from __future__ import annotations

import json

import click

from .common import (
    EXIT_USAGE,
    console,
    db_option,
    fail,
    open_store,
    operator_option,
    store_call,
)


@click.group()
def agent() -> None:
    """Agents: who takes the calls."""


@agent.command("add")
@click.argument("name")
@click.option("--dial-string", required=True, help="How to ring the agent, e.g. user/7001.")
@click.option("--skill", "skills", multiple=True, required=True, help="A skill (repeat for several).")
@db_option
@operator_option
def agent_add(name: str, dial_string: str, skills: tuple[str, ...], db: str | None, operator: str) -> None:
    """Add an agent (logged out until made available).

    \b
    Example:
      esl-cb agent add alice --dial-string user/7001 --skill support --skill sales
    """
    from esl_cb.esl.commands import UnsafeDialString, check_dial_string

    try:
        check_dial_string(dial_string)
    except UnsafeDialString as e:
        fail(str(e), EXIT_USAGE)
    store = open_store(db)
    store_call(store.add_agent, name, dial_string, skills, operator=operator)
    click.echo(f"agent {name} added ({dial_string}; skills: {', '.join(skills)}); "
               f"make them available with: esl-cb agent available {name}")


def _agent_state(name: str, db: str | None, change: str, operator: str, reason: str | None = None) -> None:
    from esl_cb.app import AgentService

    done = store_call(AgentService(open_store(db)).set_agent_state, name, change, operator, reason,
                      fields={"reason": "--reason"})
    click.echo(f"agent {name}: {done.before} -> {done.after}" + (" when the call ends" if done.when_call_ends else ""))


@agent.command("break")
@click.argument("name")
@click.option("--reason", required=True, help="Why: lunch, training, meeting... (shown in status and reports).")
@db_option
@operator_option
def agent_break(name: str, reason: str, db: str | None, operator: str) -> None:
    """Put an agent on a break with a reason (during a call: when it ends).

    
    Example:
      esl-cb agent break alice --reason lunch && esl-cb agent available alice
    """
    _agent_state(name, db, "break", operator, reason)


@agent.command("end-wrap-up")
@click.argument("name")
@db_option
@operator_option
def agent_end_wrap_up(name: str, db: str | None, operator: str) -> None:
    """End an agent's wrap-up now: offered the next contact at once.

    
    Example:
      esl-cb agent end-wrap-up alice
    """
    _agent_state(name, db, "end_wrap_up", operator)


def _settings_options(f):
    """--wrap-up, the delays and --max-no-answer, for a skill or an agent."""
    for opt, what in reversed([
            ("wrap-up", "Seconds in WrapUp after each conversation."),
            ("reject-delay", "Seconds not offered after rejecting an offer."),
            ("busy-delay", "Seconds not offered after an offer found the phone busy."),
            ("no-answer-delay", "Seconds not offered after an offer rang out."),
            ("left-delay", "Seconds not offered after hanging up a callback during CallDelaySec."),
            ("max-no-answer", "Misses in a row before OnBreak 'no_answer' (0: never).")]):
        f = click.option(f"--{opt}", opt.replace("-", "_"), help=what)(f)
    return f


def _settings(name: str, values: dict, skill: bool, db: str | None, operator: str) -> None:
    from esl_cb.app import AgentService

    given = {}
    for key, value in values.items():
        if value is None:
            continue
        if not skill and value == "skill":
            given[key] = None
        elif value.isdigit():
            given[key] = int(value)
        else:
            fail(f"--{key.replace('_', '-')}: {value!r} is not a whole number of seconds or misses"
                 + ("" if skill else " (or 'skill': the skill's)"), EXIT_USAGE)
    if not given:
        fail("give at least one setting (see --help)", EXIT_USAGE)
    done = store_call(AgentService(open_store(db)).set_settings, name, operator, skill, **given)
    click.echo(f"{'skill' if skill else 'agent'} {name}: "
               + ", ".join(f"{k}={'the skill' + chr(39) + 's' if v is None else v}" for k, v in done.items()))


@agent.command("set")
@click.argument("name")
@_settings_options
@db_option
@operator_option
def agent_set(name: str, db: str | None, operator: str, **values) -> None:
    """Override the skill's wrap-up, delays or max-no-answer for one agent ('skill': back to the skill's).

    
    Example:
      esl-cb agent set alice --wrap-up 30 --max-no-answer skill
    """
    _settings(name, values, False, db, operator)


@agent.command("available")
@click.argument("name")
@db_option
@operator_option
def agent_available(name: str, db: str | None, operator: str) -> None:
    """Make an agent available for the next contact (also clears Refused).

    \b
    Example:
      esl-cb agent available alice
    """
    _agent_state(name, db, "available", operator)


@agent.command("unavailable")
@click.argument("name")
@db_option
@operator_option
def agent_unavailable(name: str, db: str | None, operator: str) -> None:
    """Stop offering contacts to an agent (a call in progress goes on).

    \b
    Example:
      esl-cb agent unavailable alice
    """
    _agent_state(name, db, "unavailable", operator)


@agent.command("login")
@click.argument("name")
@db_option
@operator_option
def agent_login(name: str, db: str | None, operator: str) -> None:
    """Log an agent in (Unavailable until made available).

    \b
    Example:
      esl-cb agent login alice && esl-cb agent available alice
    """
    _agent_state(name, db, "login", operator)


@agent.command("logout")
@click.argument("name")
@db_option
@operator_option
def agent_logout(name: str, db: str | None, operator: str) -> None:
    """Log an agent out (refused while they are offered a contact or on a call).

    \b
    Example:
      esl-cb agent logout alice
    """
    _agent_state(name, db, "logout", operator)


@agent.command("pin")
@click.argument("name")
@click.option("--pin", prompt=True, hide_input=True, confirmation_prompt=True,
              help="4 to 12 digits (asked for, hidden, when not given).")
@click.option("--number", help="The digits the agent keys to log in (default: their phone's user, or their id).")
@db_option
@operator_option
def agent_pin(name: str, pin: str, number: str | None, db: str | None, operator: str) -> None:
    """Set the PIN an agent keys on their phone's feature codes (stored hashed).

    \b
    Example:
      esl-cb agent pin alice --number 7001
    """
    from esl_cb.app.phones import PhoneService

    login = store_call(PhoneService(open_store(db)).set_pin, name, pin, number, operator,
                       fields={"pin": "--pin", "number": "--number"})
    click.echo(f"agent {name}: PIN set; log in on the phone with {login} and the PIN")


@agent.command("remove")
@click.argument("name")
@db_option
@operator_option
def agent_remove(name: str, db: str | None, operator: str) -> None:
    """Delete an agent (refused while they are on a call).

    \b
    Example:
      esl-cb agent remove alice
    """
    store = open_store(db)
    store_call(store.remove_agent, name, operator=operator)
    click.echo(f"agent {name} removed")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
def agent_list(as_json: bool, db: str | None) -> None:
    """List agents with state and skills.

    \b
    Example:
      esl-cb agent list --json
    """
    store = open_store(db)
    agents = store_call(store.agents)
    if as_json:
        click.echo(json.dumps(agents, default=str, indent=2))
        return
    from rich.table import Table

    table = Table("name", "state", "since", "dial string", "skills", "contact", "not offered because")
    for a in agents:
        table.add_row(a["name"], a["state"], f"{a['state_changed_at']:%H:%M:%S}", a["dial_string"],
                      ", ".join(a["skills"]), str(a["contact_id"] or ""), a["not_offered_because"])
    console().print(table)


@click.group()
def skill() -> None:
    """Skills (queues)."""


@skill.command("add")
@click.argument("name")
@click.option("--caller-id", help="The skill's outbound caller ID (see esl-cb skill caller-id).")
@click.option("--region", default="US", show_default=True, help="Country for a caller ID written without +.")
@db_option
@operator_option
def skill_add(name: str, caller_id: str | None, region: str, db: str | None, operator: str) -> None:
    """Add a skill (Reqagent also creates skills on first use).

    \b
    Example:
      esl-cb skill add billing --caller-id +13125557000
    """
    store = open_store(db)
    store_call(store.add_skill, name)
    if caller_id:
        from esl_cb.app.changes import CallerIds

        caller_id = store_call(CallerIds(store, region).set, name, caller_id, operator,
                               fields={"caller_id": "--caller-id"})
    click.echo(f"skill {name} ready" + (f"; its callbacks show {caller_id}" if caller_id else ""))


@skill.command("caller-id")
@click.argument("name")
@click.argument("number", required=False)
@click.option("--clear", is_flag=True, help="Remove the skill's outbound caller ID.")
@click.option("--region", default="US", show_default=True, help="Country for a number written without +.")
@db_option
@operator_option
def skill_caller_id(name: str, number: str | None, clear: bool, region: str, db: str | None, operator: str) -> None:
    """Show or set the number a skill's customers see on its callbacks: the one they know.

    \b
    It is shown on a callback booked without a caller ID (esl-cb callback schedule, the HTTP API) and
    on a script's Callback whose CallerID is no dialable number (the example's {DNIS} when the call
    came in on an extension such as 5000).
    Example:
      esl-cb skill caller-id support +13125557000
    """
    from esl_cb.app.changes import CallerIds

    ids = CallerIds(open_store(db), region)
    if number is None and not clear:
        shown = store_call(ids.of, name)
        click.echo(f"skill {name}: " + (f"callbacks show {shown}" if shown else "no outbound caller ID"))
        return
    if number and clear:
        fail("give a NUMBER or --clear, not both", EXIT_USAGE)
    shown = store_call(ids.set, name, None if clear else number, operator, fields={"caller_id": "NUMBER"})
    click.echo(f"skill {name}: " + (f"callbacks show {shown}" if shown else "no outbound caller ID"))


@skill.command("list")
@db_option
def skill_list(db: str | None) -> None:
    """List skills.

    \b
    Example:
      esl-cb skill list
    """
    store = open_store(db)
    for name in store_call(store.list_skills):
        click.echo(name)


@skill.command("hours")
@click.argument("name")
@click.option("--week", help="Opening hours, e.g. 'mon-fri 08:00-18:00; sat 09:00-13:00' ('24/7': always open).")
@click.option("--tz", help="IANA time zone of the hours, e.g. Europe/Amsterdam. [default: UTC]")
@click.option("--closed", help="Closed dates, comma-separated YYYY-MM-DD (holidays); '' clears them.")
@click.option("--expire-after", type=click.IntRange(min=0),
              help="Default lifetime of this skill's callbacks in seconds (0: never expire).")
@db_option
@operator_option
def skill_hours(name: str, week, tz, closed, expire_after, db: str | None, operator: str) -> None:
    """Set when a skill's callbacks may be dialled, and how long they live (what is not given stays).

    \b
    Callbacks wait outside the hours and are dialled when the skill opens; live callers are served
    whenever an agent is free. A callback past its expiry ends as callback_expired.
    Example:
      esl-cb skill hours support --week 'mon-fri 08:00-18:00; sat 09:00-13:00' --tz Europe/Amsterdam \\
                                 --closed 2026-12-25,2026-12-26 --expire-after 86400
    """
    store = open_store(db)
    if all(v is None for v in (week, tz, closed, expire_after)):
        for sid, skill_name, hours, is_open in store_call(store.skill_calendars):
            if skill_name == name:
                click.echo(f"skill {name}: {hours.describe()}; callbacks {'open' if is_open else 'closed'} now")
                return
        fail(f"no skill named {name!r}")
    from esl_cb.app import SkillService

    hours = store_call(SkillService(store).set_hours, name, week, tz, closed, expire_after, operator,
                       fields={"expire_after": "--expire-after"})
    click.echo(f"skill {name}: {hours.describe()}")


@skill.command("set")
@click.argument("name")
@_settings_options
@db_option
@operator_option
def skill_set(name: str, db: str | None, operator: str, **values) -> None:
    """Set a skill's wrap-up, delays after a miss and max-no-answer (agents may override them).

    \b
    Example:
      esl-cb skill set support --wrap-up 10 --reject-delay 10 --busy-delay 60 --no-answer-delay 60 --max-no-answer 3
    """
    _settings(name, values, True, db, operator)
