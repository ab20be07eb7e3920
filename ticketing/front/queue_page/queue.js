// The waiting room page: shows the place in line and the wait, long-polls the
// front, and goes on by itself when released. No third-party code.
"use strict";

const room = document.getElementById("room");
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
let state = JSON.parse(room.dataset.state);
let deadline = 0; // performance.now() when the countdown or the ETA reaches 0

function duration(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function tickClock() {
  const left = (deadline - performance.now()) / 1000;
  if (state.prequeue) $("countdown").textContent = duration(left);
  else if (state.status === "queued" && state.paused) $("eta").textContent = "paused";
  else if (state.status === "queued") $("eta").textContent = left > 0 ? duration(left) : "any moment now";
}

function show(s) {
  state = s;
  if (s.event) $("event-name").textContent = s.event.name;
  document.getElementById("prequeue").hidden = !(s.status === "queued" && s.prequeue);
  document.getElementById("line").hidden = !(s.status === "queued" && !s.prequeue);
  if (s.status === "queued") {
    // Keep the place on a reload: the URL carries the signed queue ticket.
    history.replaceState(null, "", s.location);
    deadline = performance.now() + 1000 * (s.prequeue ? s.starts_in_s : s.eta_s);
    if (s.prequeue) {
      $("status").textContent = "The sale has not started yet";
      $("waiting").textContent = s.waiting;
    } else {
      // Paused: main is away (another one takes over in a few seconds); places stay.
      $("status").textContent = s.paused
        ? "The line is paused for a moment; you keep your place"
        : "You are in line";
      $("position").textContent = s.position;
    }
    tickClock();
  } else if (s.status === "sold_out") {
    $("status").textContent = "Sold out";
  } else if (s.status === "refused" || s.errors) {
    const err = $("error");
    err.hidden = false;
    err.textContent = (s.errors || [{ message: "refused" }])[0].message;
  }
}

async function poll() {
  for (;;) {
    let s;
    try {
      const resp = await fetch(state.poll, { headers: { Accept: "application/json" } });
      s = await resp.json();
    } catch (e) {
      await new Promise((r) => setTimeout(r, 2000)); // the front restarts: try again
      continue;
    }
    if (s.status === "released") { location.replace(s.redirect || s.location); return; }
    show(s);
    if (s.status !== "queued") return;
    // Far from our turn the front answers at once and says when to call back.
    if (s.next_poll_s > 0) await new Promise((r) => setTimeout(r, 1000 * s.next_poll_s));
  }
}

// Proof of work: SHA-256(challenge ":" i) with `bits` leading zero bits.
function zeroBits(bytes) {
  let n = 0;
  for (const b of bytes) {
    if (b === 0) { n += 8; continue; }
    return n + Math.clz32(b) - 24;
  }
  return n;
}

async function work(s) {
  document.getElementById("work").hidden = false;
  const enc = new TextEncoder();
  const batch = 512;
  for (let i = 0; ; i += batch) {
    const tries = [];
    for (let j = i; j < i + batch; j++) {
      tries.push(crypto.subtle.digest("SHA-256", enc.encode(`${s.challenge}:${j}`)));
    }
    const digests = await Promise.all(tries);
    for (let k = 0; k < batch; k++) {
      if (zeroBits(new Uint8Array(digests[k])) >= s.bits) {
        location.replace(s.location + (i + k));
        return;
      }
    }
    $("pow").textContent = i + batch;
  }
}

setInterval(tickClock, 250);
if (state.status === "challenge") {
  if (state.errors) show(state);
  work(state);
} else {
  show(state);
  if (state.status === "queued") {
    const first = state.next_poll_s || 0;
    setTimeout(poll, 1000 * first);
  }
}
