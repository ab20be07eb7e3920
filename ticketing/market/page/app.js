// The marketplace front page: account, events and waiting lists, checkout with a
// test card, my orders and tickets, resale. It talks to /api/v1 on this origin and
// keeps a WebSocket open for live offers and list changes.
"use strict";

const API = "/api/v1";
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const params = new URLSearchParams(location.search);

const state = { me: null, events: [], checkout: null, timers: {} };

// -- helpers -------------------------------------------------------------------

function money(cents) {
  return (cents / 100).toLocaleString("en-IE", { style: "currency", currency: "EUR" });
}

function toCents(text) {
  const t = String(text || "").trim().replace(",", ".");
  if (!/^\d+(\.\d{1,2})?$/.test(t)) return null;
  const cents = Math.round(parseFloat(t) * 100);
  return cents > 0 ? cents : null;
}

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// el("li", {testid: "x", class: "y", onclick: fn}, "text", child...)
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "testid") node.dataset.testid = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, errors) {
    super(errors.map((e) => e.message).join("; ") || `HTTP ${status}`);
    this.status = status;
    this.errors = errors;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    // The API refuses state changes that are not JSON (a CSRF guard): always say so.
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body === undefined ? {} : body);
  }
  const resp = await fetch(API + path, opts);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, data.errors || []);
  return data;
}

function show(testid, text) {
  const node = $(testid);
  node.textContent = text || "";
  node.hidden = !text;
}

let flashTimer = null;
function flash(text) {
  show("flash", text);
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => show("flash", ""), 6000);
}

function countdown(key, node, seconds, onZero) {
  clearInterval(state.timers[key]);
  const end = Date.now() + seconds * 1000;
  const tick = () => {
    const left = (end - Date.now()) / 1000;
    node.textContent = clock(left);
    if (left <= 0) {
      clearInterval(state.timers[key]);
      if (onZero) onZero();
    }
  };
  state.timers[key] = setInterval(tick, 1000);
  tick();
}

// -- account -------------------------------------------------------------------

async function loadMe() {
  const data = await api("GET", "/me");
  state.me = data.account;
  $("whoami").textContent = state.me ? `Signed in as ${state.me.email}` : "Guest";
  $("signout").hidden = !state.me;
  $("account-forms").hidden = Boolean(state.me);
}

function authForm(formId, path) {
  const form = document.getElementById(formId);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    show("auth-error", "");
    const body = { email: form.email.value, password: form.password.value };
    try {
      await api("POST", path, body);
      form.reset();
      await afterIdentityChange();
      flash(`Welcome, ${state.me.email}`);
    } catch (err) {
      show("auth-error", err.message);
    }
  });
}

async function afterIdentityChange() {
  await loadMe();
  connectLive(true);
  await refreshAll();
}

$("signout").addEventListener("click", async () => {
  await api("DELETE", "/session");
  await afterIdentityChange();
  flash("Signed out");
});

// -- events and waiting lists --------------------------------------------------

async function loadEvents() {
  const { events } = await api("GET", "/events");
  state.events = events;
  const list = $("events");
  list.replaceChildren();
  const select = $("resale-event");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"));
  for (const ev of events) {
    select.append(el("option", { value: ev.id }, ev.name));
    const li = el("li", { testid: `event-${ev.id}` },
      el("strong", {}, ev.name), " ", el("span", { class: "muted" }, ev.description), " · ",
      money(ev.price_cents), " · ");
    if (!ev.sold_out) {
      li.append(el("span", {}, `${ev.available} left `),
        el("a", { class: "button", href: `/events/${ev.id}`, testid: `get-ticket-${ev.id}` },
          "Get a ticket"));
    } else {
      li.append(el("span", { class: "tag" }, "sold out"), " ");
      const wait = el("span", { testid: `waitlist-${ev.id}` });
      li.append(wait);
      loadWaitlist(ev, wait).catch((err) => flash(err.message));
    }
    list.append(li);
  }
  select.value = chosen;
  if (!events.length) list.append(el("li", { class: "muted" }, "No event yet."));
}

