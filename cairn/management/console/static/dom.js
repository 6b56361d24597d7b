// Small DOM and formatting helpers (no framework: the console has no build step).

/** Build an element: h("p", {class: "x", onclick: f}, "text", child). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (id) => document.getElementById(id);

const rendered = new WeakMap();

/**
 * Replace the children of `el` with render(data), unless `data` is what it
 * showed last time: polling then leaves the page (focus, selection, a
 * button under the pointer) alone while nothing changes.
 */
export function renderInto(el, data, render) {
  const key = JSON.stringify(data);
  if (rendered.get(el) === key) return;
  rendered.set(el, key);
  el.replaceChildren(...[render(data)].flat(2).filter((c) => c !== null && c !== undefined && c !== false));
}

/** Forget what renderInto showed (to force the next render). */
export function invalidate(el) {
  rendered.delete(el);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
}

export function fmtCount(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en");
}

/** "42 s", "5 min", "3 h 10 min", "2 d 4 h". */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** m:ss, for countdowns. */
export function fmtClock(seconds) {
  seconds = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

export function fmtDate(unix) {
  if (unix === null || unix === undefined) return "—";
  return new Date(unix * 1000).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

/** A peer id shown in full, selectable at once, with a Copy button. */
export function peerIdCopy(peerId) {
  const code = h("code", { class: "peer-id" }, peerId);
  const button = h("button", { type: "button", class: "quiet copy", title: "Copy the peer id" }, "Copy");
  button.addEventListener("click", () => copyText(peerId, code, button));
  return h("span", { class: "copy-row" }, code, button);
}

/** Copy `text`; where the clipboard API is not offered (plain http off localhost), select it instead. */
export async function copyText(text, element, button) {
  try {
    await navigator.clipboard.writeText(text);
    flash(button, "Copied");
  } catch {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    flash(button, "Selected: press Ctrl+C");
  }
}

function flash(button, text) {
  const before = button.textContent;
  button.textContent = text;
  setTimeout(() => { button.textContent = before; }, 1500);
}

/** A <meter> with its figures as text beside it. */
export function gauge(value, max, label) {
  const meter = h("meter", { min: 0, max: max || 1, value: value || 0, low: (max || 1) * 0.7, high: (max || 1) * 0.9, optimum: 0 });
  return h("span", { class: "gauge" }, meter, h("span", { class: "gauge-text" }, label));
}
