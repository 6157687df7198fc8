// Generate: stream one request and show each stage as its event arrives, then the result.

import { ApiError, NoAnswer, describeError, getJSON, requestBody, streamEvents } from "./api.js";
import { waterfall } from "./charts.js";
import { $, formatCost, formatMs, h, markField, percent, refuseEmptyPrompt, say } from "./dom.js";
import { recordRun } from "./latency.js";

const STREAM = "/api/v1/enhanced/stream";

const STAGE_TITLES = {
  context: "Context",
  intent: "Intent",
  model: "Model",
  prompt: "Enhanced prompt",
  references: "Reference search",
  error: "Error",
};

function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(([, value]) => value !== null && value !== undefined && value !== "").flatMap(([term, value]) => [
      h("dt", {}, term),
      h("dd", {}, value),
    ]),
  );
}

function list(items) {
  return items.length ? items.join(", ") : "none";
}

const STAGE_FACTS = {
  context: (d) => [
    ["User", d.user_id],
    ["Working images", String(d.working_images.length)],
    ["Mentions", list(d.mentions.map((m) => `@${m}`))],
    ["Quality", d.preferences.quality],
    ["Words", String(d.word_count)],
  ],
  intent: (d) => [
    ["Workflow", d.workflow_type],
    ["Confidence", percent(d.confidence)],
    ["Source", d.source + (d.cache_hit ? " (cached)" : "")],
    ["Reasoning", d.reasoning],
    ["Request", d.no_clear_intent ? "unclear: say what to make or change" : null],
    ["Input image", d.image_missing ? "missing: this workflow works on an image, so attach one" : null],
  ],
  model: (d) => [
    ["Model", `${d.model_id} (${d.provider})`],
    ["Fallbacks", list(d.fallback_models)],
    ["Estimated", `${formatCost(d.estimated_cost)}, ${d.estimated_time} s`],
  ],
  prompt: (d) => [
    ["Prompt", d.final_prompt],
    ["Enhanced", d.enhancement_applied ? "yes" : "no"],
    ["References", String(d.references.length)],
    ["Unknown tags", d.unknown_tags.length ? list(d.unknown_tags.map((t) => `@${t}`)) : null],
  ],
  references: (d) => [
    ["Outcome", d.summary + (d.cache_hit ? " (cached)" : "")],
    ["Query", d.query],
    ["Provider", d.provider],
    ["Reason", d.reason],
    ["Found", d.references.length ? referenceList(d.references) : null],
  ],
  error: (d) => [
    ["Code", d.code],
    ["Message", d.message],
    ["Stage", d.stage],
  ],
};

function stageCard(name, data) {
  const describe = STAGE_FACTS[name] || (() => []);
  return h(
    "li",
    { class: `stage stage-${name}`, "data-stage": name },
    h(
      "div",
      { class: "stage-head" },
      h("h3", {}, STAGE_TITLES[name] || name),
      h("span", { class: "elapsed" }, `at ${formatMs(data.elapsed_ms || 0)}`),
    ),
    facts(describe(data)),
  );
}

function referenceList(references) {
  if (!references.length) return "none";
  return h(
    "ul",
    { class: "refs" },
    references.map((ref) =>
      h(
        "li",
        {},
        ref.tag ? `@${ref.tag}: ` : ref.title ? `${ref.title}: ` : "",
        h("a", { href: ref.image_url, rel: "noopener noreferrer", target: "_blank" }, ref.image_url),
      ),
    ),
  );
}

function resultFacts(result, prompt) {
  const selection = result.model_selection;
  return [
    ["Workflow", result.workflow_type],
    ["Request", result.metadata.no_clear_intent ? "unclear: the default workflow was chosen; say what to make or change" : null],
    ["Input image", result.metadata.image_missing ? "missing: this workflow works on an image, so attach one" : null],
    ["Model", `${selection.model_id} (${selection.provider})`],
    ["Fallback models", list(selection.fallback_models)],
    ["Confidence", percent(result.intent_confidence)],
    ["Intent source", result.intent_source + (result.cache_hit ? " (cache hit)" : "")],
    ["Reasoning", result.reasoning],
    ["Estimated cost", formatCost(result.estimated_cost)],
    ["Estimated time", `${result.estimated_time} s`],
    ["Enhanced prompt", result.final_prompt !== prompt ? result.final_prompt : null],
    ["References", referenceList(result.references)],
    ["Fallback used", result.fallback_used ? `yes: ${result.metadata.fallback_reason || "a safe default was used"}` : "no"],
    ["Processing time", formatMs(result.processing_time * 1000)],
    ["Trace", traceLinks(result.trace_id)],
  ];
}

/** The trace page link, and a button that draws it here (a link cannot send the API key). */
function traceLinks(traceId) {
  const button = h("button", { type: "button", class: "secondary small", "aria-controls": "g-trace" }, "Show trace here");
  button.addEventListener("click", () => showTrace(traceId));
  return h("span", { class: "trace-links" }, h("a", { href: `/debug/traces/${encodeURIComponent(traceId)}` }, traceId), " ", button);
}

