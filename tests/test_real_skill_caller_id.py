"""The shipped example reached on an extension (issue 19), on the real FreeSWITCH: its Callback's
CallerID is {DNIS} = 5000, no phone number; the skill's outbound caller ID is shown instead, where
before the action took OnError and the caller was never called back."""
from __future__ import annotations

import pytest

from esl_cb.app.changes import CallerIds

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (fs_rig is a fixture)
from .test_real_flows import example

pytestmark = pytest.mark.freeswitch
CUSTOMER = "+13125550101"


@pytest.fixture
def rig(fs_rig, pg_url):  # noqa: F811
    r = RealRig(fs_rig, pg_url, example())
    yield r
    r.close()


def test_the_example_on_extension_5000_calls_back_showing_the_skills_number(rig):
    rig.store.add_skill("support")
    CallerIds(rig.store).set("support", "+13125557000")
    rig.agent("alice", "agent1")
    rig.callers.append(rig.fs.caller(CUSTOMER, key="1", key_after=3.8, did="5000"))
    queued = rig.wait_state("callback_queued", timeout=15)
    assert (queued.original_dnis, queued.callback_caller_id) == ("5000", "+13125557000")
    rig.available("alice")
    rig.wait_connected(timeout=20)
    invite = until(lambda: rig.invites_to(CUSTOMER.lstrip("+")), what="the customer's INVITE")[0]
    assert 'From: "+13125557000" <sip:+13125557000@' in invite.text
