// Peers page: pending pairing requests (approve / reject) and paired peers
// (status, transport, last seen, mailbox depth; revoke after a confirmation).

import { call, serverNow } from "./api.js";
import { $, fmtBytes, fmtCount, fmtDate, fmtDuration, h, invalidate, peerIdCopy, renderInto } from "./dom.js";

export const needs = ["peers", "peers/pending", "mailbox"];

let notice = null; // {text, kind}: the outcome of the last action, shown above the lists

export function render(state, refreshSoon) {
  const depths = {};
  for (const entry of state.mailbox?.peers || []) depths[entry.peer_id] = entry;
  renderInto($("pending-list"), { pending: state["peers/pending"], notice }, ({ pending }) =>
    [notice ? h("p", { class: `notice ${notice.kind}`, role: "status" }, notice.text) : null,
      pending.length ? pending.map((p) => pendingCard(p, refreshSoon))
        : h("p", { class: "empty" }, "No pairing request is waiting.")]);
  // Relative times are rendered in minutes, so re-rendering on their change is enough.
  const now = Math.floor(serverNow() / 60);
  renderInto($("peer-list"), { peers: state.peers, depths, now }, ({ peers }) =>
    peers.length ? sortPeers(peers).map((p) => peerCard(p, depths[p.peer_id], refreshSoon))
      : h("p", { class: "empty" }, "No device is paired yet. Use \u201cPair a device\u201d."));
}

function sortPeers(peers) {
  return [...peers].sort((a, b) => (b.connected - a.connected) || (a.name || "").localeCompare(b.name || ""));
}

function displayName(peer) {
  return peer.name || "(unnamed device)";
}

function pendingCard(peer, refreshSoon) {
  const act = (action) => async (event) => {
    event.target.disabled = true;
    try {
      await call("POST", "peers/" + action, { body: { peer_id: peer.peer_id } });
      setNotice(action === "approve" ? `Approved ${displayName(peer)}.` : `Rejected ${displayName(peer)}.`, "ok");
    } catch (error) {
      setNotice(`Could not ${action} ${displayName(peer)}: ${error.message}`, "bad");
    }
    refreshSoon();
  };
  return h("article", { class: "peer pending", dataset: { peerId: peer.peer_id } },
    h("div", { class: "peer-head" },
      h("span", { class: "dot waiting", title: "waiting for approval" }),
      h("strong", { class: "name" }, displayName(peer)),
      h("span", { class: "badge" }, "wants to pair")),
    peerIdCopy(peer.peer_id),
    h("p", { class: "meta" }, "Asked ", ago(peer.requested_at)),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "approve", onclick: act("approve") }, "Approve"),
      h("button", { type: "button", class: "quiet reject", onclick: act("reject") }, "Reject")));
}

function peerCard(peer, mailbox, refreshSoon) {
  const online = peer.connected;
  const depth = mailbox
    ? `${fmtCount(mailbox.messages)} waiting (${fmtBytes(mailbox.bytes)}, oldest ${fmtDuration(mailbox.oldest_age)})`
    : "empty";
  return h("article", { class: "peer" + (online ? " online" : ""), dataset: { peerId: peer.peer_id } },
    h("div", { class: "peer-head" },
      h("span", { class: "dot" + (online ? " on" : ""), title: online ? "online" : "offline" }),
      h("strong", { class: "name" }, displayName(peer)),
      h("span", { class: "state" }, online ? "online" : "offline"),
      peer.method ? h("span", { class: "badge" }, "paired by " + peer.method) : null),
    peerIdCopy(peer.peer_id),
    h("dl", { class: "facts compact" },
      h("dt", {}, "Transport"), h("dd", { class: "transport" }, online ? (peer.transport || "—") : "—"),
      h("dt", {}, "Last seen"), h("dd", { class: "last-seen" }, online ? "now" : ago(peer.last_seen)),
      h("dt", {}, "Mailbox"), h("dd", { class: "depth" }, depth),
      h("dt", {}, "Paired"), h("dd", {}, fmtDate(peer.paired_at))),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "danger revoke", onclick: () => revoke(peer, refreshSoon) }, "Revoke")));
}

function ago(unix) {
  if (unix === null || unix === undefined) return "never";
  const seconds = serverNow() - unix;
  return seconds < 60 ? "less than a minute ago" : fmtDuration(seconds) + " ago";
}

function setNotice(text, kind) {
  notice = { text, kind };
  invalidate($("pending-list"));
}

/** Ask in a modal dialog; unpair only on "Revoke". */
function revoke(peer, refreshSoon) {
  const dialog = $("confirm");
  $("confirm-title").textContent = `Revoke ${displayName(peer)}?`;
  $("confirm-text").textContent =
    "It is disconnected at once, must pair again to come back, and what the node holds for it " +
    "(mailbox messages, relay circuits, sync cursors) is deleted.";
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "ok") return;
    try {
      await call("DELETE", "peers/" + encodeURIComponent(peer.peer_id));
      setNotice(`Revoked ${displayName(peer)}: disconnected and unpaired.`, "ok");
    } catch (error) {
      setNotice(`Could not revoke ${displayName(peer)}: ${error.message}`, "bad");
    }
    refreshSoon();
  }, { once: true });
  dialog.returnValue = "";
  dialog.showModal();
}
