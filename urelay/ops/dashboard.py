# -*- test-case-name: tests.test_dashboard,tests.test_dashboard_browser -*-
"""The dashboard page (GET / from a browser): one HTML document with its CSS and a little plain JavaScript inline, no external assets, fed by /events."""

from __future__ import annotations

import base64
import hashlib
import html

from twisted.web.resource import Resource

from urelay.observe.address_text import format_address
from urelay.ops.connections import ConnectionsResource
from urelay.ops.events import EventsResource, LiveFeed
from urelay.ops.namesearch import NamesResource

_STYLE = """
:root{--bg:#f4f6f9;--card:#fff;--ink:#1b2430;--mute:#667085;--line:#e3e7ee;--accent:#2563eb;
--v6:#7c3aed;--v4:#0891b2;--nat:#f59e0b;--bad:#dc2626;--ok:#16a34a;--chip:#eef2ff}
@media (prefers-color-scheme:dark){:root{--bg:#0f141b;--card:#171e28;--ink:#e6ebf2;--mute:#93a0b3;
--line:#273142;--accent:#60a5fa;--chip:#1e2a3d}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1rem;
padding:.7rem 1.2rem;background:var(--card);border-bottom:1px solid var(--line)}
header h1{font-size:1.15rem;margin:0;letter-spacing:.02em}
header h1 span{color:var(--accent)}
.chip{display:inline-flex;align-items:center;gap:.35rem;padding:.15rem .6rem;border-radius:999px;
background:var(--chip);color:var(--ink);font-size:.8rem;white-space:nowrap}
.dot{width:.55rem;height:.55rem;border-radius:50%;background:var(--mute);display:inline-block}
.dot.on{background:var(--ok)}.dot.off{background:var(--bad)}
header .grow{flex:1}
main{padding:1rem 1.2rem;display:grid;gap:1rem;grid-template-columns:repeat(12,minmax(0,1fr));max-width:1500px;margin:0 auto}
.card{background:var(--card);border:1px solid var(--line);border-radius:.8rem;padding:.9rem 1rem;min-width:0}
.card h2{font-size:.8rem;text-transform:uppercase;letter-spacing:.06em;color:var(--mute);margin:0 0 .6rem;
display:flex;flex-wrap:wrap;justify-content:space-between;align-items:baseline;gap:.2rem .5rem}
.card h2 .sub{text-transform:none;letter-spacing:0;font-weight:400}
.stat{grid-column:span 3}.wide{grid-column:span 12}.half{grid-column:span 6}
.big{font-size:1.8rem;font-weight:650;font-variant-numeric:tabular-nums}
.sub{color:var(--mute);font-size:.8rem}
svg.chart{width:100%;height:70px;display:block;margin-top:.3rem}
.legend{display:flex;flex-wrap:wrap;gap:.3rem .8rem;font-size:.8rem;color:var(--mute)}
.legend i{display:inline-block;width:.7rem;height:.7rem;border-radius:.2rem;margin-right:.3rem;vertical-align:-1px}
input[type=search],input[type=password]{width:100%;max-width:22rem;padding:.45rem .7rem;border:1px solid var(--line);
border-radius:.5rem;background:var(--bg);color:var(--ink);font:inherit}
.tablewrap{overflow-x:auto}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.42rem .5rem;border-bottom:1px solid var(--line);white-space:nowrap}
td.name{max-width:22rem;overflow:hidden;text-overflow:ellipsis}
th{font-size:.75rem;color:var(--mute);font-weight:600;cursor:pointer;user-select:none}
th[data-key]:hover{color:var(--ink)}
th.sorted::after{content:" \\25BE"}th.sorted.up::after{content:" \\25B4"}
td.num,th.num{text-align:right}
tr.fresh td{animation:fresh 1.2s ease-out}
@keyframes fresh{from{background:rgba(37,99,235,.18)}to{background:transparent}}
button{font:inherit;border:1px solid var(--line);background:var(--bg);color:var(--ink);border-radius:.45rem;
padding:.2rem .65rem;cursor:pointer}
button.close{color:var(--bad);border-color:currentColor}
button.close:hover{background:var(--bad);color:#fff}
button:disabled{opacity:.5;cursor:default}
.fam{display:inline-block;min-width:2.6rem;text-align:center;border-radius:.35rem;padding:0 .3rem;font-size:.78rem;color:#fff}
.fam.f6{background:var(--v6)}.fam.f4{background:var(--v4)}.fam.fnat64{background:var(--nat)}.fam.funix,.fam.fnone{background:var(--mute)}
.empty{color:var(--mute);padding:1rem 0;text-align:center}
.toolbar{display:flex;gap:.5rem;align-items:center;margin-bottom:.3rem}
.toolbar input{flex:1}
select{font:inherit;padding:.4rem .5rem;border:1px solid var(--line);border-radius:.5rem;background:var(--bg);color:var(--ink)}
.phone-only{display:none}
#logout{margin:0}
ul.plain{list-style:none;margin:0;padding:0}
ul.plain li{display:flex;gap:.6rem;align-items:center;padding:.35rem 0;border-bottom:1px solid var(--line);min-width:0}
ul.plain li span.what{flex:1;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
.fails{display:flex;flex-wrap:wrap;gap:.3rem;margin-top:.5rem}
.login{max-width:26rem;width:calc(100% - 2rem);margin:12vh auto;padding:1.5rem}
.login p{color:var(--mute)}
.login button{margin-top:.8rem;padding:.45rem 1rem;background:var(--accent);color:#fff;border:0}
.wrong{color:var(--bad)}
@media (max-width:900px){.stat{grid-column:span 6}.half{grid-column:span 12}}
@media (max-width:640px){
main{padding:.6rem;gap:.6rem}.stat{grid-column:span 6}.card{padding:.7rem .75rem}
header{padding:.6rem .75rem}.big{font-size:1.4rem}
table.conns thead{display:none}
.phone-only{display:inline-block}
table.conns tr{display:flex;flex-wrap:wrap;align-items:center;gap:.15rem .9rem;padding:.6rem 0;border-bottom:1px solid var(--line)}
table.conns td{border:0;padding:0;white-space:nowrap;font-size:.8rem;color:var(--mute)}
table.conns td.name{order:1;flex:1 1 0;min-width:0;max-width:none;font-size:.95rem;font-weight:600;color:var(--ink);
white-space:normal;word-break:break-all}
table.conns td.act{order:2}
table.conns td.via{order:3;flex:1 1 100%}
table.conns td.client,table.conns td.route,table.conns td.up,table.conns td.down,table.conns td.age{order:4}
table.conns td.num{text-align:left}
table.conns td[data-label]::before{content:attr(data-label) " ";color:var(--mute)}
table.conns td.via::before{content:""}
#names li{flex-wrap:wrap;gap:0 .6rem}#names li span.what{flex:1 1 100%}
}
"""

_SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const conns = new Map();
let sortKey = "age", sortUp = false, filter = "", dirty = true;
const HISTORY = 60;
const series = {dns: [], v6: [], v4: [], nat64: [], active: []};
const failures = {};
let lastTick = performance.now();

function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const k of kids) e.append(k);
  return e;
}
function bytes(n) {
  if (n < 1024) return n + " B";
  const u = ["KiB", "MiB", "GiB", "TiB"]; let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + " " + u[i];
}
function age(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
}
function family(c) {
  if (!c.family) return "none";
  return c.family;
}
function nameOf(c) { return c.requested || "(asking)"; }
function put(c) { c.seen = performance.now(); conns.set(c.id, c); dirty = true; }
function ageOf(c) { return c.age + (performance.now() - c.seen) / 1000; }

// Rows are kept and updated in place (a button must not be replaced under the pointer).
const rowsById = new Map();
function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
function makeRow(c) {
  const td = (cls, label) => { const d = el("td", {class: cls}); if (label) d.setAttribute("data-label", label); return d; };
  const cells = {name: td("name"), client: td("client mono", "from"), route: td("route", "route"), via: td("via mono", "via"),
    up: td("num up", "\u2191"), down: td("num down", "\u2193"), age: td("num age", "age"), act: td("act")};
  cells.fam = el("span", {class: "fam"});
  cells.addr = document.createTextNode("");
  cells.via.append(cells.fam, " ", cells.addr);
  const btn = el("button", {class: "close", type: "button", textContent: "Close", title: "close this connection"});
  btn.dataset.id = c.id;
  cells.act.append(btn);
  const tr = el("tr", {"data-id": String(c.id)}, cells.name, cells.client, cells.route, cells.via, cells.up, cells.down, cells.age, cells.act);
  if (c.fresh) tr.className = "fresh";
  tr.cells_ = cells;
  rowsById.set(c.id, tr);
  return tr;
}
function render() {
  const rows = [...conns.values()].filter((c) => {
    if (!filter) return true;
    return [c.client, c.requested, c.destination, c.connected, c.route, c.listener].join(" ").toLowerCase().includes(filter);
  });
  const val = (c) => sortKey === "age" ? ageOf(c) : sortKey === "requested" ? nameOf(c) : (c[sortKey] ?? "");
  rows.sort((a, b) => { const x = val(a), y = val(b); const r = x < y ? -1 : x > y ? 1 : a.id - b.id; return sortUp ? r : -r; });
  for (const [id, tr] of rowsById) if (!conns.has(id)) { tr.remove(); rowsById.delete(id); }
  const wanted = rows.map((c) => {
    const tr = rowsById.get(c.id) || makeRow(c);
    const k = tr.cells_;
    setText(k.name, nameOf(c)); k.name.title = c.destination || nameOf(c);
    setText(k.client, c.client); setText(k.route, c.route);
    k.fam.className = "fam f" + family(c);
    setText(k.fam, c.family ? (c.family === "unix" ? "unix" : "IPv" + c.family) : "\u2026");
    setText(k.addr, c.connected || "connecting");
    setText(k.up, bytes(c.bytes_up)); setText(k.down, bytes(c.bytes_down)); setText(k.age, age(ageOf(c)));
    c.fresh = false;
    return tr;
  });
  const body = $("conn-rows");
  const same = wanted.length === body.children.length && wanted.every((tr, i) => body.children[i] === tr);
  if (!same) body.replaceChildren(...wanted);
  $("conn-empty").hidden = rows.length > 0;
  $("conn-count").textContent = conns.size;
  $("conn-shown").textContent = filter ? rows.length + " of " + conns.size + " shown" : conns.size + " open";
  dirty = false;
}

