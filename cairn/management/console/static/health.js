// Health page: GET /health (status, version, uptime, sessions and whatever
// else the node reports there) and GET /node (peer id, listeners, warnings).

import { $, fmtDuration, h, peerIdCopy, renderInto } from "./dom.js";

export const needs = ["health", "node"];

const KNOWN = ["status", "version", "uptime", "sessions"];

function label(key) {
  return key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function value(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "object") return h("code", {}, JSON.stringify(v));
  return String(v);
}

export function render(state) {
  const health = state.health || {};
  const node = state.node || {};
  // Uptime is shown in minutes: re-render when that changes, not every poll.
  const shown = { ...health, uptime: Math.floor((health.uptime || 0) / 60), peer_id: node.peer_id };
  renderInto($("health"), shown, () => [
    h("dt", {}, "Status"),
    h("dd", {}, h("span", { class: "status " + (health.status === "ok" ? "ok" : "bad") }, health.status || "unknown")),
    h("dt", {}, "Version"), h("dd", {}, health.version || "—"),
    h("dt", {}, "Uptime"), h("dd", {}, fmtDuration(health.uptime)),
    h("dt", {}, "Sessions"), h("dd", {}, value(health.sessions)),
    h("dt", {}, "Node peer id"), h("dd", {}, node.peer_id ? peerIdCopy(node.peer_id) : "—"),
    // Fields other parts of the node add to /health are shown as they come.
    Object.keys(health).filter((k) => !KNOWN.includes(k)).flatMap((k) => [h("dt", {}, label(k)), h("dd", {}, value(health[k]))]),
  ]);
  renderInto($("warnings"), node.warnings || [], (warnings) => warnings.length
    ? warnings.map((w) => h("li", { class: "warning" }, w))
    : h("li", { class: "fine" }, "No warnings."));
  renderInto($("listeners"), node.listeners || [], (listeners) => h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["Listener", "Endpoint", "Bound to"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, listeners.map((l) => h("tr", {},
      h("td", { "data-label": "Listener" }, l.name),
      h("td", { "data-label": "Endpoint" }, h("code", {}, l.endpoint || "—")),
      h("td", { "data-label": "Bound to" }, l.address || "not bound")))))));
}
