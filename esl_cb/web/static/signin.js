"use strict";
document.getElementById("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = document.getElementById("token").value.trim();
  sessionStorage.setItem(ESLCB.KEY, value);
  try {
    const r = await fetch("/api/v1/me", {headers: {"Authorization": "Bearer " + value}});
    if (!r.ok) throw new Error((await r.json()).detail);
    const me = await r.json();
    const next = new URLSearchParams(location.search).get("next");
    const home = me.role === "agent" ? "/ui/agent" : "/ui/supervisor";
    location.assign(next && next.startsWith("/ui/") && next !== "/ui/signin" ? next : home);
  } catch (e) {
    sessionStorage.removeItem(ESLCB.KEY);
    ESLCB.say("Not signed in: " + e.message);
  }
});
