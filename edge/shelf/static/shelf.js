// The staff shelf page: polls /shelf/api/state, draws each camera's overlay and the open alerts,
// and acknowledges an alert with "Done" (POST /shelf/api/ack). No framework, no outside resources.
"use strict";
(() => {
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);
  const shown = new Map(); // alert id -> <li>
  let tick = 0;

  function ago(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function alertItem(a) {
    const li = $("alert-tpl").content.firstElementChild.cloneNode(true);
    li.dataset.id = a.alert_id;
    li.dataset.state = a.state;
    li.querySelector(".state").textContent = a.state;
    li.querySelector(".facing").textContent = `${a.camera} / ${a.facing}`;
    const crop = li.querySelector(".crop");
    if (a.crop_id) crop.src = `/shelf/crop/${encodeURIComponent(a.crop_id)}.jpg`; else crop.remove();
    const exp = li.querySelector(".expected");
    if (a.expected_sku) exp.src = `/shelf/img/${encodeURIComponent(a.expected_sku)}`; else exp.remove();
    exp.addEventListener("error", () => exp.remove());
    const seen = a.state === "misplaced" && a.observed_sku ? `, seen: ${a.observed_sku}` : "";
    li.querySelector(".detail").textContent = `planned: ${a.expected_sku || "-"}${seen}`;
    li.querySelector(".done").addEventListener("click", () => done(a.alert_id, li));
    return li;
  }

  async function done(id, li) {
    const button = li.querySelector(".done");
    button.disabled = true;
    try {
      const r = await fetch("/shelf/api/ack", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify({alert_id: id}), credentials: "same-origin"});
      if (r.ok || r.status === 404) { li.remove(); shown.delete(id); count(); return; }
    } catch (e) { /* offline: try again */ }
    button.disabled = false;
  }

  function count() {
    $("alert-count").textContent = String(shown.size);
    $("no-alerts").hidden = shown.size > 0;
  }

  function drawAlerts(alerts, now) {
    const list = $("alerts");
    const keep = new Set(alerts.map((a) => a.alert_id));
    for (const [id, li] of shown) if (!keep.has(id)) { li.remove(); shown.delete(id); }
    for (const a of alerts) {  // oldest first: the server sorts by the time the state began
      let li = shown.get(a.alert_id);
      if (!li) { li = alertItem(a); shown.set(a.alert_id, li); }
      li.querySelector(".age").textContent = `for ${ago(now - a.since)}`;
      list.appendChild(li);
    }
    count();
  }

  function drawCameras(cameras) {
    const box = $("cameras");
    for (const cam of cameras) {
      let div = box.querySelector(`[data-camera="${CSS.escape(cam.name)}"]`);
      if (!div) {
        div = document.createElement("div");
        div.className = "camera";
        div.dataset.camera = cam.name;
        div.innerHTML = "<h3></h3><img alt=''><ul class='facings'></ul>";
        div.querySelector("h3").textContent = cam.name;
        div.querySelector("img").alt = `${cam.name} with its facings`;
        box.appendChild(div);
      }
      div.querySelector("img").src = `/shelf/frame/${encodeURIComponent(cam.name)}.jpg?t=${tick}`;
      const ul = div.querySelector(".facings");
      ul.replaceChildren(...cam.facings.map((f) => {
        const li = document.createElement("li");
        li.dataset.state = f.state || "none";
        li.textContent = `${f.name}: ${f.state || "…"}`;
        return li;
      }));
    }
  }

  async function poll() {
    tick += 1;
    try {
      const r = await fetch("/shelf/api/state", {credentials: "same-origin", cache: "no-store"});
      if (!r.ok) throw new Error(String(r.status));
      const s = await r.json();
      drawAlerts(s.alerts, s.now);
      drawCameras(s.cameras);
      $("status").dataset.state = "live";
      $("status").textContent = "live";
    } catch (e) {
      $("status").dataset.state = "offline";
      $("status").textContent = "offline, retrying";
    }
    setTimeout(poll, POLL_MS);
  }

  // the token came in the address once; from now on the cookie carries it: keep it out of the history
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
  poll();
})();
