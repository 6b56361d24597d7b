// A small SVG bar chart of the last hour, one slot per minute (no library:
// sixty bars and two labels do not need one). Colours come from console.css.

const SVG = "http://www.w3.org/2000/svg";
const SLOTS = 60;
const W = 320;
const H = 130;
const PLOT = { left: 4, right: W - 4, top: 18, bottom: H - 22 };

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
}

/**
 * @param slots [{start, <key>: number, ...}], oldest first, the last one now.
 * @param series [{key, label}]: bars drawn side by side within a slot.
 * @param format number -> text, for the scale and the tooltips.
 */
export function barChart(slots, series, format) {
  const shown = slots.slice(-SLOTS);
  const max = Math.max(0, ...shown.flatMap((s) => series.map((k) => s[k.key])));
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  const summary = series.map((k) => `${k.label}: ${format(shown.reduce((a, s) => a + s[k.key], 0))}`).join(", ");
  svg.append(el("title", {}, `Last hour, per minute (${summary})`));
  for (const fraction of [0, 0.5, 1]) {
    const y = PLOT.bottom - fraction * (PLOT.bottom - PLOT.top);
    svg.append(el("line", { x1: PLOT.left, x2: PLOT.right, y1: y, y2: y, class: "grid" }));
  }
  svg.append(el("text", { x: PLOT.left, y: PLOT.top - 5, class: "scale" }, max ? format(max) : "no activity yet"));
  const slotWidth = (PLOT.right - PLOT.left) / SLOTS;
  const barWidth = Math.max(0.6, (slotWidth - 0.8) / series.length);
  const offset = SLOTS - shown.length; // the newest minute is always at the right edge
  shown.forEach((slot, i) => {
    series.forEach((k, j) => {
      const value = slot[k.key];
      if (!value || !max) return;
      const height = Math.max(1, (value / max) * (PLOT.bottom - PLOT.top));
      const bar = el("rect", {
        x: PLOT.left + (offset + i) * slotWidth + j * barWidth,
        y: PLOT.bottom - height,
        width: barWidth,
        height,
        class: `bar ${k.key}`,
      });
      bar.append(el("title", {}, `${clock(slot.start)}: ${format(value)} ${k.label}`));
      svg.append(bar);
    });
  });
  svg.append(el("text", { x: PLOT.left, y: H - 6, class: "axis" }, "\u221260 min"));
  svg.append(el("text", { x: PLOT.right, y: H - 6, class: "axis end" }, "now"));
  return svg;
}
