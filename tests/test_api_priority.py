"""PATCH /api/v1/callbacks/{id} with `priority` sets a fixed priority (issue 19): what the API and
its OpenAPI description say is what it does. A callback whose priority rose with its wait (a
script's Priority with an acceleration) stops rising: initial and maximum become the value, the
acceleration 0, and the queue orders it by that value from then on."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from esl_cb.db.store import utcnow

from .api_helpers import api, clients, store  # noqa: F401  (fixtures)


def test_patch_priority_is_fixed_as_documented(api, clients, store):
    field = api.client().get("/api/v1/openapi.json").json()["components"]["schemas"]["CallbackPatch"][
        "properties"]["priority"]
    described = " ".join(str(v) for v in field.values()).lower()
    assert "fixed" in described and "acceleration" in described, field

    rising = clients["wall"].post("/api/v1/callbacks", json={"number": "+13125550170", "skill": "support"}).json()["id"]
    level = clients["wall"].post("/api/v1/callbacks", json={"number": "+13125550171", "skill": "support",
                                                            "priority": 20}).json()["id"]
    # The first waited 10 minutes with a priority rising 5 a minute to at most 100: 50 now, ahead of 20.
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET priority_initial = 0, priority_acceleration = 5, priority_max = 100, "
                          "queued_at = :t WHERE id = :id"), {"t": utcnow() - timedelta(minutes=10), "id": rising})

    def board() -> dict[int, tuple[int, float]]:
        rows = clients["wall"].get("/api/v1/queues", params={"detail": "true"}).json()
        [q] = [q for q in rows["queues"] if q["skill"] == "support"]
        return {c["id"]: (c["place"], c["priority"]) for c in q["contacts"]}
    assert board()[rising][0] == 1 and board()[rising][1] >= 50

    doc = clients["wall"].patch(f"/api/v1/callbacks/{rising}", json={"priority": 10}).json()
    assert doc["priority"] == {"initial": 10, "acceleration": 0, "max": 10}
    assert board()[rising] == (2, 10) and board()[level][0] == 1
    # It does not rise again with its wait.
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET queued_at = :t WHERE id = :id"),
                     {"t": utcnow() - timedelta(hours=2), "id": rising})
    assert board()[rising] == (2, 10)
