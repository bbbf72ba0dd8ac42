// Today's report, and the waits by hour drawn as an SVG bar chart (no library).
"use strict";
(() => {
  const {el, api, say, duration} = ESLCB;
  if (!ESLCB.requireSignIn()) return;
  const SVG = "http://www.w3.org/2000/svg";
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function chart(hours) {
    const W = 960, H = 360, left = 70, bottom = 40, top = 20, bw = (W - left - 10) / 24;
    const top_ = Math.max(...hours.map(h => h.average_wait_sec || 0));
    const step = [15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200].find(s => s * 4 >= top_) || Math.ceil(top_ / 4);
    const max = step * 4;
    const scale = v => (H - bottom - top) * v / max;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", id: "wait-chart",
                             "aria-labelledby": "chart-title chart-caption", class: "chart"});
    for (let i = 0; i <= 4; i++) {
      const v = max * i / 4, y = H - bottom - scale(v);
      root.append(svg("line", {x1: left, x2: W - 10, y1: y, y2: y, class: "gridline"}),
                  svg("text", {x: left - 8, y: y + 5, "text-anchor": "end", class: "axis"}, duration(v)));
    }
    hours.forEach((h, i) => {
      const x = left + i * bw;
      if (h.average_wait_sec !== null) {
        const hgt = scale(h.average_wait_sec);
        const bar = svg("rect", {x: x + 3, y: H - bottom - hgt, width: bw - 6, height: Math.max(hgt, 1), class: "bar",
                                 "data-hour": h.hour});
        bar.append(svg("title", {}, `${h.hour}:00 — ${h.answered} answered, average wait ${duration(h.average_wait_sec)}`));
        root.append(bar);
      }
      if (i % 2 === 0) root.append(svg("text", {x: x + bw / 2, y: H - bottom + 22, "text-anchor": "middle", class: "axis"},
                                         String(h.hour).padStart(2, "0")));
    });
    return root;
  }

  async function load() {
    try {
      const r = await api(`/api/v1/reports/today?tz=${encodeURIComponent(tz)}`);
      document.getElementById("today-tz").textContent = `(${r.tz})`;
      const cards = [["Contacts", r.contacts], ["Callback rate", `${Math.round(r.callback_rate * 100)} %`],
                     ["Average wait to answer", r.average_wait_to_answer_s === null ? "—" : duration(r.average_wait_to_answer_s)],
                     ["Outbound seconds billed", r.billed_outbound_seconds]];
      document.getElementById("summary").replaceChildren(...cards.flatMap(([k, v]) =>
        [el("div", {class: "card"}, el("dt", {text: k}), el("dd", {text: v}))]));
      const rows = Object.entries(r.outcomes).sort((a, b) => b[1] - a[1]);
      document.querySelector("#outcomes tbody").replaceChildren(...(rows.length ? rows.map(([k, v]) =>
        el("tr", {}, el("td", {text: k.replace("_", " ")}), el("td", {class: "num", text: v})))
        : [el("tr", {}, el("td", {colspan: 2, text: "Nothing yet today."}))]));
      document.getElementById("chart").replaceChildren(chart(r.waits_by_hour));
    } catch (e) { say("Could not read the report: " + e.message); }
  }

  ESLCB.whoami().catch(() => {});
  load();
  setInterval(load, 60000);
})();
