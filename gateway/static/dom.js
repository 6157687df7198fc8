// Building DOM without innerHTML: prompts and reasoning come back from the server as text.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.setAttribute("class", value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** An HTML element: h("dt", {class: "x"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same call shape as h(). */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** Show a message in an element (or hide it when the message is empty). */
export function say(element, message) {
  element.textContent = message || "";
  element.hidden = !message;
}

/** Mark one form field invalid with a message, or clear all marks when field is null. */
export function markField(form, prefix, field, message) {
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  for (const node of form.querySelectorAll(".field-error")) say(node, "");
  if (!field) return false;
  const name = field.replace(/^user_preferences\./, "");
  const error = document.getElementById(`${prefix}-${name}-error`);
  if (!error) return false;
  say(error, message);
  const input = form.elements.namedItem(name);
  const target = input instanceof RadioNodeList ? input[0] : input;
  if (target) {
    target.setAttribute("aria-invalid", "true");
    target.focus();
  }
  return true;
}

export function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;
}

export function formatCost(usd) {
  return `$${Number(usd).toFixed(usd < 1 ? 3 : 2)}`;
}

export function percent(ratio) {
  return `${(100 * ratio).toFixed(1)}%`;
}

/** An empty prompt is refused here, as the gateway would refuse it: a refused request still
 * counts against the user's limits. True when refused (the field says why). */
export function refuseEmptyPrompt(form, prefix, body, alert) {
  if (body.prompt.trim()) return false;
  markField(form, prefix, "prompt", "Prompt: prompt must not be empty");
  say(alert, "The prompt must not be empty: say what to make or change.");
  return true;
}
