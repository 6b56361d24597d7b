// Activity page: the last hour's chart (GET /history), mailbox depths
// against their limits, relay circuits with bytes and rate, sync topics
// with each device's lag.

import { serverNow } from "./api.js";
import { $, fmtBytes, fmtCount, fmtDuration, gauge, h, renderInto } from "./dom.js";
import { barChart } from "./chart.js";

export const needs = ["peers", "mailbox", "relay", "sync", "history"];

const seen = new Map(); // circuit id -> {bytes, at}: the previous poll, for a rate

export function render(state) {
  const names = {};
  for (const p of state.peers || []) names[p.peer_id] = p.name || "(unnamed device)";
  const who = (peerId) => names[peerId] || peerId.slice(0, 10) + "\u2026";
  renderCharts(state.history);
  renderInto($("mailbox"), { mailbox: state.mailbox, names }, ({ mailbox }) => mailboxView(mailbox, who));
  renderInto($("relay"), { relay: state.relay, names, rates: rates(state.relay) }, ({ relay, rates }) =>
    relayView(relay, rates, who));
  renderInto($("sync"), { sync: state.sync, names }, ({ sync }) => syncView(sync, who));
}

function renderCharts(history) {
  const minutes = history?.minutes || [];
  const now = history?.now ?? serverNow();
  const slots = minutes.map((m, i) => {
    // The last entry is the minute in progress: its rate is over the seconds elapsed.
    const seconds = i === minutes.length - 1 ? Math.max(1, now - m.start) : history.interval;
    return { start: m.start, stored: m.stored || 0, delivered: m.delivered || 0, relay: (m.relay_bytes || 0) / seconds };
  });
  renderInto($("chart-messages"), slots.map((s) => [s.start, s.stored, s.delivered]), () =>
    barChart(slots, [{ key: "stored", label: "stored" }, { key: "delivered", label: "delivered" }], fmtCount));
  renderInto($("chart-relay"), slots.map((s) => [s.start, Math.round(s.relay)]), () =>
    barChart(slots, [{ key: "relay", label: "bytes/s" }], (n) => fmtBytes(n) + "/s"));
}

function table(headings, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { "data-label": headings[i] }, c)))))));
}

function mailboxView(mailbox, who) {
  if (!mailbox) return [];
  if (!mailbox.enabled) return h("p", { class: "empty" }, "Store-and-forward is disabled (CAIRN_FORWARD_ENABLED=false).");
  const limits = mailbox.limits || {};
  return [
    h("dl", { class: "facts" },
      h("dt", {}, "Messages held"), h("dd", {}, fmtCount(mailbox.messages)),
      h("dt", {}, "Storage"), h("dd", {}, gauge(mailbox.bytes, limits.max_total,
        `${fmtBytes(mailbox.bytes)} of ${fmtBytes(limits.max_total)}`)),
      h("dt", {}, "Oldest"), h("dd", {}, mailbox.oldest_age === null ? "—" : fmtDuration(mailbox.oldest_age) +
        ` (kept up to ${fmtDuration(limits.max_age)})`)),
    table(["Recipient", "Queue", "Bytes", "Oldest"], mailbox.peers.map((p) => [
      who(p.peer_id),
      gauge(p.messages, p.limits.max_messages, `${fmtCount(p.messages)} / ${fmtCount(p.limits.max_messages)}`),
      p.limits.max_bytes ? `${fmtBytes(p.bytes)} / ${fmtBytes(p.limits.max_bytes)}` : fmtBytes(p.bytes),
      fmtDuration(p.oldest_age),
    ]), "No message is waiting for any peer."),
  ];
}

/** Bytes per second of each open circuit since the previous poll (its average over its age at first sight). */
function rates(relay) {
  const now = serverNow();
  const result = {};
  for (const c of relay?.open || []) {
    const before = seen.get(c.circuit);
    if (before && now > before.at) result[c.circuit] = Math.max(0, (c.bytes - before.bytes) / (now - before.at));
    else result[c.circuit] = c.age ? c.bytes / c.age : 0;
    seen.set(c.circuit, { bytes: c.bytes, at: now });
  }
  for (const id of [...seen.keys()]) if (!(id in result)) seen.delete(id);
  for (const id of Object.keys(result)) result[id] = Math.round(result[id]);
  return result;
}

function relayView(relay, rates, who) {
  if (!relay) return [];
  const open = relay.open || [];
  return [
    h("dl", { class: "facts" },
      h("dt", {}, "Circuits"), h("dd", {}, relay.capacity
        ? gauge(relay.circuits, relay.capacity, `${relay.circuits} of ${relay.capacity}`) : String(relay.circuits))),
    table(["Circuit", "Between", "State", "Bytes", "Rate", "Age"], open.map((c) => [
      h("code", {}, c.circuit.slice(0, 8)),
      `${who(c.requester)} \u2192 ${who(c.target)}`,
      `${c.state} (${c.mode})`,
      fmtBytes(c.bytes) + (c.queued ? `, ${fmtBytes(c.queued)} queued` : ""),
      fmtBytes(rates[c.circuit] || 0) + "/s",
      fmtDuration(c.age),
    ]), "No circuit is open."),
    (relay.peers || []).length ? h("h3", {}, "Per peer") : null,
    (relay.peers || []).length ? table(["Peer", "Sent", "Received", "Quota", "Rate limit"], relay.peers.map((p) => [
      who(p.peer_id), fmtBytes(p.bytes_sent), fmtBytes(p.bytes_received),
      p.quota === null ? "none" : gauge(p.bytes_sent, p.quota, `${fmtBytes(p.bytes_sent)} of ${fmtBytes(p.quota)}`),
      p.max_rate === null ? "none" : fmtBytes(p.max_rate) + "/s",
    ]), "") : null,
  ];
}

function syncView(sync, who) {
  if (!sync) return [];
  const topics = sync.topics || [];
  if (!topics.length) return h("p", { class: "empty" }, "No sync topic yet.");
  return topics.map((t) => h("section", { class: "topic" },
    h("h3", {}, t.topic, " ", h("span", { class: "meta" },
      `head ${fmtCount(t.head)} · ${fmtCount(t.updates)} updates · ${fmtBytes(t.bytes)}`)),
    table(["Device", "Cursor", "Lag", "Connected"], (t.devices || []).map((d) => [
      who(d.peer_id),
      fmtCount(d.cursor),
      d.behind_retention ? `${fmtCount(d.lag)} (behind retention)` : fmtCount(d.lag),
      d.connected ? "yes" : "no",
    ]), "No device follows this topic.")));
}
