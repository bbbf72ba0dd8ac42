// The supervisor's wall screen: per skill the waiting callers and callbacks as rows, the agents,
// and the actions on a callback; read again on each event of the stream.
"use strict";
(() => {
  const {el, api, say, duration, until, since, keepFocus, debounce} = ESLCB;
  if (!ESLCB.requireSignIn()) return;
  let board = {queues: [], agents: []};
  let selected = null;          // the callback the action panel acts on
  // The board asks for the rows it shows (the counts in the captions are always whole): a wall screen
  // of a queue 10,000 deep reads a page, not the queue; "Show more" asks for a longer page.
  const PAGE = 50, MOST = 500;
  let shown = PAGE;

  const STATES = ["login", "available", "unavailable", "end_wrap_up", "logout"];

  async function refresh() {
    try {
      const sent = Date.now();
      const [q, a] = await Promise.all([api(`/api/v1/queues?detail=true&limit=${shown}`), api("/api/v1/agents")]);
      ESLCB.syncClock(q.time, sent, Date.now());
      board = {queues: q.queues, agents: a.agents};
      keepFocus(render);
    } catch (e) { say("Could not read the queues: " + e.message); }
  }
  const soon = debounce(refresh, 100);

  function countdown(iso) {
    const s = until(iso);
    return s !== null && s > 0 ? duration(s) : "";
  }

  function queueTable(q) {
    const live = q.waiting_callers, cbs = q.waiting_callbacks;
    const caption = `${q.skill} — ${q.open ? "open" : "closed for callbacks"} — ${live} caller${live === 1 ? "" : "s"}, ` +
      `${cbs} callback${cbs === 1 ? "" : "s"} waiting — estimated wait ${duration(q.ewt_sec)}` +
      (q.outbound_caller_id ? ` — shows ${q.outbound_caller_id}` : "");
    const head = el("tr", {}, ...["Place", "Contact", "Kind", "Number", "State", "Waiting", "Dial in", "Not before",
      "Agent", "Priority", "Actions"].map(h => el("th", {scope: "col", text: h})));
    const rows = q.contacts.map(c => {
      const actions = el("td", {class: "actions"});
      if (c.kind === "callback") {
        actions.append(
          el("button", {type: "button", "data-key": `select-${c.id}`, "aria-label": `Select callback ${c.id}`,
                        onclick: () => select(c, q.skill), text: "Select"}),
          el("button", {type: "button", class: "danger", "data-key": `cancel-${c.id}`,
                        "aria-label": `Cancel callback ${c.id}`, onclick: () => cancel(c.id), text: "Cancel"}));
      }
      return el("tr", {"data-contact": c.id, "data-state": c.state, class: selected && selected.id === c.id ? "selected" : null},
        el("td", {class: "num", text: c.place || "—"}),
        el("td", {class: "num", text: "#" + c.id}),
        el("td", {text: c.kind === "callback" ? "callback" : "caller"}),
        el("td", {class: "number", text: c.number || ""}),
        el("td", {class: "state state-" + c.state, text: c.state.replace("_", " ")}),
        el("td", {class: "num tick", "data-since": c.queued_at, text: duration(since(c.queued_at))}),
        el("td", {class: "num tick", "data-until": c.dial_due_at, text: countdown(c.dial_due_at)}),
        el("td", {class: "num tick", "data-until": c.not_before, text: countdown(c.not_before)}),
        el("td", {text: c.agent || (c.assigned_agent ? `for ${c.assigned_agent}` : "")}),
        el("td", {class: "num", text: c.priority}),
        actions);
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: 11, text: "Nobody waiting."})));
    const table = el("table", {class: "grid queue", "data-skill": q.skill},
      el("caption", {text: caption}), el("thead", {}, head), el("tbody", {}, ...rows));
    if (!q.next_cursor) return table;
    const more = el("p", {class: "more", "data-skill": q.skill},
      `Places 1 to ${q.next_cursor} of ${live + cbs} waiting. `);
    if (shown < MOST) {
      more.append(el("button", {type: "button", "data-key": `more-${q.skill}`, text: `Show ${PAGE} more`,
        "aria-label": `Show ${PAGE} more waiting in ${q.skill}`, onclick: () => { shown = Math.min(MOST, shown + PAGE); refresh(); }}));
    }
    return el("div", {}, table, more);
  }

  function agentRow(a) {
    const pick = el("select", {"aria-label": `New state for ${a.name}`, "data-key": `state-${a.name}`},
      ...STATES.map(s => el("option", {value: s, text: s})));
    return el("tr", {"data-agent": a.name},
      el("th", {scope: "row", text: a.name}),
      el("td", {class: "state state-" + a.state, text: a.state}),
      el("td", {class: "num tick", "data-since": a.since, text: duration(since(a.since))}),
      el("td", {text: a.skills.join(", ")}),
      el("td", {text: a.contact_id ? "#" + a.contact_id : ""}),
      el("td", {}, pick, el("button", {type: "button", "data-key": `set-${a.name}`, text: "Set",
        "aria-label": `Set the state of ${a.name}`, onclick: () => agentState(a.name, pick.value)})));
  }

  function render() {
    const box = document.getElementById("queues");
    box.replaceChildren(...(board.queues.length ? board.queues.map(queueTable) : [el("p", {text: "No skills yet."})]));
    document.querySelector("#agents tbody").replaceChildren(...board.agents.map(agentRow));
    if (selected) {
      const still = board.queues.flatMap(q => q.contacts).find(c => c.id === selected.id && c.state === "callback_queued");
      if (!still) unselect();
    }
  }

  function tick() {
    for (const cell of document.querySelectorAll(".tick")) {
      if (cell.dataset.since) cell.textContent = duration(since(cell.dataset.since));
      else if (cell.dataset.until) cell.textContent = countdown(cell.dataset.until);
    }
  }

  function select(c, skill) {
    selected = c;
    document.getElementById("act-none").hidden = true;
    document.getElementById("act-form").hidden = false;
    document.getElementById("act-id").textContent = "#" + c.id;
    document.getElementById("act-number").textContent = `${c.number} (${skill})`;
    document.getElementById("act-priority").value = c.priority;
    const agents = board.agents.filter(a => a.skills.includes(skill));
    document.getElementById("act-agent").replaceChildren(el("option", {value: "", text: "any agent"}),
      ...agents.map(a => el("option", {value: a.name, text: a.name, selected: a.name === c.assigned_agent})));
    keepFocus(render);
    document.getElementById("act-priority").focus();
  }

  function unselect() {
    selected = null;
    document.getElementById("act-none").hidden = false;
    document.getElementById("act-form").hidden = true;
  }

  async function act(what, promise) {
    try { await promise; say(what, false); } catch (e) { say(`${what} failed: ${e.message}`); }
    refresh();
  }

  function cancel(id) {
    act(`Callback #${id} cancelled`, api(`/api/v1/callbacks/${id}?reason=${encodeURIComponent("cancelled by a supervisor")}`,
                                         {method: "DELETE"}));
  }

  const patch = (json, what) => selected && act(`Callback #${selected.id}: ${what}`,
    api(`/api/v1/callbacks/${selected.id}`, {method: "PATCH", json}));

  function agentState(name, state) {
    act(`Agent ${name}: ${state}`, api(`/api/v1/agents/${encodeURIComponent(name)}/state`, {method: "PUT", json: {state}}));
  }

  document.getElementById("act-set-priority").addEventListener("click", () =>
    patch({priority: Number(document.getElementById("act-priority").value)}, "priority set"));
  document.getElementById("act-assign").addEventListener("click", () =>
    patch({agent: document.getElementById("act-agent").value || null}, "reserved"));
  document.getElementById("act-reschedule").addEventListener("click", () => {
    const v = document.getElementById("act-when").value;
    patch({not_before: v ? new Date(v).toISOString() : null}, "rescheduled");
  });
  document.getElementById("act-cancel").addEventListener("click", () => selected && cancel(selected.id));

  ESLCB.whoami().catch(() => {});
  refresh();
  setInterval(tick, 1000);
  setInterval(refresh, 30000);           // the backstop, as the controllers poll
  ESLCB.events(() => soon());
})();
