// A rolling record of per-stage latency of the streams run in this tab, for the dashboard
// when the server offers no per-stage timings of its own.

const STORAGE = "intent-gateway.stage-latency";
const KEEP = 50;
// The pipeline's order; a stage not listed here (a new one) is shown after these.
export const STAGES = ["context", "intent", "model", "prompt", "references"];

/** Stage names in pipeline order. */
export function ordered(names) {
  const known = STAGES.filter((stage) => names.includes(stage));
  return [...known, ...names.filter((name) => !STAGES.includes(name)).sort()];
}

/** Per-stage durations from one stream's [stage, cumulative elapsed_ms] in arrival order. */
export function stageDurations(arrivals) {
  const durations = {};
  let previous = 0;
  for (const [stage, at] of arrivals) {
    durations[stage] = Math.max(0, at - previous);
    previous = at;
  }
  return arrivals.length ? durations : null;
}

export function recordRun(arrivals) {
  const durations = stageDurations(arrivals);
  if (!durations) return;
  const runs = loadRuns();
  runs.push(durations);
  sessionStorage.setItem(STORAGE, JSON.stringify(runs.slice(-KEEP)));
}

export function loadRuns() {
  try {
    const runs = JSON.parse(sessionStorage.getItem(STORAGE) || "[]");
    return Array.isArray(runs) ? runs : [];
  } catch {
    return [];
  }
}

function quantile(sorted, q) {
  if (!sorted.length) return 0;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[index];
}

/** {stage: {p50, p95, n}} over the runs recorded in this tab. */
export function summarize(runs = loadRuns()) {
  const summary = {};
  for (const stage of ordered([...new Set(runs.flatMap((run) => Object.keys(run)))])) {
    const values = runs.map((run) => run[stage]).filter((v) => typeof v === "number");
    values.sort((a, b) => a - b);
    summary[stage] = { p50: quantile(values, 0.5), p95: quantile(values, 0.95), n: values.length };
  }
  return summary;
}
