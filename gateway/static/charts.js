// Small SVG charts drawn from data: vertical bars over time, horizontal bars by category.
// Sizes are in viewBox units close to CSS pixels at phone width, so text stays readable.

import { svg } from "./dom.js";

const WIDTH = 340;

function frame(height, label, ...children) {
  return svg(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": label, class: "chart-svg" },
    svg("title", {}, label),
    ...children,
  );
}

function empty(label) {
  return frame(60, `${label}: no data yet`, svg("text", { x: WIDTH / 2, y: 34, class: "empty", "text-anchor": "middle" }, "No data yet"));
}

/** Bars over time: points = [{label, value}], oldest first. */
export function columnChart(points, { label, format = String }) {
  if (!points.length || points.every((p) => !p.value)) return empty(label);
  const height = 170;
  const left = 8;
  const top = 18;
  const bottom = 24;
  const plot = height - top - bottom;
  const max = Math.max(...points.map((p) => p.value));
  const step = (WIDTH - left * 2) / points.length;
  const every = Math.ceil(points.length / 8); // at most ~8 axis labels
  const bars = points.map((point, i) => {
    const barHeight = max ? (point.value / max) * plot : 0;
    const x = left + i * step;
    return svg(
      "g",
      {},
      svg(
        "rect",
        {
          class: "bar",
          x: (x + step * 0.12).toFixed(1),
          y: (top + plot - barHeight).toFixed(1),
          width: (step * 0.76).toFixed(1),
          height: barHeight.toFixed(1),
          "data-label": point.label,
          "data-value": point.value,
        },
        svg("title", {}, `${point.label}: ${format(point.value)}`),
      ),
      i % every === 0
        ? svg("text", { x: (x + step / 2).toFixed(1), y: height - 8, class: "axis", "text-anchor": "middle" }, point.label)
        : null,
    );
  });
  const total = points.reduce((sum, p) => sum + p.value, 0);
  return frame(
    height,
    `${label}: ${points.length} periods, total ${format(total)}, peak ${format(max)}`,
    svg("line", { x1: left, x2: WIDTH - left, y1: top + plot, y2: top + plot, class: "baseline" }),
    svg("text", { x: left, y: 12, class: "axis" }, `peak ${format(max)}`),
    ...bars,
  );
}

/** Labelled horizontal bars: rows = [{label, value, note?}]; max defaults to the largest value. */
export function barList(rows, { label, format = String, max }) {
  if (!rows.length) return empty(label);
  const rowHeight = 38;
  const height = rows.length * rowHeight + 6;
  const scale = max ?? Math.max(...rows.map((r) => r.value), 0);
  const barWidth = WIDTH - 16;
  const items = rows.map((row, i) => {
    const y = i * rowHeight + 4;
    const width = scale ? Math.max(1, (row.value / scale) * barWidth) : 1;
    const text = `${row.label}: ${format(row.value)}${row.note ? ` (${row.note})` : ""}`;
    return svg(
      "g",
      {},
      svg("text", { x: 8, y: y + 14, class: "bar-label" }, text),
      svg("rect", { class: "track", x: 8, y: y + 20, width: barWidth, height: 10, rx: 2 }),
      svg(
        "rect",
        {
          class: "bar",
          x: 8,
          y: y + 20,
          width: width.toFixed(1),
          height: 10,
          rx: 2,
          "data-label": row.label,
          "data-value": row.value,
        },
        svg("title", {}, text),
      ),
    );
  });
  const summary = rows.map((r) => `${r.label} ${format(r.value)}`).join(", ");
  return frame(height, `${label}: ${summary}`, ...items);
}

/** A trace's spans as a waterfall: spans = [{name, offset_ms, duration_ms, depth}], in start order. */
export function waterfall(spans, { label, format = String }) {
  if (!spans.length) return empty(label);
  const rowHeight = 36;
  const height = spans.length * rowHeight + 6;
  const end = Math.max(...spans.map((s) => s.offset_ms + s.duration_ms), 0.001);
  const span = WIDTH - 16;
  const rows = spans.map((s, i) => {
    const y = i * rowHeight + 4;
    const x = 8 + (s.offset_ms / end) * span;
    const width = Math.max(1, (s.duration_ms / end) * span);
    const text = `${s.name}: ${format(s.duration_ms)}`;
    const detail = `${text}, starting at +${format(s.offset_ms)}`;
    return svg(
      "g",
      {},
      svg("text", { x: 8 + s.depth * 10, y: y + 13, class: "bar-label" }, text),
      svg(
        "rect",
        {
          class: s.error ? "bar bar-error" : "bar",
          x: x.toFixed(1),
          y: y + 19,
          width: width.toFixed(1),
          height: 10,
          rx: 2,
          "data-label": s.name,
          "data-value": s.duration_ms,
        },
        svg("title", {}, detail),
      ),
    );
  });
  return frame(height, `${label}: ${spans.length} spans over ${format(end)}`, ...rows);
}