/** Parents before children, each with its depth, in start order among siblings. */
function spanTree(spans) {
  const children = new Map();
  for (const span of spans) {
    const siblings = children.get(span.parent_span_id) || [];
    siblings.push(span);
    children.set(span.parent_span_id, siblings);
  }
  const ids = new Set(spans.map((span) => span.span_id));
  const roots = spans.filter((span) => !ids.has(span.parent_span_id));
  const ordered = [];
  const visit = (span, depth) => {
    ordered.push({ name: span.name, offset_ms: span.offset_ms, duration_ms: span.duration_ms, depth, error: span.status === "ERROR" });
    for (const child of (children.get(span.span_id) || []).sort((a, b) => a.offset_ms - b.offset_ms)) visit(child, depth + 1);
  };
  for (const root of roots.sort((a, b) => a.offset_ms - b.offset_ms)) visit(root, 0);
  return ordered;
}

/** The trace's JSON; a stream's trace closes just after its `done` event, so a 404 is retried once. */
async function fetchTrace(traceId) {
  const path = `/debug/traces/${encodeURIComponent(traceId)}`;
  try {
    return await getJSON(path);
  } catch (error) {
    if (error.status !== 404) throw error;
    await new Promise((resolve) => setTimeout(resolve, 500));
    return getJSON(path);
  }
}

async function showTrace(traceId) {
  const section = $("#g-trace");
  const note = $("#g-trace-note");
  section.hidden = false;
  say(note, "Loading the trace…");
  try {
    const trace = await fetchTrace(traceId);
    $("#g-trace .plot").replaceChildren(waterfall(spanTree(trace.spans || []), { label: `Trace ${traceId}`, format: formatMs }));
    say(note, `${trace.root}: ${trace.span_count} spans, ${formatMs(trace.duration_ms)}.`);
  } catch (error) {
    $("#g-trace .plot").replaceChildren();
    const missing = error.status === 404 ? "The trace is not in the gateway's buffer (evicted, unsampled or still open)." : describeError(error);
    say(note, missing);
  }
}

/** An `error` event without a stage ended the stream (overload after it started, say). */
function inBandError(data) {
  const what = data.code === "overloaded" ? "The gateway is overloaded right now; try again shortly." : data.message;
  return `The request stopped: ${what} (${data.code}).`;
}

function showResult(data, prompt) {
  const fields = facts(resultFacts(data, prompt));
  $("#g-result-fields").replaceChildren(...fields.childNodes);
  $("#g-result").hidden = false;
}

export function setupGenerate() {
  const form = $("#generate-form");
  const stages = $("#g-stages");
  const result = $("#g-result");
  const status = $("#g-status");
  const alert = $("#g-error");
  const stop = $("#g-stop");
  let controller = null;

  stop.addEventListener("click", () => controller?.abort());

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = requestBody(form, { ai: $("#g-ai").checked });
    if (refuseEmptyPrompt(form, "g", body, alert)) return;
    controller?.abort();
    const mine = (controller = new AbortController());
    // A submit while a stream runs aborts it; that stream's catch and finally run after this
    // one has started and must leave the page to it.
    const current = () => controller === mine;
    markField(form, "g", null);
    say(alert, "");
    stages.replaceChildren();
    result.hidden = true;
    $("#g-trace").hidden = true;
    say(status, "Streaming…");
    stop.disabled = false;
    const arrivals = []; // [stage, elapsed_ms], for the dashboard's latency view
    let finished = false;
    try {
      for await (const { event: name, data } of streamEvents(STREAM, body, { signal: mine.signal })) {
        if (!current()) return; // replaced: an event already read must not land on the new run's page
        if (name === "done") {
          finished = true;
          recordRun(arrivals);
          showResult(data, body.prompt.trim());
          say(status, `Done in ${formatMs(data.elapsed_ms)}.`);
        } else {
          if (name !== "error") arrivals.push([name, data.elapsed_ms]);
          stages.append(stageCard(name, data));
          // A stage error is followed by its safe default; an error without a stage ends the stream.
          if (name === "error" && !data.stage) say(alert, inBandError(data));
        }
      }
      if (!finished) say(status, "The stream ended without a result.");
    } catch (error) {
      if (!current()) return;
      if (error.name === "AbortError") {
        say(status, "Stopped."); // the user's own choice: a status, not an alert
      } else {
        // Once events arrived the gateway was reached: the connection broke, the request did not fail.
        const broke = !(error instanceof ApiError) && !(error instanceof NoAnswer);
        const message = stages.childElementCount && broke
          ? `The connection to the gateway broke mid-stream (${error.message}). Try again.`
          : describeError(error);
        say(status, "");
        markField(form, "g", error.field, message);
        say(alert, message);
      }
    } finally {
      if (current()) {
        // Disabling the focused Stop button would drop keyboard focus to the page's start.
        if (document.activeElement === stop) $("#g-submit").focus();
        stop.disabled = true;
      }
    }
  });
}
