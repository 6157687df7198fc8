// Compare: the AI path and the existing keyword rules for one prompt, differences marked.

import { describeError, postJSON, requestBody } from "./api.js";
import { $, formatCost, h, markField, percent, refuseEmptyPrompt, say } from "./dom.js";

const COMPARE = "/api/v1/enhanced/compare";

const ROWS = [
  ["Workflow", (r) => r.workflow_type],
  ["Model", (r) => r.model_selection.model_id],
  ["Fallback models", (r) => r.model_selection.fallback_models.join(", ") || "none"],
  ["Intent source", (r) => r.intent_source],
  ["Confidence", (r) => percent(r.intent_confidence)],
  ["Estimated cost", (r) => formatCost(r.estimated_cost)],
  ["Estimated time", (r) => `${r.estimated_time} s`],
  ["Final prompt", (r) => r.final_prompt],
  ["Reasoning", (r) => r.reasoning],
];

function row(label, ai, existing) {
  const differs = ai !== existing;
  return h(
    "tr",
    { class: differs ? "differs" : null },
    h("th", { scope: "row" }, label, differs ? h("span", { class: "badge" }, "differs") : null),
    h("td", { "data-label": "AI" }, ai),
    h("td", { "data-label": "Existing rules" }, existing),
  );
}

function summary({ differences, ai_classification: ai, existing_system: existing }) {
  const changed = [
    differences.workflow_type && "workflow",
    differences.model_selection && "model",
    ai.final_prompt !== existing.final_prompt && "prompt",
  ].filter(Boolean);
  const verdict = changed.length
    ? `The AI and the existing rules differ on: ${changed.join(", ")}.`
    : "The AI and the existing rules agree on workflow, model and prompt.";
  // prompt_changes: whether the AI path rewrote the prompt that was sent (the app's meaning).
  return differences.prompt_changes ? `${verdict} The AI path rewrote the prompt.` : verdict;
}

export function setupCompare() {
  const form = $("#compare-form");
  const status = $("#c-status");
  const alert = $("#c-error");
  const section = $("#c-result");

  let controller = null;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = requestBody(form);
    if (refuseEmptyPrompt(form, "c", body, alert)) return;
    // The latest submit wins: an earlier answer arriving later must not replace its table.
    controller?.abort();
    const mine = (controller = new AbortController());
    markField(form, "c", null);
    say(alert, "");
    say(status, "Comparing…");
    section.hidden = true;
    try {
      const result = await postJSON(COMPARE, body, { signal: mine.signal });
      const ai = result.ai_classification;
      const existing = result.existing_system;
      $("#c-table tbody").replaceChildren(...ROWS.map(([label, get]) => row(label, get(ai), get(existing))));
      $("#c-summary").textContent = summary(result);
      section.hidden = false;
      say(status, "Compared: the table is below."); // the status is the live region screen readers hear
    } catch (error) {
      if (controller !== mine) return; // replaced by a newer comparison, which reports itself
      say(status, "");
      markField(form, "c", error.field, describeError(error));
      say(alert, describeError(error));
    }
  });
}
