// The operator dashboard: polls /admin/data with the operator token, keeps a short
// history per event and draws it on canvases (no third-party code).
"use strict";

const COLORS = { sold: "#137333", held: "#e8a317", available: "#1a73e8", rate: "#8e24aa" };
const HISTORY = 300; // samples kept per event (five minutes at one a second)
const history = new Map(); // event id -> [{t, sold, held, available, granted}]
let timer = null;

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem("operator-token");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

async function poll() {
  let resp;
  try {
    resp = await fetch("/admin/data", { headers: { Authorization: `Bearer ${token()}` } });
  } catch (err) {
    $("clock").textContent = "front unreachable";
    return;
  }
  if (resp.status === 401 || resp.status === 403) {
    signOut((await resp.json()).errors[0].message);
    return;
  }
  const data = await resp.json();
  $("clock").textContent = new Date(data.time * 1000).toLocaleTimeString();
  render(data);
}

function render(data) {
  const box = $("events");
  box.replaceChildren();
  for (const e of data.events) {
    const available = e.unassigned + e.pool;
    const h = history.get(e.id) || [];
    h.push({ t: data.time, sold: e.sold, held: e.held, available, granted: e.granted });
    if (h.length > HISTORY) h.shift();
    history.set(e.id, h);
    const rate = h.length > 1 ? (h.at(-1).granted - h.at(-2).granted) / (h.at(-1).t - h.at(-2).t) : 0;
    const numbers = el("div", { class: "numbers" });
    for (const [label, value] of [["sold", e.sold], ["held", e.held], ["available", available],
      ["in shard pools", e.pool], ["granted", e.granted], ["grants/s", rate.toFixed(1)]]) {
      numbers.append(el("div", { "data-testid": `event-${e.id}-${label.replace(/\W/g, "-")}` },
        el("b", {}, String(value)), label));
    }
    const chart = el("canvas", { width: 640, height: 180, "aria-label": `event ${e.id} over time` });
    const rateChart = el("canvas", { width: 640, height: 90, "aria-label": "grants per second" });
    const legend = el("div", { class: "legend" });
    for (const k of ["sold", "held", "available", "rate"]) {
      const i = el("i"); i.style.background = COLORS[k];
      legend.append(el("span", {}, i, k === "rate" ? "grants/s" : k));
    }
    box.append(el("section", { class: "card", "data-testid": `event-${e.id}` },
      el("h2", {}, `#${e.id} ${e.name} · ${e.total} tickets`), numbers, chart, rateChart, legend));
    lines(chart, h, ["sold", "held", "available"], e.total);
    const rates = h.slice(1).map((p, i) => ({ t: p.t, rate: (p.granted - h[i].granted) / Math.max(0.001, p.t - h[i].t) }));
    lines(rateChart, rates, ["rate"], Math.max(1, ...rates.map((r) => r.rate)));
  }
  const rows = $("shard-rows");
  rows.replaceChildren();
  for (const s of data.shards) {
    const stock = Object.values(s.stock).reduce((a, b) => a + b, 0);
    rows.append(el("tr", {},
      el("td", {}, s.name || "?"),
      el("td", { class: s.online ? "up" : "down" }, s.online ? "up" : "down"),
      el("td", {}, String(s.epoch)), el("td", {}, String(stock)),
      el("td", {}, String(s.queued ?? "–")), el("td", {}, String(s.connections ?? "–")),
      el("td", {}, String(s.unacked ?? "–"))));
  }
  bars($("stock-chart"), data.shards.map((s) => [s.name || "?", Object.values(s.stock).reduce((a, b) => a + b, 0)]));
  const f = $("fencings");
  f.replaceChildren(...(data.fencings.length ? data.fencings.slice().reverse().map((x) =>
    el("li", {}, `${new Date(x.time * 1000).toLocaleTimeString()}: ${x.shard} fenced at epoch ${x.epoch}`))
    : [el("li", {}, "none")]));
}

function lines(canvas, points, keys, max) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 24;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#ccd"; ctx.strokeRect(pad, 4, W - pad - 4, H - pad);
  ctx.fillStyle = "#556"; ctx.font = "11px system-ui";
  ctx.fillText(String(Math.round(max)), 2, 12); ctx.fillText("0", 2, H - pad);
  if (points.length < 2) return;
  const t0 = points[0].t, t1 = points.at(-1).t || t0 + 1;
  for (const k of keys) {
    ctx.strokeStyle = COLORS[k]; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((p, i) => {
      const x = pad + ((p.t - t0) / Math.max(0.001, t1 - t0)) * (W - pad - 6);
      const y = 4 + (1 - p[k] / Math.max(1, max)) * (H - pad - 4);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
}

function bars(canvas, items) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  const max = Math.max(1, ...items.map(([, n]) => n));
  const bw = Math.min(80, (W - 20) / Math.max(1, items.length) - 10);
  items.forEach(([name, n], i) => {
    const h = (n / max) * (H - 36), x = 10 + i * (bw + 10);
    ctx.fillStyle = COLORS.available; ctx.fillRect(x, H - 20 - h, bw, h);
    ctx.fillStyle = "#1d2330"; ctx.font = "11px system-ui";
    ctx.fillText(`${name}: ${n}`, x, H - 6);
  });
}

function signIn(value) {
  sessionStorage.setItem("operator-token", value);
  $("signin").hidden = true; $("board").hidden = false; $("signout").hidden = false;
  poll();
  timer = setInterval(poll, 1000);
}

function signOut(message = "") {
  sessionStorage.removeItem("operator-token");
  clearInterval(timer);
  $("signin").hidden = false; $("board").hidden = true; $("signout").hidden = true;
  $("signin-error").textContent = message;
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("token").value.trim());
  $("token").value = "";
});
$("signout").addEventListener("click", () => signOut());
if (token()) signIn(token());