function chart(svg, lines, stacked) {
  const w = 300, h = 70, n = HISTORY;
  let max = 1;
  if (stacked) for (let i = 0; i < n; i++) max = Math.max(max, lines.reduce((s, l) => s + (l.data[i] || 0), 0));
  else for (const l of lines) for (const v of l.data) max = Math.max(max, v);
  const parts = [];
  const bw = w / n;
  if (stacked) {
    for (let i = 0; i < n; i++) {
      let y = h;
      for (const l of lines) {
        const v = l.data[i] || 0; if (!v) continue;
        const bh = v / max * (h - 4); y -= bh;
        parts.push(`<rect x="${(i * bw).toFixed(1)}" y="${y.toFixed(1)}" width="${(bw - 1).toFixed(1)}" height="${bh.toFixed(1)}" fill="${l.color}" rx="1"/>`);
      }
    }
  } else {
    for (const l of lines) {
      const pts = l.data.map((v, i) => `${(i * bw + bw / 2).toFixed(1)},${(h - 2 - v / max * (h - 6)).toFixed(1)}`).join(" ");
      parts.push(`<polyline points="${pts}" fill="none" stroke="${l.color}" stroke-width="2" stroke-linejoin="round"/>`);
      parts.push(`<polygon points="${(bw / 2).toFixed(1)},${h} ${pts} ${((l.data.length - 1) * bw + bw / 2).toFixed(1)},${h}" fill="${l.color}" opacity=".12"/>`);
    }
  }
  svg.innerHTML = parts.join("");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
}
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
function push(list, v) { list.push(v); while (list.length > HISTORY) list.shift(); }
function drawCharts() {
  chart($("dns-chart"), [{data: series.dns, color: css("--accent")}], false);
  chart($("conn-chart"), [{data: series.active, color: css("--ok")}], false);
  chart($("he-chart"), [{data: series.v6, color: css("--v6")}, {data: series.v4, color: css("--v4")}, {data: series.nat64, color: css("--nat")}], true);
}
function tick(t) {
  push(series.dns, t.dns_answers);
  push(series.active, t.active);
  // New names may have come with the answers: look again, now and then.
  if (t.dns_answers > 0 && !$("name-q").value.trim() && performance.now() - searched > 5000) searchNames();
  $("dns-minute").textContent = series.dns.reduce((a, b) => a + b, 0);
  push(series.v6, t.wins["6"] || 0); push(series.v4, t.wins["4"] || 0); push(series.nat64, t.wins.nat64 || 0);
  for (const [k, v] of Object.entries(t.failures)) failures[k] = (failures[k] || 0) + v;
  $("dns-rate").textContent = t.dns_answers;
  const wins = series.v6.reduce((a, b) => a + b, 0) + series.v4.reduce((a, b) => a + b, 0) + series.nat64.reduce((a, b) => a + b, 0);
  $("he-total").textContent = wins;
  $("he-6").textContent = series.v6.reduce((a, b) => a + b, 0);
  $("he-4").textContent = series.v4.reduce((a, b) => a + b, 0);
  $("he-nat64").textContent = series.nat64.reduce((a, b) => a + b, 0);
  const f = $("fails");
  const kinds = Object.entries(failures).sort((a, b) => b[1] - a[1]);
  f.replaceChildren(...(kinds.length ? kinds.map(([k, v]) => el("span", {class: "chip", textContent: k + " " + v})) : [el("span", {class: "sub", textContent: "no failures"})]));
  $("rate-up").textContent = bytes(t.bytes_up) + "/s";
  $("rate-down").textContent = bytes(t.bytes_down) + "/s";
  drawCharts();
}
function listeners(list) {
  $("listeners").replaceChildren(...list.map((l) => el("li", {},
    el("span", {class: "dot " + (l.listening ? "on" : "off")}),
    el("span", {class: "what", textContent: l.name}),
    el("span", {class: "mono sub", textContent: l.address || "not listening"}))));
}

