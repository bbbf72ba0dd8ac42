"""`esl-cb doctor`'s checks of agents' phones (issue 20): each tracked phone registered (a warning per
agent whose phone has none: not offered), and, once agents have PINs, the feature-code extension in
the switch's dialplan (freeswitch_conf/dialplan/default/60_esl_cb_features.xml).

`sofia_contact USER@DOMAIN` answers `error/user_not_registered` for a user without a registration;
`xml_locate dialplan` prints the switch's whole dialplan (mod_commands)."""
from __future__ import annotations

from typing import Callable

from .domain.phones import NOT_REGISTERED, tracked_phone

OK, WARN = "OK", "WARN"


def phones(api: Callable[[str], str], domain: Callable[[], str], db, agents: Callable[[], list[tuple[str, str]]],
           result) -> list:
    try:
        from sqlalchemy import text

        listed = agents()
        with db.connect() as conn:
            pins = conn.execute(text("SELECT count(*) FROM agents WHERE pin_hash IS NOT NULL")).scalar()
    except Exception as e:                          # not migrated (0013), or no database
        return [result("phones", WARN, f"not checked: cannot read the agents' phones ({type(e).__name__})",
                       "fix the database check first")]
    return phone_checks(api, domain, listed, pins or 0, result)


def phone_checks(api: Callable[[str], str], domain: Callable[[], str], agents: list[tuple[str, str]],
                 with_pins: int, result) -> list:
    """[phones, feature codes] as doctor Results (`result`: doctor.Result)."""
    out = []
    tracked = [(name, tracked_phone(dial)) for name, dial in agents]
    tracked = [(name, phone) for name, phone in tracked if phone is not None]
    if not tracked:
        out.append(result("phones", OK, "no agent's dial string is a registered user (user/N): nothing to track"))
    else:
        missing = []
        for name, phone in tracked:
            where = phone.domain or domain()
            if api(f"sofia_contact {phone.user}@{where}").strip().startswith(NOT_REGISTERED):
                missing.append(f"agent {name}: phone {phone.user}@{where} has no registration: not offered")
        if missing:
            out.append(result("phones", WARN, f"{len(missing)} of {len(tracked)} agents' phones are not registered",
                              "register the phones (or fix the agents' dial strings): esl-cb offers an agent "
                              "only while their phone is registered", missing))
        else:
            out.append(result("phones", OK, f"all {len(tracked)} agents' phones are registered"))
    if not with_pins:
        out.append(result("features", OK, "no agent has a PIN (esl-cb agent pin): not used"))
        return out
    dialplan = api("xml_locate dialplan")
    if not dialplan.lstrip().startswith("<"):
        out.append(result("features", WARN, f"cannot read the switch's dialplan ({dialplan.strip()[:60]})",
                          "check that freeswitch_conf/dialplan/default/60_esl_cb_features.xml is installed"))
    elif "esl_cb_feature" not in dialplan:
        out.append(result("features", WARN, f"{with_pins} agents have PINs but no extension of the switch's "
                          "dialplan hands feature codes to esl-cb", "copy freeswitch_conf/dialplan/default/"
                          "60_esl_cb_features.xml to the switch's dialplan/default/ and reloadxml"))
    else:
        out.append(result("features", OK, "the dialplan hands agents' feature codes to esl-cb"))
    return out
