// "Pair a device": a new single-use link (as a QR code) and PIN from the
// pairing endpoints, countdowns to their expiry, and "Paired ✓ <name>"
// once a device that was not paired before shows up among the peers.

import { call, serverNow } from "./api.js";
import { $, copyText, fmtClock, h, renderInto } from "./dom.js";

export const needs = ["peers", "node"];

let current = null; // {pin, pinExpires, link, linkExpires, qrUrl, before: Set, paired}
let ticker = null;

export function init(state, refreshSoon) {
  $("pair-button").addEventListener("click", () => begin(refreshSoon));
  $("pair-again").addEventListener("click", () => begin(refreshSoon));
  $("copy-link").addEventListener("click", (event) => copyText($("pair-link").value, $("pair-link"), event.target));
}

async function begin(refreshSoon) {
  for (const id of ["pair-button", "pair-again"]) $(id).disabled = true;
  try {
    // Fresh peers: a device counts as "paired" only if it was not before these secrets.
    const peers = await call("GET", "peers");
    const [pin, qr] = await Promise.all([
      call("POST", "pairing/pin"),
      call("GET", "pairing/qr?format=svg", { raw: true }),
    ]);
    const image = await qr.blob();
    if (current?.qrUrl) URL.revokeObjectURL(current.qrUrl);
    current = {
      pin: pin.pin,
      pinExpires: pin.expires_at,
      link: qr.headers.get("X-Cairn-Link"),
      linkExpires: Number(qr.headers.get("X-Cairn-Expires-At")),
      qrUrl: URL.createObjectURL(image),
      before: new Set(peers.map((p) => p.peer_id)),
      paired: null,
    };
    $("qr").src = current.qrUrl;
    $("pin").textContent = current.pin;
    $("pair-link").value = current.link;
    $("pair-start").hidden = true;
    $("pair-error").hidden = true;
    $("pair-panel").hidden = false;
    $("pair-status").textContent = "Waiting for the device\u2026";
    $("pair-status").className = "pair-status";
    clearInterval(ticker);
    ticker = setInterval(tick, 500);
    tick();
  } catch (error) {
    // Shown where the button was pressed (the panel may still be hidden).
    const where = $("pair-panel").hidden ? $("pair-error") : $("pair-status");
    where.textContent = "Could not create a PIN and link: " + error.message;
    where.hidden = false;
    if (where.id === "pair-status") where.className = "pair-status bad";
  } finally {
    for (const id of ["pair-button", "pair-again"]) $(id).disabled = false;
  }
  refreshSoon();
}

function countdown(el, expires, what) {
  const left = expires - serverNow();
  el.textContent = left > 0 ? `${what} expires in ${fmtClock(left)}` : `${what} expired: make a new one`;
  el.classList.toggle("expired", left <= 0);
  return left > 0;
}

function tick() {
  if (!current) return;
  if (current.paired) {
    $("pin-countdown").textContent = "";
    $("link-countdown").textContent = "";
    clearInterval(ticker);
    return;
  }
  const pinLive = countdown($("pin-countdown"), current.pinExpires, "PIN");
  const linkLive = countdown($("link-countdown"), current.linkExpires, "Link and QR code");
  $("pin").classList.toggle("expired", !pinLive);
  $("qr").classList.toggle("expired", !linkLive);
  if (!pinLive && !linkLive) {
    $("pair-status").textContent = "Both expired. Make new ones to pair a device.";
    clearInterval(ticker);
  }
}

export function render(state) {
  renderInto($("pair-addresses"), state.node?.listeners || [], (listeners) => {
    const shown = listeners.filter((l) => l.name !== "management" && l.address);
    return shown.length
      ? shown.map((l) => h("li", {}, h("code", {}, l.name === "websocket" ? `ws://${l.address}/` : `tcp:${l.address}`)))
      : h("li", {}, "No cairn listener is bound.");
  });
  if (!current || current.paired) return;
  const joined = (state.peers || []).find((p) => !current.before.has(p.peer_id));
  if (joined) {
    current.paired = joined;
    const status = $("pair-status");
    status.textContent = `Paired \u2713 ${joined.name || "(unnamed device)"}`;
    status.className = "pair-status ok";
    $("pin").classList.add("expired");
    $("qr").classList.add("expired");
    tick();
  }
}