function connect() {
  const source = new EventSource("events");
  const state = $("live");
  source.onopen = () => { state.className = "dot on"; $("live-text").textContent = "live"; };
  source.onerror = () => { state.className = "dot off"; $("live-text").textContent = "reconnecting"; };
  source.addEventListener("hello", (e) => {
    const d = JSON.parse(e.data);
    conns.clear();
    for (const c of d.connections) put(c);
    listeners(d.listeners);
    $("access").textContent = d.access === "token" ? "token required \u00b7 signed in" : "local listener \u00b7 no token";
    $("logout").hidden = d.access !== "token";
    render();
  });
  source.addEventListener("opened", (e) => { const c = JSON.parse(e.data); c.fresh = true; put(c); });
  source.addEventListener("updated", (e) => put(JSON.parse(e.data)));
  source.addEventListener("closed", (e) => { conns.delete(JSON.parse(e.data).id); dirty = true; });
  source.addEventListener("tick", (e) => tick(JSON.parse(e.data)));
  source.addEventListener("listeners", (e) => listeners(JSON.parse(e.data)));
}

async function closeConnection(btn) {
  btn.disabled = true; btn.textContent = "Closing\u2026";
  try {
    const r = await fetch("connections/" + btn.dataset.id + "/close", {method: "POST"});
    if (!r.ok) { btn.textContent = r.status === 409 ? "Not yet" : "Failed"; btn.disabled = false; }
  } catch (err) { btn.textContent = "Failed"; btn.disabled = false; }
}

