"""GET /api/v1/events: Server-Sent Events, fed by PostgreSQL LISTEN.

One thread per API process LISTENs on `esl_cb_events` (migration 0008's triggers: a contact's or an
agent's state changed; a supervisor's change to a callback) and `esl_cb_wake` (what the controllers
are woken for: a booking, a cancel, an agent's state), and hands each notification to every open
stream. Each stream shows what its token may see: an overseer everything, a booking token its own
callbacks, an agent token its own agent and the contact it is offered. A stream whose reader falls
behind, or a listener that lost its connection, gets a `resync` event: read the state again.

The events say what changed, not everything about it: a page reads the state again on each
(debounced). Events are not kept: a client that reconnects reads the state first."""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import select
import threading
from datetime import datetime, timezone
from typing import Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from starlette.concurrency import run_in_threadpool

from esl_cb.db.callback_changes import EVENTS_CHANNEL
from esl_cb.db.store import NotFound
from esl_cb.domain.errors import Unavailable

from .auth import Caller, current_caller
from .views import Services, services

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["events"])
WAKE_CHANNEL = "esl_cb_wake"
QUEUE_SIZE = 1000


class EventHub:
    """The LISTEN connection and the streams it feeds."""

    def __init__(self, db_url: str, svc: Services) -> None:
        self.url = db_url
        self.available = db_url.startswith("postgresql")
        self.svc = svc
        self.streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self.listeners: list[Callable[[dict], None]] = []        # in the listener's thread (webhooks)
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._run, name="esl-cb-events", daemon=True)

    def start(self) -> None:
        if self.available:
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(3)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        with self.lock:
            self.streams.add((asyncio.get_running_loop(), q))
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with self.lock:
            self.streams = {s for s in self.streams if s[1] is not q}

    def publish(self, doc: dict) -> None:
        doc = {"seq": next(self.ids), **doc}
        with self.lock:
            streams = list(self.streams)
        for loop, q in streams:
            loop.call_soon_threadsafe(_put, q, doc)
        for listener in self.listeners:
            try:
                listener(doc)
            except Exception:                    # a listener's fault must not stop the events
                log.exception("event listener failed")

    def _run(self) -> None:
        engine = create_engine(self.url, poolclass=NullPool)
        first = True
        while not self.stopping.is_set():
            try:
                raw = engine.raw_connection()
                conn = raw.driver_connection
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {EVENTS_CHANNEL}; LISTEN {WAKE_CHANNEL}")
                self.connected.set()
                if not first:
                    self.publish({"kind": "resync", "why": "the event listener reconnected"})
                first = False
                self._listen(conn)
            except Exception as e:
                self.connected.clear()
                log.warning("event listener: %s; reconnecting in 1 s", e)
                self.stopping.wait(1.0)
        engine.dispose()

    def _listen(self, conn) -> None:
        while not self.stopping.is_set():
            if select.select([conn], [], [], 1.0)[0]:
                conn.poll()
                while conn.notifies:
                    n = conn.notifies.pop(0)
                    self.publish(_document(n.channel, n.payload))


def _put(q: asyncio.Queue, doc: dict) -> None:
    if q.full():                               # the reader is behind: it must read the state again
        while not q.empty():
            q.get_nowait()
        q.put_nowait({"seq": doc["seq"], "kind": "resync", "why": "the stream fell behind"})
        return
    q.put_nowait(doc)


def _document(channel: str, payload: str) -> dict:
    if channel == EVENTS_CHANNEL:
        try:
            return json.loads(payload)
        except ValueError:
            return {"kind": "unknown", "payload": payload}
    return {"kind": "wake", "what": payload}


class Filter:
    """What one stream's token may see."""

    def __init__(self, svc: Services, caller: Caller) -> None:
        self.svc = svc
        self.caller = caller
        self.mine: dict[int, bool] = {}
        self.agent_id: int | None = None
        if caller.role == "agent" and caller.token.agent:
            try:
                self.agent_id = svc.store.agent(caller.token.agent).id
            except NotFound:
                self.agent_id = None

    async def allows(self, doc: dict) -> bool:
        kind = doc.get("kind")
        if kind == "resync" or self.caller.oversees:
            return True
        if self.caller.role == "agent":
            if kind == "agent":
                return doc.get("name") == self.caller.token.agent
            return kind == "contact" and self.agent_id is not None and doc.get("agent_id") == self.agent_id
        if kind != "contact":
            return False
        cid = doc.get("id")
        if "booked" in doc.get("change", ()):      # a callback became a token's (after its own insert event)
            if doc.get("token_id") == self.caller.token.id:
                self.mine[cid] = True
            return self.mine.get(cid, False)
        if cid not in self.mine:
            if len(self.mine) > 100_000:
                self.mine.clear()
            self.mine[cid] = await run_in_threadpool(self.svc.records.booked_by, cid, self.caller.token.id)
        return self.mine[cid]


@router.get("/events", summary="Server-Sent Events: contacts and agents changing",
            responses={200: {"content": {"text/event-stream": {}}, "description": "event: contact | agent | "
                             "wake | resync; data: a JSON document"}})
async def events(request: Request, caller: Caller = Depends(current_caller),
                 svc: Services = Depends(services)) -> StreamingResponse:
    hub: EventHub | None = request.app.state.hub
    if hub is None or not hub.available:
        raise Unavailable("live events need PostgreSQL (LISTEN/NOTIFY) and the API's event listener")
    allowed = await run_in_threadpool(Filter, svc, caller)
    heartbeat = svc.settings.event_heartbeat
    q = hub.subscribe()

    async def stream():
        try:
            hello = {"kind": "hello", "role": caller.role, "agent": caller.token.agent,
                     "time": datetime.now(timezone.utc).isoformat(), "listening": hub.connected.is_set()}
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps(hello)}\n\n"
            while True:
                try:
                    doc = await asyncio.wait_for(q.get(), timeout=heartbeat)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if await allowed.allows(doc):
                    yield f"id: {doc['seq']}\nevent: {doc.get('kind', 'unknown')}\ndata: {json.dumps(doc)}\n\n"
        finally:
            hub.unsubscribe(q)
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
