// The buyer's page on a shard: read the admission token from the URL, open the
// WSS connection, ask once, show the ticket (with the hold countdown) or "sold out".
// A "retry" answer (the shard lost main, or its tickets are out of reach) sends the
// page back through the front with its place token: the front re-admits it, or
// shows a "please wait" page that retries by itself, and it keeps its place.
"use strict";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const params = new URLSearchParams(location.search);
const token = params.get("token");
const eventId = params.get("event");
const place = params.get("place");  // our place in line, signed by the front
// The front (for "back to the start" and checkout) comes only from the shard's answer,
// which takes it from the token main signed: never from this page's own URL.
let front = null;

function money(cents) {
  return (cents / 100).toLocaleString(undefined, { style: "currency", currency: "EUR" });
}

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = false;
  if (front) {
    $("retry-link").href = front;
    document.getElementById("again").hidden = false;
  }
}

function showEvent(ev) {
  if (!ev || !ev.name) return;
  $("event-name").textContent = ev.name;
  $("event-description").textContent = ev.description || "";
  $("event-price").textContent = money(ev.price_cents);
  document.title = `Tickets: ${ev.name}`;
}

function startCountdown(seconds) {
  const end = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.max(0, Math.round((end - Date.now()) / 1000));
    const m = Math.floor(left / 60), s = String(left % 60).padStart(2, "0");
    $("countdown").textContent = `${m}:${s}`;
    if (left === 0) { setStatus("Your hold has expired"); clearInterval(timer); }
  };
  const timer = setInterval(tick, 1000);
  tick();
}

function setFront(msg) {
  try {
    const url = new URL(msg.front);
    if (url.protocol === "https:" && url.origin === msg.front) front = url.origin;
  } catch (e) { front = null; }
}

function showTicket(msg) {
  showEvent(msg.event);
  setStatus("You have a ticket!");
  $("ticket-id").textContent = msg.ticket_id;
  $("ticket-price").textContent = money(msg.price_cents);
  document.getElementById("ticket").hidden = false;
  startCountdown(msg.hold_seconds);
  // Checkout happens on the front (the redirect server's /app/ page).
  const checkoutUrl = msg.checkout_url ||
    (front && msg.order_id ? `${front}/app/?order=${encodeURIComponent(msg.order_id)}` : null);
  if (checkoutUrl) {
    $("checkout-link").href = checkoutUrl;
    document.getElementById("checkout").hidden = false;
  }
}

function backToFront(reason) {
  if (!front || !eventId) {
    setStatus("Something went wrong");
    showError(reason || "please try again");
    return;
  }
  setStatus("Taking you back to the line…");
  const query = place ? `?place=${encodeURIComponent(place)}` : "";
  location.replace(`${front}/events/${encodeURIComponent(eventId)}${query}`);
}

async function main() {
  if (!token) {
    setStatus("No admission");
    showError("Open the sale's start page: it sends you here with an admission token.");
    return;
  }
  if (eventId) {
    fetch(`/event?id=${encodeURIComponent(eventId)}`)
      .then((r) => (r.ok ? r.json() : null)).then(showEvent).catch(() => {});
  }
  const ws = new WebSocket(`wss://${location.host}/ws?token=${encodeURIComponent(token)}`);
  let answered = false;
  ws.onopen = () => {
    setStatus("waiting in line…");
    ws.send(JSON.stringify({ type: "request" }));
  };
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    answered = true;
    setFront(msg);
    if (msg.type === "pending") {  // still in line, or the ticket being confirmed
      setStatus(`still working on it… (${Math.round(msg.waited_s || 0)} s)`);
      return;
    }
    if (msg.type === "ticket") showTicket(msg);
    else if (msg.type === "sold_out") { showEvent(msg.event); setStatus("Sold out"); }
    else if (msg.type === "retry") backToFront(msg.reason);
    else { setStatus("Something went wrong"); showError(msg.message || "unknown error"); }
    ws.close();
  };
  ws.onclose = () => {
    if (!answered) {
      setStatus("Not admitted");
      showError("This admission link was refused: it was already used, has expired, " +
                "or you are connected in another tab.");
    }
  };
}

main();
