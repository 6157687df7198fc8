// Dashboard: workflows per hour, workflow mix, fallback and cache-hit rates, cost per day and
// latency per stage. Postgres analytics when the gateway has them, else its in-memory metrics.

import { describeError, getJSON, getText } from "./api.js";
import { barList, columnChart } from "./charts.js";
import { $, formatCost, formatMs, percent, say } from "./dom.js";
import { loadRuns, ordered, summarize } from "./latency.js";

const REFRESH_MS = 10_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

function plot(id, chart) {
  $(`#${id} .plot`).replaceChildren(chart);
}

function settled(result) {
  return result.status === "fulfilled" ? result.value : null;
}

/** Where the numbers come from: the analytics views, or this instance's memory. */
function pickSource(intents, costs, metrics, hours) {
  if (intents.status === "fulfilled" && costs.status === "fulfilled") {
    const refreshed = intents.value.refreshed_at ? `, views refreshed ${new Date(intents.value.refreshed_at).toLocaleTimeString()}` : "";
    return { intents: intents.value.buckets, costs: costs.value.buckets, note: `Source: Postgres analytics${refreshed}.` };
  }
  if (!metrics) return null;
  const reason = intents.reason?.code === "analytics_not_configured" ? "analytics not configured" : intents.reason ? describeError(intents.reason) : "analytics unavailable";
  const since = Date.now() - hours * HOUR_MS;
  const timeline = metrics.timeline || { intents: [], costs: [] };
  return {
    intents: timeline.intents.filter((row) => Date.parse(row.hour) > since - HOUR_MS),
    costs: timeline.costs,
    note: `Source: this instance's in-memory metrics (${reason}).`,
  };
}

/** One value per period, oldest first, zero where nothing happened. */
function series(rows, { key, value, periods, span, label }) {
  const totals = new Map();
  for (const row of rows) {
    const at = Math.floor(Date.parse(row[key]) / span) * span;
    totals.set(at, (totals.get(at) || 0) + value(row));
  }
  const last = Math.floor(Date.now() / span) * span;
  const points = [];
  for (let i = periods - 1; i >= 0; i -= 1) {
    const at = last - i * span;
    points.push({ label: label(new Date(at)), value: totals.get(at) || 0 });
  }
  return points;
}

function workflowMix(rows) {
  const totals = new Map();
  for (const row of rows) totals.set(row.classified_workflow, (totals.get(row.classified_workflow) || 0) + row.total_requests);
  return [...totals].sort((a, b) => b[1] - a[1]).map(([label, value]) => ({ label, value }));
}

function rates(rows) {
  const sum = (field) => rows.reduce((total, row) => total + (row[field] || 0), 0);
  const total = sum("total_requests");
  const note = `${total} classifications`;
  return [
    { label: "Fallback rate", value: total ? sum("fallback_count") / total : 0, note },
    { label: "Cache-hit rate", value: total ? sum("cache_hits") / total : 0, note },
  ];
}

/** Mean seconds per stage from Prometheus text (issue 7's histogram), or null if absent. */
export function stageMeansFromPrometheus(text) {
  if (!text) return null;
  const sums = {};
  const counts = {};
  const line = /^gateway_stage_duration_seconds_(sum|count)\{(?:[^}]*,)?stage="([^"]+)"[^}]*\}\s+(\S+)/;
  for (const row of text.split("\n")) {
    const match = line.exec(row);
    if (!match) continue;
    const target = match[1] === "sum" ? sums : counts;
    target[match[2]] = (target[match[2]] || 0) + Number(match[3]); // summed over outcomes
  }
  const stages = ordered(Object.keys(counts).filter((stage) => counts[stage]));
  if (!stages.length) return null;
  return stages.map((stage) => ({
    label: stage,
    value: counts[stage] ? (1000 * sums[stage]) / counts[stage] : 0,
    note: `mean of ${counts[stage] || 0}`,
  }));
}

function latencyRows(prometheus) {
  const server = stageMeansFromPrometheus(prometheus);
  if (server) return { rows: server, label: "Latency per stage, server mean (ms)" };
  const summary = summarize(loadRuns());
  return {
    rows: Object.keys(summary).map((stage) => ({
      label: stage,
      value: summary[stage].p50,
      note: `p95 ${formatMs(summary[stage].p95)}, ${summary[stage].n} ${summary[stage].n === 1 ? "run" : "runs"} in this tab`,
    })),
    label: "Latency per stage, median of streams run in this tab (ms)",
  };
}