async function loadWaitlist(ev, node) {
  const w = await api("GET", `/events/${ev.id}/waitlist`);
  node.replaceChildren();
  if (w.status === "waiting") {
    node.append(el("span", { testid: `waitlist-position-${ev.id}` },
      `You are number ${w.position} on the waiting list`), " ",
      el("button", { type: "button", class: "secondary", testid: `leave-waitlist-${ev.id}`,
        onclick: () => act(() => api("DELETE", `/events/${ev.id}/waitlist`)) }, "Leave"));
  } else if (w.status === "offered") {
    node.append(el("a", { href: `?order=${w.order_id}`, testid: `waitlist-offer-${ev.id}` },
      "A ticket was offered to you"));
  } else {
    node.append(el("span", { class: "muted" }, `${w.length} waiting `),
      el("button", { type: "button", testid: `join-waitlist-${ev.id}`,
        onclick: () => act(() => api("POST", `/events/${ev.id}/waitlist`)) },
      "Join the waiting list"));
  }
}

// Re-render a list without losing what the user is typing in it (live updates
// re-render lists at any moment).
function rerender(list, build) {
  const typed = {};
  for (const input of list.querySelectorAll("input[data-testid]")) {
    if (input.value) typed[input.dataset.testid] = input.value;
  }
  const focused = document.activeElement && list.contains(document.activeElement)
    ? document.activeElement.dataset.testid : null;
  list.replaceChildren();
  build();
  for (const [testid, value] of Object.entries(typed)) {
    const input = list.querySelector(`input[data-testid="${testid}"]`);
    if (input) input.value = value;
  }
  if (focused) {
    const again = list.querySelector(`[data-testid="${focused}"]`);
    if (again) again.focus();
  }
}

// Run an action, show its error, refresh everything.
async function act(fn, errorTestid) {
  try {
    await fn();
  } catch (err) {
    if (errorTestid) show(errorTestid, err.message);
    else flash(err.message);
  }
  await refreshAll();
}

// -- checkout --------------------------------------------------------------------

const STATUS = {
  awaiting_payment: "Awaiting payment",
  complete: "Paid: the ticket is yours",
  expired: "Your hold has expired",
  cancelled: "Cancelled",
};

function orderPath(kind, id) {
  return `/${kind === "resale" ? "resale-orders" : "orders"}/${id}`;
}

async function openCheckout(kind, id) {
  state.checkout = { kind, id };
  const q = kind === "resale" ? `?resale=${id}` : `?order=${id}`;
  history.replaceState(null, "", q);
  show("checkout-error", "");
  try {
    renderCheckout(await api("GET", orderPath(kind, id)));
  } catch (err) {
    $("checkout").hidden = false;
    show("checkout-error", err.message);
  }
  $("checkout").scrollIntoView({ block: "start" });
}

function renderCheckout(order) {
  state.checkout = { kind: order.kind, id: order.id, version: order.version };
  $("checkout").hidden = false;
  $("checkout-ticket").textContent = order.ticket_id;
  $("checkout-event").textContent = (order.event && order.event.name) || `event ${order.event.id}`;
  $("checkout-price").textContent = money(order.price_cents);
  $("checkout-status").textContent = STATUS[order.status] || order.status;
  const open = order.status === "awaiting_payment";
  document.getElementById("checkout-hold").hidden = !open;
  document.getElementById("pay-form").hidden = !open;
  if (open) {
    countdown("checkout", $("checkout-countdown"), order.seconds_left, () => reloadCheckout());
  } else {
    clearInterval(state.timers.checkout);
  }
}

async function reloadCheckout() {
  const c = state.checkout;
  if (!c) return;
  try {
    renderCheckout(await api("GET", orderPath(c.kind, c.id)));
  } catch (err) {
    show("checkout-error", err.message);
  }
}