let searchTimer = null, searched = 0;
async function searchNames() {
  searched = performance.now();
  const q = $("name-q").value.trim();
  try {
    const r = await fetch("names?limit=100&q=" + encodeURIComponent(q));
    const d = await r.json();
    $("names").replaceChildren(...d.names.map((n) => el("li", {},
      el("span", {class: "what", textContent: n.name}),
      el("span", {class: "mono sub", textContent: n.address + (n.static ? " (static)" : "")}))));
    $("names-count").textContent = d.names.length + (d.more ? "+" : "") + (q ? " matching" : "");
    $("names-empty").hidden = d.names.length > 0;
    $("names-empty").textContent = q ? "No names match." : "No names handed out yet.";
  } catch (err) { $("names-count").textContent = "?"; }
}

document.addEventListener("DOMContentLoaded", () => {
  $("conn-rows").addEventListener("click", (e) => { const b = e.target.closest("button.close"); if (b) closeConnection(b); });
  for (const th of document.querySelectorAll("th[data-key]")) th.addEventListener("click", () => {
    if (sortKey === th.dataset.key) sortUp = !sortUp; else { sortKey = th.dataset.key; sortUp = th.dataset.key === "requested"; }
    for (const o of document.querySelectorAll("th[data-key]")) o.classList.remove("sorted", "up");
    th.classList.add("sorted"); if (sortUp) th.classList.add("up");
    dirty = true;
  });
  $("conn-sort").addEventListener("change", () => {
    const [key, dir] = $("conn-sort").value.split("-");
    sortKey = key; sortUp = dir === "up";
    for (const o of document.querySelectorAll("th[data-key]")) {
      o.classList.toggle("sorted", o.dataset.key === key); o.classList.toggle("up", o.dataset.key === key && sortUp);
    }
    dirty = true;
  });
  $("conn-q").addEventListener("input", () => { filter = $("conn-q").value.trim().toLowerCase(); dirty = true; });
  $("name-q").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(searchNames, 200); });
  for (let i = 0; i < HISTORY; i++) { series.dns.push(0); series.v6.push(0); series.v4.push(0); series.nat64.push(0); series.active.push(0); }
  drawCharts();
  connect();
  searchNames();
  let ages = 0;
  const frame = () => { if (dirty || performance.now() - ages > 1000) { ages = performance.now(); render(); } requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
});
"""

_BODY = """
<header>
  <h1>u<span>relay</span></h1>
  <span class="chip"><span id="live" class="dot"></span><span id="live-text">connecting</span></span>
  <span class="chip" id="access">&hellip;</span>
  <span class="grow"></span>
  <form method="post" action="logout" id="logout" hidden><button type="submit">Log out</button></form>
  <span class="chip">&uarr; <span id="rate-up">0 B/s</span></span>
  <span class="chip">&darr; <span id="rate-down">0 B/s</span></span>
</header>
<main>
  <section class="card stat"><h2>Connections <span class="sub">open now</span></h2>
    <div class="big" id="conn-count">0</div><svg class="chart" id="conn-chart" preserveAspectRatio="none" aria-label="open connections, last minute"></svg></section>
  <section class="card stat"><h2>DNS answers <span class="sub">per second &middot; <span id="dns-minute">0</span> in the last minute</span></h2>
    <div class="big" id="dns-rate">0</div><svg class="chart" id="dns-chart" preserveAspectRatio="none" aria-label="DNS answers per second, last minute"></svg></section>
  <section class="card half"><h2>Happy Eyeballs <span class="sub">wins per second &middot; <b id="he-total">0</b> in the last minute</span></h2>
    <div class="legend"><span><i style="background:var(--v6)"></i>IPv6 <b id="he-6">0</b></span>
    <span><i style="background:var(--v4)"></i>IPv4 <b id="he-4">0</b></span>
    <span><i style="background:var(--nat)"></i>NAT64 <b id="he-nat64">0</b></span></div>
    <svg class="chart" id="he-chart" preserveAspectRatio="none" aria-label="Happy Eyeballs wins per second by family"></svg>
    <div class="fails" id="fails"><span class="sub">no failures</span></div></section>
  <section class="card wide"><h2>Live connections <span class="sub" id="conn-shown"></span></h2>
    <div class="toolbar"><input type="search" id="conn-q" placeholder="Filter by name, client, address, route" aria-label="filter connections">
    <select id="conn-sort" class="phone-only" aria-label="sort connections">
      <option value="age">Oldest first</option><option value="age-up">Newest first</option>
      <option value="bytes_down">Most received</option><option value="bytes_up">Most sent</option>
      <option value="requested-up">Name</option><option value="client-up">Client</option>
    </select></div>
    <div class="tablewrap"><table class="conns"><thead><tr>
      <th data-key="requested">Name asked</th><th data-key="client">Client</th><th data-key="route">Route</th>
      <th data-key="connected">Connected via</th><th data-key="bytes_up" class="num">&uarr; Up</th>
      <th data-key="bytes_down" class="num">&darr; Down</th><th data-key="age" class="num sorted">Age</th><th></th>
    </tr></thead><tbody id="conn-rows"></tbody></table></div>
    <div class="empty" id="conn-empty">No connections right now.</div></section>
  <section class="card half"><h2>Names and cookies <span class="sub" id="names-count"></span></h2>
    <input type="search" id="name-q" placeholder="Search names or addresses" aria-label="search names">
    <ul class="plain" id="names"></ul><div class="empty" id="names-empty" hidden>No names match.</div></section>
  <section class="card half"><h2>Listeners</h2><ul class="plain" id="listeners"></ul></section>