function draw(source, prometheus, hours) {
  // The buckets are UTC hours and days (the analytics views' and the timeline's): labelled in
  // UTC, since local labels named the wrong day west of Greenwich and half-hours in India.
  const hourLabel = (d) => `${String(d.getUTCHours()).padStart(2, "0")}h`;
  const dayLabel = (d) => `${String(d.getUTCMonth() + 1).padStart(2, "0")}-${String(d.getUTCDate()).padStart(2, "0")}`;
  const hourly = series(source.intents, { key: "hour", value: (r) => r.total_requests, periods: hours, span: HOUR_MS, label: hourLabel });
  plot("chart-hourly", columnChart(hourly, { label: "Workflows per hour (UTC)" }));
  plot("chart-mix", barList(workflowMix(source.intents), { label: "Workflow mix" }));
  plot("chart-rates", barList(rates(source.intents), { label: "Fallback and cache-hit rates", format: percent, max: 1 }));
  const cost = (r) => r.total_estimated_cost ?? r.total_cost ?? 0;
  const daily = series(source.costs, { key: "day", value: cost, periods: 7, span: DAY_MS, label: dayLabel });
  plot("chart-cost", columnChart(daily, { label: "Estimated cost per day (UTC)", format: formatCost }));
  const latency = latencyRows(prometheus);
  plot("chart-latency", barList(latency.rows, { label: latency.label, format: formatMs }));
}

const NOT_CONFIGURED = { code: "analytics_not_configured" };

/** /health names the Postgres state; without a database, skip the analytics calls (they would 503). */
async function postgresConfigured() {
  try {
    const health = await getJSON("/health");
    return health.dependencies?.postgres?.state !== "not_configured";
  } catch {
    return true; // let the analytics calls themselves say what is wrong
  }
}

let prometheusMissing = false;

/** Prometheus text from /metrics; asked once more only if it existed (a 404 is remembered). */
async function prometheusText() {
  if (prometheusMissing) return null;
  const text = await getText("/metrics");
  prometheusMissing = text === null;
  return text;
}

export function setupDashboard() {
  const status = $("#d-source");
  const alert = $("#d-error");
  const hoursSelect = $("#d-hours");
  const auto = $("#d-auto");
  let timer = null;
  let loading = false;
  let again = false; // asked for while loading (a new window, "Refresh now"): one more run after it
  let updated = null; // what the charts show: `${source note} Updated ${time}.`

  async function refresh() {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    again = false;
    const hours = Number(hoursSelect.value);
    try {
      const analytics = await postgresConfigured();
      const [metrics, intents, costs, prometheus] = await Promise.allSettled([
        getJSON("/api/v1/enhanced/metrics"),
        analytics ? getJSON(`/api/v1/enhanced/analytics/intents?hours=${hours}`) : Promise.reject(NOT_CONFIGURED),
        analytics ? getJSON("/api/v1/enhanced/analytics/costs?days=7") : Promise.reject(NOT_CONFIGURED),
        prometheusText(),
      ]);
      const source = pickSource(intents, costs, settled(metrics), hours);
      if (!source) {
        say(alert, describeError(metrics.reason));
        // The charts still show the last refresh that worked: say so, not "Updated" as if current.
        say(status, updated && `${updated} The latest refresh failed: these numbers are older.`);
        return;
      }
      say(alert, "");
      draw(source, settled(prometheus), hours);
      updated = `${source.note} Updated ${new Date().toLocaleTimeString()}.`;
      say(status, updated);
    } finally {
      loading = false;
      if (again) refresh();
    }
  }

  function schedule(active) {
    clearInterval(timer);
    // A hidden browser tab skips its turns: nobody is looking, and the gateway is spared the polls.
    timer = active && auto.checked ? setInterval(() => document.hidden || refresh(), REFRESH_MS) : null;
  }

  hoursSelect.addEventListener("change", refresh);
  $("#d-refresh").addEventListener("click", refresh);
  auto.addEventListener("change", () => schedule(true));
  return {
    show() {
      refresh();
      schedule(true);
    },
    hide() {
      schedule(false);
    },
  };
}