document.getElementById("pay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const c = state.checkout;
  const card = e.target.card.value;
  show("checkout-error", "");
  $("pay").disabled = true;
  try {
    const order = await api("POST", `${orderPath(c.kind, c.id)}/pay`, { card, version: c.version });
    renderCheckout(order);
    flash(`Paid ${money(order.price_cents)} for ticket ${order.ticket_id}`);
  } catch (err) {
    show("checkout-error", err.message);
    await reloadCheckout();
  } finally {
    $("pay").disabled = false;
  }
  await refreshAll();
});

$("cancel-order").addEventListener("click", async () => {
  const c = state.checkout;
  show("checkout-error", "");
  try {
    renderCheckout(await api("POST", `${orderPath(c.kind, c.id)}/cancel`, { version: c.version }));
  } catch (err) {
    show("checkout-error", err.message);
  }
  await refreshAll();
});

// -- my orders and tickets ---------------------------------------------------------

async function loadOrders() {
  const { orders } = await api("GET", "/orders");
  const list = $("my-orders");
  list.replaceChildren();
  for (const o of orders.slice(0, 20)) {
    const li = el("li", { testid: `order-${o.kind}-${o.id}` },
      `${o.kind === "resale" ? "Resale" : "Order"} ${o.id}: ticket ${o.ticket_id} · `,
      money(o.price_cents), " · ", el("span", { testid: `order-status-${o.kind}-${o.id}` },
        // "Paid", not "yours": the ticket may have been resold since ("My tickets" says).
        o.status === "complete" ? "Paid" : STATUS[o.status] || o.status), " ");
    if (o.status === "awaiting_payment") {
      li.append(el("button", { type: "button", testid: `open-${o.kind}-${o.id}`,
        onclick: () => openCheckout(o.kind, o.id) }, "Checkout"));
    }
    list.append(li);
  }
  if (!orders.length) list.append(el("li", { class: "muted" }, "No orders yet."));
}

async function loadTickets() {
  const { tickets } = await api("GET", "/tickets");
  const list = $("my-tickets");
  rerender(list, () => renderTickets(list, tickets));
}

function renderTickets(list, tickets) {
  for (const t of tickets) {
    const id = t.ticket_id;
    const li = el("li", { testid: `ticket-${id}` },
      el("strong", {}, `Ticket ${id}`), ` · ${(t.event && t.event.name) || ""} `);
    const listing = t.listing;
    const err = el("span", { class: "error", testid: `ticket-error-${id}`, hidden: true });
    if (!listing) {
      const price = el("input", { inputmode: "decimal", size: 6, placeholder: "price €",
        testid: `list-price-${id}` });
      li.append(price, " ", el("button", { type: "button", testid: `list-${id}`, onclick: () => {
        const cents = toCents(price.value);
        if (!cents) return show(`ticket-error-${id}`, "enter a price such as 30.00");
        return act(async () => {
          await api("POST", "/listings", { ticket_id: id, price_cents: cents });
          price.value = "";
        }, `ticket-error-${id}`);
      } }, "List for resale"));
    } else {
      li.append("Listed at ", el("strong", { testid: `listing-price-${id}` },
        money(listing.price_cents)), " ",
        el("span", { class: "tag", testid: `listing-status-${id}` }, listing.status), " ");
      if (listing.status === "active") {
        const price = el("input", { inputmode: "decimal", size: 6, placeholder: "new price €",
          testid: `edit-price-${id}` });
        li.append(price, " ",
          el("button", { type: "button", testid: `save-price-${id}`, onclick: () => {
            const cents = toCents(price.value);
            if (!cents) return show(`ticket-error-${id}`, "enter a price such as 30.00");
            return act(async () => {
              await api("PATCH", `/listings/${listing.id}`,
                { price_cents: cents, version: listing.version });
              price.value = "";
            }, `ticket-error-${id}`);
          } }, "Change price"), " ",
          el("button", { type: "button", class: "secondary", testid: `withdraw-${id}`,
            onclick: () => act(() => api("DELETE",
              `/listings/${listing.id}?version=${listing.version}`), `ticket-error-${id}`) },
          "Withdraw"));
      } else if (listing.status === "locked") {
        li.append(el("span", { class: "muted" }, "a buyer is checking out"));
      }
    }
    li.append(" ", err);
    list.append(li);
  }
  if (!tickets.length) list.append(el("li", { class: "muted" }, "No tickets yet."));
}

