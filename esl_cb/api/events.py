"""GET /api/v1/events: Server-Sent Events, fed by PostgreSQL LISTEN.

One thread per API process LISTENs on `esl_cb_events` (migration 0008's triggers: a contact's or an
agent's state changed; a supervisor's change to a callback) and `esl_cb_wake` (what the controllers
are woken for: a booking, a cancel, an agent's state), and hands each notification to every open
stream. Each stream shows what its token may see: an overseer everything, a booking token its own
callbacks, an agent token its own agent and the contact it is offered. A stream whose reader falls
behind, or a listener that lost its connection, gets a `resync` event: read the state again.

The events say what changed, not everything about it: a page reads the state again on each
(debounced). Each event of `esl_cb_events` is kept in the table `api_events` (migration 0012) in the
transaction of its change, and its row's id is its SSE `id:`, the same in every API process: a
client that reconnects with the header Last-Event-ID gets the events it missed, in order, then the
live ones. How far back: the log keeps `event_log_hours` (6) and at most the last 100,000 events;
an id no longer there (or never given), or more than REPLAY_MAX events behind, gets one `reset`
event instead: read the state again. `wake`, `resync`, `reset` and `hello` carry no id."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from starlette.concurrency import run_in_threadpool

from esl_cb.db.callback_changes import EVENTS_CHANNEL
from esl_cb.db.engine import socket_bounds
from esl_cb.db.store import NotFound
from esl_cb.domain.errors import Unavailable

from .auth import Caller, current_caller
from .views import Services, services

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["events"])
WAKE_CHANNEL = "esl_cb_wake"
QUEUE_SIZE = 1000
LISTENER_NAME = "esl-cb api events"          # application_name of the LISTEN session
PROBE_EVERY = 10.0             # seconds of silence before the listener asks the database whether it is there
PROBE_TIMEOUT = 5.0            # no answer within this: the connection is cut and made again
SERVER_TCP_USER_TIMEOUT_MS = 60_000
REPLAY_MAX = 10_000             # more missed than this: a reset (reading the state is cheaper)


class EventHub:
    """The LISTEN connection and the streams it feeds."""

    def __init__(self, db_url: str, svc: Services) -> None:
        self.url = db_url
        self.available = db_url.startswith("postgresql")
        self.svc = svc
        self.streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self.listeners: list[Callable[[dict], None]] = []        # in the listener's thread (webhooks)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.probe_every = PROBE_EVERY
        self.probe_timeout = PROBE_TIMEOUT
        self.probed_at = 0.0
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
        # Bounded sockets (the client's keepalives and tcp_user_timeout, db/engine.py's), a name to
        # find it by in pg_stat_activity, and the server's tcp_user_timeout: a session whose client
        # stops reading (this process hung or stopped) is dropped once its socket is full, so it
        # cannot hold PostgreSQL's notification queue (which every NOTIFY commit needs) for days.
        engine = create_engine(self.url, poolclass=NullPool, connect_args={
            **socket_bounds(self.url), "application_name": LISTENER_NAME,
            "options": f"-c tcp_user_timeout={SERVER_TCP_USER_TIMEOUT_MS}"})
        first = True
        while not self.stopping.is_set():
            raw = None
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
                log.warning("event listener: %s; reconnecting in 1 s", str(e).strip() or type(e).__name__)
                self.stopping.wait(1.0)
            finally:
                if raw is not None:
                    try:
                        raw.close()
                    except Exception:          # already broken: nothing to close cleanly
                        pass
        engine.dispose()

    def _listen(self, conn) -> None:
        """Hand on what arrives; after `probe_every` seconds without anything, ask the database (a
        silent connection may be a dead one no error told of: a cut network, a stopped server)."""
        quiet_since = time.monotonic()
        while not self.stopping.is_set():
            if select.select([conn], [], [], 1.0)[0]:
                conn.poll()
                quiet_since = time.monotonic()
                while conn.notifies:
                    n = conn.notifies.pop(0)
                    self.publish(_document(n.channel, n.payload))
            elif time.monotonic() - quiet_since >= self.probe_every:
                self._probe(conn)
                quiet_since = time.monotonic()

    def _probe(self, conn) -> None:
        """SELECT 1, answered within probe_timeout or the connection is cut (its socket shut down
        under libpq, which then fails the query): a listener never waits on a silent database."""
        cut = threading.Timer(self.probe_timeout, _shut_down, (conn.fileno(),))
        cut.daemon = True
        cut.start()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        except Exception as e:
            raise ConnectionError(f"the database did not answer the listener's probe within "
                                  f"{self.probe_timeout:g} s ({str(e).strip() or type(e).__name__})") from None
        finally:
            cut.cancel()
        self.probed_at = time.monotonic()


def _shut_down(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _put(q: asyncio.Queue, doc: dict) -> None:
    if q.full():                               # the reader is behind: it must read the state again
        while not q.empty():
            q.get_nowait()
        q.put_nowait({"kind": "resync", "why": "the stream fell behind"})
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
        if kind in ("resync", "reset") or self.caller.oversees:
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
                             "wake | resync | reset; data: a JSON document. Send Last-Event-ID to get the events "
                             "missed since (a reset when they are no longer kept)."}})
async def events(request: Request, caller: Caller = Depends(current_caller), svc: Services = Depends(services),
                 last_event_id: str | None = Header(None, description="The id of the last event received: "
                                                                      "the events after it are sent first.")
                 ) -> StreamingResponse:
    hub: EventHub | None = request.app.state.hub
    if hub is None or not hub.available:
        raise Unavailable("live events need PostgreSQL (LISTEN/NOTIFY) and the API's event listener")
    allowed = await run_in_threadpool(Filter, svc, caller)
    heartbeat = svc.settings.event_heartbeat
    q = hub.subscribe()            # before the replay is read: nothing falls between the two
    try:
        missed = await run_in_threadpool(_missed, svc, last_event_id) if last_event_id is not None else []
    except BaseException:
        hub.unsubscribe(q)
        raise

    async def stream():
        try:
            hello = {"kind": "hello", "role": caller.role, "agent": caller.token.agent,
                     "time": datetime.now(timezone.utc).isoformat(), "listening": hub.connected.is_set()}
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps(hello)}\n\n"
            # The ids replayed, not the highest one: a lower id can commit after a higher one and
            # come live after the replay. Each event is notified once: drop an id when it comes.
            replayed = {doc["event_id"] for doc in missed if doc.get("event_id")}
            for doc in missed:
                if await allowed.allows(doc):
                    yield _frame(doc)
            while True:
                try:
                    doc = await asyncio.wait_for(q.get(), timeout=heartbeat)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if doc.get("event_id") in replayed:
                    replayed.discard(doc["event_id"])
                    continue               # replayed already
                if await allowed.allows(doc):
                    yield _frame(doc)
        finally:
            hub.unsubscribe(q)
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _frame(doc: dict) -> str:
    """The SSE id is "<event id>.<its transaction's xmin>" (see _missed): the xmin is not in the data."""
    doc = dict(doc)
    event_id, xmin = doc.get("event_id"), doc.pop("event_xmin", None)
    sse_id = f"{event_id}.{xmin}" if event_id and xmin is not None else event_id
    return (f"id: {sse_id}\n" if event_id else "") + f"event: {doc.get('kind', 'unknown')}\ndata: {json.dumps(doc)}\n\n"


def _missed(svc: Services, last_event_id: str) -> list[dict]:
    """The events after `last_event_id`, oldest first; [a reset] when they are not all kept."""
    text = last_event_id.strip()
    # "<id>.<xmin>": the ids after <id> and those whose transaction was not older than <xmin> (ids
    # commit out of order). A plain "<id>" (its xmin unknown): the ids after it only.
    m = re.fullmatch(r"(\d{1,18})(?:\.(\d{1,18}))?", text)
    after, xmin = (int(m[1]), int(m[2]) if m[2] else None) if m else (None, None)
    rows = svc.records.events_after(after, REPLAY_MAX, xmin) if after is not None else None
    if rows is None or len(rows) > REPLAY_MAX:
        why = ("more events were missed than are replayed" if rows is not None else
               "the events since that id are no longer kept" if after is not None else "not an event id")
        return [{"kind": "reset", "why": f"Last-Event-ID {text[:40]!r}: {why}; read the state again",
                 "last_event_id": text[:40]}]
    out = []
    for event_id, event_xmin, doc in rows:
        try:
            out.append({"event_id": event_id, "event_xmin": event_xmin, **json.loads(doc)})
        except ValueError:
            out.append({"event_id": event_id, "event_xmin": event_xmin, "kind": "unknown", "payload": doc})
    return out
