// The usage page: reads /api/v1/usage and /api/v1/budgets (same origin; the admin cookie or
// token travels with the request) and shows the figures exactly as the API answers them.
"use strict";
(function () {
  // Each range ends now and starts on a whole step (UTC hours for 24 h, UTC days otherwise), so
  // each chart point is one hour or one UTC day, the unit users and sessions are counted in.
  const RANGES = { "24h": [24, 3600], "7d": [7, 86400], "30d": [30, 86400] };
  const $ = (sel) => document.querySelector(sel);
  const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const usd = (n) => (n === null || n === undefined ? "–" : "$" + Number(n).toFixed(4));
  const pct = (r) => (r * 100).toFixed(1) + "%";
  const perSession = (f) => (f.sessions ? (f.turns / f.sessions).toFixed(2) : "–");
  const charts = {};
  let range = { name: "24h" };

  function bounds() {
    if (range.name === "custom") return { from: range.from, to: range.to };
    const to = Math.floor(Date.now() / 1000);
    const [n, unit] = RANGES[range.name];
    return { from: (Math.floor(to / unit) - (n - 1)) * unit, to: to };
  }

  async function api(path, params) {
    const url = path + (params ? "?" + new URLSearchParams(params).toString() : "");
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (resp.status === 401) { window.location.reload(); throw new Error("not signed in"); }
    const body = await resp.json();
    if (!resp.ok) throw new Error(path + ": " + (body.error || resp.status));
    return body;
  }

  function setFigure(name, text, value) {
    document.querySelectorAll('[data-figure="' + name + '"]').forEach((el) => {
      el.textContent = text;
      el.dataset.value = value === null || value === undefined ? "" : String(value);
    });
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function table(id, head, rows) {
    const el = document.getElementById(id);
    el.replaceChildren();
    const tr = document.createElement("tr");
    head.forEach((h) => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
    el.appendChild(tr);
    if (!rows.length) {
      const r = document.createElement("tr");
      const td = cell("no data in this range", "empty");
      td.colSpan = head.length;
      r.appendChild(td);
      el.appendChild(r);
    }
    rows.forEach((cells) => {
      const r = document.createElement("tr");
      cells.forEach((c) => r.appendChild(c instanceof Node ? c : cell(c)));
      el.appendChild(r);
    });
  }

  function breakdown(id, dim, groups) {
    table(id, [dim, "calls", "errors", "input tokens", "output tokens", "cost"], groups.map((g) => [
      g.key[dim] || "(none)", int(g.calls), int(g.errors), int(g.input_tokens), int(g.output_tokens), usd(g.cost_usd)]));
  }

  function chart(id, label, xs, ys, fmt) {
    const el = document.getElementById(id);
    if (charts[id]) charts[id].destroy();
    el.replaceChildren();
    delete charts[id];
    if (!ys.some((y) => y !== null && y !== undefined)) {  // e.g. users per hour: only days are counted
      const note = document.createElement("p");
      note.className = "muted";
      note.textContent = xs.length ? "counted per day: pick 7 d or 30 d" : "no data";
      el.appendChild(note);
      return;
    }
    const opts = {
      width: Math.max(240, el.clientWidth), height: 150, legend: { show: false },
      axes: [{}, { size: 60, values: (u, vals) => vals.map(fmt) }],
      series: [{}, { label: label, stroke: "#3867d6", fill: "rgba(56,103,214,0.12)", spanGaps: false }],
    };
    charts[id] = new uPlot(opts, [xs, ys], el);
  }

  function stepFor(b) {
    return b.to - b.from <= 2 * 86400 ? "1h" : "1d";
  }

  async function load() {
    const b = bounds();
    const base = { from: String(b.from), to: String(b.to) };
    $("#error").hidden = true;
    try {
      const [totals, byApp, byModel, byProvider, series, budgets] = await Promise.all([
        api("/api/v1/usage", { ...base, top: "10" }),
        api("/api/v1/usage", { ...base, group_by: "app", top: "0" }),
        api("/api/v1/usage", { ...base, group_by: "model", top: "0" }),
        api("/api/v1/usage", { ...base, group_by: "provider", top: "0" }),
        api("/api/v1/usage", { ...base, step: stepFor(b), top: "0" }),
        api("/api/v1/budgets"),
      ]);
      const t = totals.totals;
      $("#span").textContent = totals.from + " to " + totals.to + " (UTC)";
      setFigure("turns", int(t.turns), t.turns);
      setFigure("active_users", int(t.active_users), t.active_users);
      setFigure("sessions", int(t.sessions), t.sessions);
      setFigure("interactions", perSession(t), t.sessions ? t.turns / t.sessions : null);
      setFigure("tokens", int(t.input_tokens + t.output_tokens), t.input_tokens + t.output_tokens);
      setFigure("cost_usd", usd(t.cost_usd), t.cost_usd);
      setFigure("calls", int(t.calls), t.calls);
      setFigure("errors", int(t.errors), t.errors);

      const xs = series.series.map((p) => Date.parse(p.t) / 1000);
      const val = (f) => series.series.map(f);
      chart("chart-turns", "turns", xs, val((p) => p.turns), (v) => int(v));
      chart("chart-active_users", "active users", xs, val((p) => p.active_users), (v) => int(v));
      chart("chart-interactions", "turns per session", xs, val((p) => (p.sessions ? p.turns / p.sessions : null)),
        (v) => (v === null ? "" : v.toFixed(1)));
      chart("chart-tokens", "tokens", xs, val((p) => p.input_tokens + p.output_tokens), (v) => int(v));

      breakdown("by-app", "app", byApp.groups);
      breakdown("by-model", "model", byModel.groups);
      breakdown("by-provider", "provider", byProvider.groups);
      table("top-users", ["user", "turns", "calls", "tokens", "cost"], totals.top_users.map((u) => [
        u.user, int(u.turns), int(u.calls), int(u.input_tokens + u.output_tokens), usd(u.cost_usd)]));
      table("budgets", ["budget", "key", "since", "spend", "limit", "tokens", "token limit", "utilization", "state"],
        budgets.map((g) => {
          const util = cell("");
          const bar = document.createElement("span");
          bar.className = "bar";
          const fill = document.createElement("span");
          fill.style.width = Math.min(100, g.utilization * 100) + "%";
          bar.appendChild(fill);
          util.appendChild(bar);
          util.appendChild(document.createTextNode(pct(g.utilization)));
          return [g.name, g.key || "(all)", g.period_start, usd(g.spend_usd), usd(g.limit_usd), int(g.spend_tokens),
            int(g.limit_tokens), util, g.state];
        }));
      document.querySelectorAll("#budgets tr").forEach((tr, i) => {
        if (i > 0 && budgets[i - 1]) tr.className = "state-" + budgets[i - 1].state;
      });
      document.body.dataset.loaded = String(Date.now());
    } catch (err) {
      $("#error").textContent = String(err.message || err);
      $("#error").hidden = false;
      document.body.dataset.loaded = "error";
    }
  }

  function toLocalInput(unix) {
    const d = new Date(unix * 1000);
    d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
    return d.toISOString().slice(0, 16);
  }

  document.querySelectorAll("#range button[data-range]").forEach((btn) => {
    btn.addEventListener("click", () => {
      document.querySelectorAll("#range button[data-range]").forEach((b) => b.classList.toggle("active", b === btn));
      const custom = btn.dataset.range === "custom";
      $("#custom").hidden = !custom;
      if (custom) {
        const b = bounds();
        $("#custom-from").value = toLocalInput(b.from);
        $("#custom-to").value = toLocalInput(b.to);
        return;
      }
      range = { name: btn.dataset.range };
      load();
    });
  });
  $("#custom-apply").addEventListener("click", () => {
    const from = Date.parse($("#custom-from").value) / 1000, to = Date.parse($("#custom-to").value) / 1000;
    if (!(from < to)) { $("#error").textContent = "custom range: from must be before to"; $("#error").hidden = false; return; }
    range = { name: "custom", from: Math.floor(from), to: Math.floor(to) };
    load();
  });
  load();
})();
