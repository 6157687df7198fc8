// A rolling record of per-stage latency of the streams run in this tab, for the dashboard
// when the server offers no per-stage timings of its own.

const STORAGE = "intent-gateway.stage-latency";
const KEEP = 50;
export const STAGES = ["context", "intent", "model", "prompt"];

/** Per-stage durations from one stream's cumulative elapsed_ms values. */
export function stageDurations(elapsedByStage) {
  const durations = {};
  let previous = 0;
  for (const stage of STAGES) {
    const at = elapsedByStage[stage];
    if (typeof at !== "number") return null;
    durations[stage] = Math.max(0, at - previous);
    previous = at;
  }
  return durations;
}

export function recordRun(elapsedByStage) {
  const durations = stageDurations(elapsedByStage);
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
  for (const stage of STAGES) {
    const values = runs.map((run) => run[stage]).filter((v) => typeof v === "number");
    values.sort((a, b) => a - b);
    summary[stage] = { p50: quantile(values, 0.5), p95: quantile(values, 0.95), n: values.length };
  }
  return summary;
}
