// GridSentry wall screen: polls /api/wall, ticks SLA countdowns every second. No build step, no network
// beyond this server. A token (role viewer) is asked for once when the wall is not a public area.
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("wall-config").textContent);
  const TOKEN_KEY = "gridsentry.token";
  const $ = (id) => document.getElementById(id);
  let alerts = [];
  let timer = null;

  function headers() {
    const token = window.localStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function askToken(message) {
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    window.localStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    refresh();
  });

  async function getJson(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      const err = new Error(r.status === 401 ? "token missing or not valid" : "token lacks the viewer role");
      err.auth = true;
      throw err;
    }
    if (!r.ok) throw new Error(path + " answered " + r.status);
    return r.json();
  }

  function fmtNum(v, digits) {
    if (v === null || v === undefined) return "–";
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }

  function fmtLeft(seconds) {
    const s = Math.abs(Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const body = (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + String(sec).padStart(2, "0");
    return (seconds < 0 ? "+" : "") + body;
  }

  function dueCell(td, due, metAt) {
    if (!due) { td.textContent = "–"; td.className = "due"; return; }
    if (metAt) { td.textContent = "✓"; td.className = "due met"; td.title = "met at " + metAt; return; }
    const left = (Date.parse(due) - Date.now()) / 1000;
    td.textContent = fmtLeft(left);
    td.className = "due " + (left < 0 ? "late" : left <= cfg.sla_warn_s ? "warn" : "ok");
    td.title = (left < 0 ? "overdue since " : "due ") + due;
  }

  function renderAlerts() {
    const body = $("alerts");
    body.replaceChildren();
    for (const a of alerts) {
      const tr = document.createElement("tr");
      tr.className = a.state;
      tr.dataset.alertId = String(a.alert_id);
      const cls = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "badge " + a.event_class;
      badge.textContent = a.event_class;
      cls.append(badge);
      if (a.state === "acknowledged") {
        const ack = document.createElement("div");
        ack.className = "acked";
        ack.textContent = "已响应 ack " + (a.acknowledged_by || "");
        cls.append(ack);
      }
      const dev = document.createElement("td");
      dev.textContent = a.device_id;
      const site = document.createElement("div");
      site.className = "msg";
      site.textContent = a.site || "";
      dev.append(site);
      const what = document.createElement("td");
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = a.title;
      const msg = document.createElement("div");
      msg.className = "msg";
      msg.textContent = a.message;
      what.append(title, msg);
      const ack = document.createElement("td"), onsite = document.createElement("td"), restore = document.createElement("td");
      ack.dataset.due = "ack"; onsite.dataset.due = "onsite"; restore.dataset.due = "restore";
      tr.append(cls, dev, what, ack, onsite, restore);
      body.append(tr);
    }
    $("no-alerts").hidden = alerts.length > 0;
    tick();
  }

  function tick() {
    $("clock").textContent = new Date().toLocaleTimeString("zh-CN", { hour12: false });
    const rows = $("alerts").children;
    for (let i = 0; i < rows.length && i < alerts.length; i++) {
      const a = alerts[i], cells = rows[i].children;
      dueCell(cells[3], a.ack_due, a.acknowledged_at);
      dueCell(cells[4], a.onsite_due, null);
      dueCell(cells[5], a.restore_due, a.resolved_at);
    }
  }

  function renderFleet(f) {
    for (const [state, n] of Object.entries(f.devices.by_state)) {
      const el = $("n-" + state);
      if (el) el.textContent = String(n);
    }
    $("pv").textContent = fmtNum(f.power.pv_generation_kw, 1);
    $("charging").textContent = fmtNum(f.power.charging_kw, 1);
    $("trafo").textContent = fmtNum(f.power.transformer_load_kva, 0);
    const lf = f.power.transformer_load_factor_max;
    $("trafo-unit").textContent = "kVA" + (lf === null || lf === undefined ? "" : " · max " + fmtNum(lf * 100, 0) + " %");
    const sites = $("sites");
    sites.replaceChildren();
    const bySite = new Map();
    for (const t of f.tiles) {
      const key = t.site || "";
      if (!bySite.has(key)) bySite.set(key, []);
      bySite.get(key).push(t);
    }
    for (const s of f.sites) {
      const box = document.createElement("div");
      box.className = "site";
      const h = document.createElement("h3");
      h.textContent = (s.name || s.site || "—") + " · " + s.online + "/" + s.devices + " 在线 online";
      const tiles = document.createElement("div");
      tiles.className = "tiles";
      for (const t of bySite.get(s.site) || []) {
        const tile = document.createElement("span");
        tile.className = "tile " + t.state + (t.worst_class ? " " + t.worst_class : "");
        tile.textContent = t.device_id;
        tile.dataset.device = t.device_id;
        tile.title = t.kind + " · " + t.state + (t.last_seen_age_s === null ? "" : " · seen " + Math.round(t.last_seen_age_s) + " s ago");
        tiles.append(tile);
      }
      box.append(h, tiles);
      sites.append(box);
    }
  }

  function renderOncall(levels) {
    // One entry per escalation level (level 1 is paged first); absent when this server keeps no rota.
    if (!Array.isArray(levels) || levels.length === 0) { $("oncall-name").textContent = "—"; return; }
    const who = (p) => (p && (p.name || p.person)) || "—";
    const first = levels[0];
    let text = who(first) + (first && first.phone ? " · " + first.phone : "");
    if (levels.length > 1) text += "  (2: " + who(levels[1]) + ")";
    $("oncall-name").textContent = text;
  }

  function renderVisit(rows) {
    // The top of `gridsentry report maintenance`; absent (null) when the ranking could not be computed.
    const list = $("visit");
    list.replaceChildren();
    for (const v of rows || []) {
      const li = document.createElement("li");
      li.dataset.device = v.device_id;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = fmtNum(v.score, 0);
      const dev = document.createElement("b");
      dev.textContent = v.device_id + " ";
      const site = document.createElement("span");
      site.className = "why";
      site.textContent = v.site + " · " + v.kind;
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = (v.reasons || []).join("; ");
      li.append(score, dev, site, why);
      list.append(li);
    }
    $("no-visit").hidden = !(Array.isArray(rows) && rows.length === 0);
  }

  async function refresh() {
    try {
      const w = await getJson("/api/wall");
      alerts = w.alerts;
      for (const [cls, n] of Object.entries(w.fleet.alert_counts)) {
        const el = $("count-" + cls);
        if (el) el.textContent = String(n);
      }
      $("alerts-note").textContent = w.alerts_truncated ? "(newest " + alerts.length + ")" : "";
      renderAlerts();
      renderFleet(w.fleet);
      $("link").className = "link";
      $("link").title = "updated " + w.fleet.now;
      document.body.dataset.updated = w.fleet.now;
      renderOncall(w.oncall);
      renderVisit(w.visit_first);
    } catch (e) {
      $("link").className = "link down";
      $("link").title = String(e.message || e);
      if (e.auth) askToken(e.message);
    }
  }

  refresh();
  window.setInterval(tick, 1000);
  timer = window.setInterval(refresh, cfg.refresh_s * 1000);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  void timer;
})();