// -- resale -------------------------------------------------------------------------

async function loadResale() {
  const f = document.getElementById("resale-filter");
  const q = new URLSearchParams();
  if (f.event.value) q.set("event", f.event.value);
  const min = toCents(f.min.value), max = toCents(f.max.value);
  if (min) q.set("min_price", min);
  if (max) q.set("max_price", max);
  const { listings } = await api("GET", `/listings?${q}`);
  const names = Object.fromEntries(state.events.map((e) => [e.id, e.name]));
  const list = $("resale-list");
  list.replaceChildren();
  for (const l of listings) {
    const li = el("li", { testid: `resale-${l.id}` },
      `Ticket ${l.ticket_id} · ${names[l.event_id] || ""} · `,
      el("strong", { testid: `resale-price-${l.id}` }, money(l.price_cents)), " ");
    if (l.mine) li.append(el("span", { class: "tag" }, "your listing"));
    else if (l.status === "locked") li.append(el("span", { class: "tag" }, "in checkout"));
    else {
      li.append(el("button", { type: "button", testid: `buy-${l.id}`, onclick: async () => {
        try {
          const order = await api("POST", `/listings/${l.id}/buy`);
          await openCheckout("resale", order.id);
        } catch (err) {
          flash(err.message);
        }
        await refreshAll();
      } }, "Buy"));
    }
    list.append(li);
  }
  if (!listings.length) list.append(el("li", { class: "muted" }, "Nothing listed."));
}

document.getElementById("resale-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  loadResale().catch((err) => flash(err.message));
});

// -- live updates -------------------------------------------------------------------

let live = null;
function connectLive(restart) {
  if (live && !restart) return;
  if (live) { live.onclose = null; live.close(); }
  live = new WebSocket(`wss://${location.host}${API}/ws`);
  live.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "offer") showOffer(msg.order);
    if (msg.type === "order" && state.checkout && msg.order.id === state.checkout.id &&
        msg.order.kind === state.checkout.kind) renderCheckout(msg.order);
    if (msg.type !== "hello") refreshAll();
  };
  live.onclose = () => { live = null; setTimeout(() => connectLive(false), 2000); };
}

function showOffer(order) {
  $("offer").hidden = false;
  $("offer-text").textContent =
    `Ticket ${order.ticket_id} for ${(order.event && order.event.name) || "your event"}.`;
  const link = $("offer-link");
  link.href = `?order=${order.id}`;
  link.onclick = (e) => { e.preventDefault(); openCheckout("order", order.id); };
  countdown("offer", $("offer-countdown"), order.seconds_left);
}

// -- start ---------------------------------------------------------------------------

let refreshing = null;
let refreshAgain = false;
async function refreshAll() {
  if (refreshing) {  // coalesce bursts of notices, but never miss the last one
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      try {
        await loadEvents();
        await Promise.all([loadOrders(), loadTickets(), loadResale()]);
      } catch (err) {
        flash(err.message);
      }
    } while (refreshAgain);
    refreshing = null;
  })();
  return refreshing;
}

async function start() {
  authForm("signup-form", "/accounts");
  authForm("signin-form", "/session");
  await loadMe();
  connectLive(false);
  await refreshAll();
  if (params.get("order")) await openCheckout("order", params.get("order"));
  else if (params.get("resale")) await openCheckout("resale", params.get("resale"));
  document.body.dataset.ready = "1";
}

start().catch((err) => flash(err.message));
