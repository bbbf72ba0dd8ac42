// The agent's page: my state, and the contact offered or connected with its data and history.
"use strict";
(() => {
  const {el, api, say, duration, since, debounce} = ESLCB;
  if (!ESLCB.requireSignIn()) return;
  let name = new URLSearchParams(location.search).get("agent");
  let me = null;

  async function refresh() {
    try {
      const sent = Date.now();
      me = await api(`/api/v1/agents/${encodeURIComponent(name)}`);
      if (me.time) ESLCB.syncClock(me.time, sent, Date.now());
      render();
    } catch (e) { say("Could not read your state: " + e.message); }
  }
  const soon = debounce(refresh, 50);

  function render() {
    const state = document.getElementById("my-state");
    state.textContent = me.state;
    state.className = "state state-" + me.state;
    document.getElementById("my-since").dataset.since = me.since;
    tick();
    const box = document.getElementById("contact");
    const c = me.contact;
    if (!c) { box.replaceChildren(el("p", {text: "No contact offered."})); return; }
    const data = c.data ? Object.entries(c.data) : [];
    box.replaceChildren(
      el("p", {class: "big", id: "contact-number", text: c.number || ""}),
      el("p", {text: `${c.kind === "callback" ? "Callback" : "Caller"} #${c.id} — ${c.state.replace("_", " ")}` +
                      (c.skill ? ` — ${c.skill}` : "")}),
      data.length ? el("dl", {id: "contact-data", class: "data"},
        ...data.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: typeof v === "string" ? v : JSON.stringify(v)})]))
        : el("p", {text: "No data with this contact."}),
      el("h3", {text: "History of this number"}),
      c.history && c.history.length ? el("table", {class: "grid"},
        el("thead", {}, el("tr", {}, ...["Contact", "Arrived", "Skill", "Agent", "Outcome"].map(h => el("th", {scope: "col", text: h})))),
        el("tbody", {}, ...c.history.map(h => el("tr", {},
          el("td", {text: "#" + h.id}), el("td", {text: new Date(h.arrived_at).toLocaleString()}),
          el("td", {text: h.skill || ""}), el("td", {text: h.agent || ""}), el("td", {text: h.outcome || h.state})))))
        : el("p", {text: "No earlier contact."}));
  }

  function tick() {
    const s = document.getElementById("my-since");
    if (s.dataset.since) s.textContent = "for " + duration(since(s.dataset.since));
  }

  for (const button of document.querySelectorAll("[data-state]")) {
    button.addEventListener("click", async () => {
      const json = {state: button.dataset.state};
      if (json.state === "break") json.reason = document.getElementById("break-reason").value.trim();
      try {
        const done = await api(`/api/v1/agents/${encodeURIComponent(name)}/state`, {method: "PUT", json});
        say(`${done.before} → ${done.after}`, false);
      } catch (e) { say(e.message); }
      refresh();
    });
  }

  ESLCB.whoami().then(who => {
    if (!name) name = who.agent;
    if (!name) { say("This token is not an agent's: open this page as /ui/agent?agent=NAME"); return; }
    document.querySelector("h1").textContent = `Agent ${name}`;
    refresh();
    setInterval(tick, 1000);
    setInterval(refresh, 30000);
    ESLCB.events(() => soon());
  }).catch(e => say(e.message));
})();