</main>
"""


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


#: Only the page's own inline style and script run; it talks to its own origin only.
_POLICY = (
    f"default-src 'none'; script-src '{_digest(_SCRIPT)}'; style-src '{_digest(_STYLE)}';"
    " style-src-attr 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
).encode()


def _document(title: str, body: str, script: bool) -> bytes:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        + (f"<script>{_SCRIPT}</script>" if script else "")
        + f"</head><body>{body}</body></html>\n"
    ).encode()


PAGE = _document("urelay", _BODY, script=True)


def login_page(wrong: bool) -> bytes:
    """
    The page a browser gets from a listener that needs the token: it says
    so, and has the form that logs in (C{POST /login}).
    """
    note = '<p class="wrong">That is not the token.</p>' if wrong else ""
    body = f"""
<form class="card login" method="post" action="/login">
  <h1>u<span style="color:var(--accent)">relay</span> control</h1>
  <p>This control listener is on a network address, so it needs the token: the first line of the file
  <span class="mono">[control] token_file</span> names. Logging in sets a cookie for this browser.</p>
  {note}
  <input type="password" name="token" autocomplete="current-password" placeholder="Token" aria-label="token" required autofocus>
  <br><button type="submit">Log in</button>
</form>"""
    return _document("urelay: token required", body, script=False)


class DashboardPage(Resource):
    """
    C{GET /}: the dashboard for a browser (a request that accepts
    C{text/html}); anything else gets C{index}, the API's JSON index.
    """

    isLeaf = True

    def __init__(self, index: Resource):
        super().__init__()
        self._index = index

    def render_GET(self, request):
        if b"text/html" not in (request.getHeader(b"accept") or b""):
            return self._index.render(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", _POLICY)
        return PAGE


def listener_states(services) -> list[dict]:
    """
    Each listener among C{services} (the relay's top service's children):
    its name, whether it listens, and its address when it does.
    """
    states = []
    for service in services:
        if not hasattr(service, "port") or service.name is None:
            continue
        port = service.port
        states.append(
            {
                "name": service.name,
                "listening": port is not None,
                "address": format_address(port.getHost()) if port is not None else None,
            }
        )
    return states


def add_dashboard(root: Resource, feed: LiveFeed, live: set, book) -> None:
    """
    Put the dashboard's resources into the control API's C{root}: the
    page at C{/} (the JSON index stays there for other clients),
    C{/events}, C{/connections} (with C{POST /connections/ID/close}) and
    C{/names}.
    """
    root.putChild(b"", DashboardPage(root.getChild(b"", None)))
    root.putChild(b"events", EventsResource(feed))
    root.putChild(b"connections", ConnectionsResource(live))
    root.putChild(b"names", NamesResource(book))
