// The console's controller: sign-in, navigation between pages, and the
// polling loop that keeps the shown page up to date (every POLL_MS).

import { ApiError, Unauthorized, call, token } from "./api.js";
import { $ } from "./dom.js";
import * as activity from "./activity.js";
import * as health from "./health.js";
import * as pair from "./pair.js";
import * as peers from "./peers.js";

const POLL_MS = 2000;
const pages = { peers, pair, activity, health };

// What the pages share: the latest answers of the API, by endpoint.
const state = {};
let timer = null;
let running = false;
let again = false;

function currentPage() {
  const name = location.hash.replace(/^#/, "");
  return pages[name] ? name : "peers";
}

function showSignIn(message) {
  token.clear();
  clearTimeout(timer);
  timer = null;
  for (const el of document.querySelectorAll(".page")) el.hidden = true;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("status-line").textContent = "";
  const error = $("signin-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function showPage() {
  const name = currentPage();
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  for (const [key, page] of Object.entries(pages)) {
    $("page-" + key).hidden = key !== name;
    if (key === name && page.shown) page.shown(state, refreshSoon);
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${$("nav").querySelector(".active").textContent} · cairn console`;
}

/** Fetch what the shown page needs, render it, and poll again. */
async function refresh() {
  if (!token.get()) return;
  if (running) {
    again = true; // e.g. the page changed while an earlier poll was out
    return;
  }
  clearTimeout(timer);
  if (document.visibilityState === "hidden") {
    // A background tab polls nothing; it catches up when shown again.
    timer = setTimeout(refresh, POLL_MS);
    return;
  }
  running = true;
  const name = currentPage();
  const page = pages[name];
  try {
    const answers = await Promise.all(page.needs.map((path) => call("GET", path)));
    page.needs.forEach((path, i) => { state[path] = answers[i]; });
    if (currentPage() === name) page.render(state, refreshSoon);
    $("status-line").textContent = "Updated " + new Date().toLocaleTimeString("en-GB");
    $("status-line").classList.remove("error");
  } catch (error) {
    if (error instanceof Unauthorized) {
      running = false;
      showSignIn("The node no longer accepts this token; sign in again.");
      return;
    }
    $("status-line").textContent = (error instanceof ApiError
      ? `The node answered ${error.status}: ${error.message}` : `Cannot reach the node: ${error.message}`) + " (retrying)";
    $("status-line").classList.add("error");
  } finally {
    running = false;
  }
  if (token.get()) timer = setTimeout(refresh, again ? 0 : POLL_MS);
  again = false;
}

/** Poll now (after an action), rather than at the next tick. */
function refreshSoon() {
  setTimeout(refresh, 0);
}

async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  const button = $("signin-button");
  button.disabled = true;
  try {
    await call("GET", "peers", { bearer: value });
    token.set(value);
    $("token").value = "";
    showPage();
    await refresh();
  } catch (error) {
    const message = error instanceof Unauthorized
      ? "Wrong token: the node refused it. Check CAIRN_MGMT_TOKEN or the mgmt.token file."
      : error instanceof ApiError
        ? `The node answered ${error.status}: ${error.message}`
        : `Cannot reach the node (${error.message}).`;
    const box = $("signin-error");
    box.textContent = message;
    box.hidden = false;
  } finally {
    button.disabled = false;
  }
}

function start() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => showSignIn(""));
  for (const page of Object.values(pages)) if (page.init) page.init(state, refreshSoon);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && token.get()) refresh();
  });
  window.addEventListener("hashchange", () => {
    if (!token.get()) return;
    showPage();
    refresh();
  });
  if (token.get()) {
    showPage();
    refresh();
  } else {
    showSignIn("");
  }
}

start();
