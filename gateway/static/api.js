// Talking to the gateway: JSON calls, the SSE stream read through fetch, errors in words.

const KEY_STORAGE = "intent-gateway.api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY_STORAGE, value);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** A non-2xx answer, keeping what the gateway said (`{error, detail, field}`). */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body.detail || body.error || `HTTP ${status}`);
    this.status = status;
    this.code = body.error || "";
    this.field = body.field || null;
    this.retryAfter = retryAfter;
  }
}

function failure(response, text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { detail: response.statusText };
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(response.status, body, Number.isFinite(retry) ? retry : null);
}

/** Nothing arrived for too long, not even a heartbeat: a proxy or the network holds the call. */
export class NoAnswer extends Error {
  constructor(seconds) {
    super(`nothing arrived for ${Math.round(seconds * 10) / 10} s`);
    this.name = "NoAnswer";
    this.seconds = seconds;
  }
}

// A call the gateway does not answer (a proxy holding it, a network that dropped it) ends in words
// instead of a page that waits forever: the gateway answers within seconds even when slow.
const ANSWER_WITHIN_S = 30;
// After a stream's headers: three of the gateway's heartbeats missed in a row.
const MISSED_HEARTBEATS = 3;
const DEFAULT_HEARTBEAT_S = 15;

/** Aborts a fetch when the caller's signal does, or when nothing arrived for as long as last armed. */
class Watchdog {
  constructor(signal) {
    this.caller = signal;
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.silence = null; // the NoAnswer, once the silence ended the call
    this.timer = null;
    this.follow = () => this.controller.abort(signal.reason);
    if (signal?.aborted) this.follow();
    signal?.addEventListener("abort", this.follow, { once: true });
  }

  arm(seconds) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.silence = new NoAnswer(seconds);
      this.controller.abort(this.silence);
    }, seconds * 1000);
  }

  /** What to report for `error`: NoAnswer when the silence caused it (not the caller's Stop). */
  why(error) {
    return this.silence && !this.caller?.aborted ? this.silence : error;
  }

  /** Done: no timer, no link, and the connection let go (a consumer that stopped reading). */
  release() {
    clearTimeout(this.timer);
    this.caller?.removeEventListener("abort", this.follow);
    this.controller.abort();
  }
}

/** fetch and the whole body, or NoAnswer (a proxy can send headers and hold the rest). */
async function fetchWithin(path, init, signal) {
  const watchdog = new Watchdog(signal);
  watchdog.arm(ANSWER_WITHIN_S);
  try {
    const response = await fetch(path, { ...init, signal: watchdog.signal });
    return { response, text: await response.text() };
  } catch (error) {
    throw watchdog.why(error);
  } finally {
    watchdog.release();
  }
}

export async function getJSON(path, { signal } = {}) {
  const { response, text } = await fetchWithin(path, { headers: headers({ Accept: "application/json" }) }, signal);
  if (!response.ok) throw failure(response, text);
  return JSON.parse(text);
}

export async function postJSON(path, payload, { signal } = {}) {
  const init = {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "application/json" }),
    body: JSON.stringify(payload),
  };
  const { response, text } = await fetchWithin(path, init, signal);
  if (!response.ok) throw failure(response, text);
  return JSON.parse(text);
}

/** GET a text resource; null when it does not exist (an endpoint not deployed yet). */
export async function getText(path, { signal } = {}) {
  const { response, text } = await fetchWithin(path, { headers: headers() }, signal);
  if (response.status === 404) return null;
  if (!response.ok) throw failure(response, text);
  return text;
}

/**
 * POST to an SSE endpoint and yield {id, event, data} as each event arrives.
 * fetch rather than EventSource: EventSource cannot POST and hides 4xx JSON bodies.
 * A stream that goes silent throws NoAnswer instead of waiting forever.
 */
export async function* streamEvents(path, body, { signal } = {}) {
  const watchdog = new Watchdog(signal);
  try {
    watchdog.arm(ANSWER_WITHIN_S);
    const response = await fetch(path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: watchdog.signal,
    });
    if (!response.ok) throw failure(response, await response.text());
    const heartbeat = Number.parseFloat(response.headers.get("X-Heartbeat-Seconds") || "");
    const silence = MISSED_HEARTBEATS * (heartbeat > 0 ? heartbeat : DEFAULT_HEARTBEAT_S);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      watchdog.arm(silence);
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) yield event;
      }
    }
  } catch (error) {
    throw watchdog.why(error);
  } finally {
    watchdog.release();
  }
}

/** One SSE block to {id, event, data}; comments (heartbeats) give null. */
export function parseEvent(block) {
  let id = null;
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") id = value;
    else if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { id, event, data: JSON.parse(data.join("\n")) };
}

// 503s by the gateway's error code: each says what is wrong, not "overloaded" for all.
const UNAVAILABLE = {
  overloaded: "The gateway is overloaded right now.",
  shutting_down: "The gateway is restarting.",
  rate_limit_unavailable: "Usage limits cannot be checked right now, so requests are refused.",
  database_unavailable: "The gateway's database is unavailable right now.",
};

const FIELD_NAMES = {
  prompt: "Prompt",
  working_image_url: "Working image URL",
  quality: "Quality",
  "user_preferences.quality": "Quality",
  "X-User-Id": "User id",
};

/** What went wrong, in words a person can act on. */
export function describeError(error) {
  if (error.name === "AbortError") return "Stopped.";
  if (error instanceof NoAnswer) return `The gateway stopped answering: ${error.message}. Try again.`;
  if (!(error instanceof ApiError)) {
    return `Could not reach the gateway (${error.message}). Check your connection and try again.`;
  }
  const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : " Try again shortly.";
  switch (error.status) {
    case 400:
      return `The gateway could not read the request: ${error.message}`;
    case 401:
    case 403:
      return `Not allowed: ${error.message}. Check the API key (top right).`;
    case 413:
      return "The request is too large (limit 64 KiB).";
    case 422: {
      const field = FIELD_NAMES[error.field] || error.field;
      return field ? `${field}: ${error.message}` : `Invalid request: ${error.message}`;
    }
    case 429:
      return `Rate limit reached (${error.message}).${wait}`;
    case 503:
      return `${UNAVAILABLE[error.code] || `The gateway cannot answer right now (${error.message}).`}${wait}`;
    default:
      return `The gateway answered ${error.status}: ${error.message}`;
  }
}

/** The form's fields as the JSON body of /process, /stream and /compare. */
export function requestBody(form, { ai = true } = {}) {
  const data = new FormData(form);
  const body = {
    prompt: String(data.get("prompt") || ""),
    user_preferences: { quality: String(data.get("quality") || "balanced") },
    use_ai_classification: ai,
  };
  const image = String(data.get("working_image_url") || "").trim();
  if (image) body.working_image_url = image;
  return body;
}
