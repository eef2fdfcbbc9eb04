// gpt2gen's playground: talks only to this server's OpenAI-compatible API (/v1/models and
// /v1/completions), streaming with fetch + ReadableStream. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(`v1/${path}`, document.baseURI).href;

const SURPRISAL_CAP_BITS = 12; // the score view's darkest shade
const SCORE_ALTERNATIVES = 5;
// Fields the openai client has no argument for: its Python snippet passes them in extra_body.
const EXTRA_BODY = new Set(["top_k", "min_p", "repetition_penalty"]);

const state = { model: null, key: "", keyRequired: false, controller: null };

// --- talking to the server ----------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

// The server's own words for a failed response: OpenAI's {"error": {"message"}} when it sent one.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const message = JSON.parse(text).error.message;
    if (typeof message === "string") return message;
  } catch (_) { /* not the server's JSON: say what came instead */ }
  return `HTTP ${response.status} ${response.statusText}${text ? `: ${text.slice(0, 300)}` : ""}`;
}

// The `data:` payloads of a Server-Sent Events body, until [DONE].
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = raw.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
      if (data === "[DONE]") { reader.cancel(); return; }
      if (data) yield JSON.parse(data);
    }
  }
}

async function connect() {
  let retryIn = 0;
  try {
    const response = await fetch(api("models"), { headers: headers() });
    if (response.ok) {
      const card = (await response.json()).data[0];
      state.model = card.id;
      setStatus(`Model ${card.id} · context ${card.max_model_len} tokens`);
      $("key-message").textContent = state.keyRequired ? "Key accepted." : "";
      updateRequest();
      return;
    }
    const message = await errorMessage(response);
    if (response.status === 401) {
      askForKey(message);
      setStatus("This server needs an API key.");
    } else if (response.status === 503) {
      setStatus(message);
      retryIn = 1000 * (Number(response.headers.get("Retry-After")) || 1);
    } else {
      setStatus(message);
    }
  } catch (error) {
    setStatus(`Cannot reach the server (${error.message}); retrying.`);
    retryIn = 3000;
  }
  if (retryIn) setTimeout(connect, retryIn);
}

function setStatus(text) { $("server-status").textContent = text; }

function askForKey(message) {
  state.keyRequired = true;
  $("key-box").hidden = false;
  $("key-message").textContent = message;
}

function useKey() {
  state.key = $("api-key").value.trim();
  updateRequest();
  connect();
}

function showError(box, message) {
  box.textContent = message;
  box.hidden = false;
}

function clearError(box) {
  box.textContent = "";
  box.hidden = true;
}

// --- the request: built from the form, shown, and copied as curl or Python ----------------------

// A number exactly as typed (JSON numbers and JavaScript's differ past 2**53, as seeds may).
class Literal {
  constructor(text) { this.text = text; }
}

const JSON_NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;

function fieldValue(input) {
  if (input.validity.badInput) {
    throw new Error(`${input.labels[0].firstChild.textContent.trim()} is not a number`);
  }
  const text = input.value.trim();
  if (text === "") return undefined;
  if ("default" in input.dataset && Number(text) === Number(input.dataset.default)) return undefined;
  return JSON_NUMBER.test(text) ? new Literal(text) : Number(text);
}

function completionBody() {
  const body = {};
  if (state.model) body.model = state.model;
  body.prompt = $("prompt").value;
  for (const input of $("settings").querySelectorAll("input[type=number]")) {
    const value = fieldValue(input);
    if (value !== undefined) body[input.id] = value;
  }
  body.stream = true;
  body.stream_options = { include_usage: true };
  return body;
}

function scoreBody() {
  const body = {};
  if (state.model) body.model = state.model;
  Object.assign(body, { prompt: $("score-text").value, max_tokens: 0, echo: true, logprobs: SCORE_ALTERNATIVES });
  return body;
}

// JSON (or, with python, a Python literal) of a request value, indented by two spaces a level.
function literal(value, python = false, indent = "") {
  const inner = `${indent}  `;
  if (value instanceof Literal) return value.text;
  if (value === null) return python ? "None" : "null";
  if (typeof value === "boolean") return python ? (value ? "True" : "False") : String(value);
  if (typeof value === "string" || typeof value === "number") return JSON.stringify(value);
  const entries = Object.entries(value);
  if (entries.length === 0) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${literal(v, python, inner)}`)
    .join(",\n")}\n${indent}}`;
}

const shellQuote = (text) => `'${text.replace(/'/g, "'\\''")}'`;

function asCurl(body) {
  const lines = [`curl -N ${api("completions")}`, "-H 'Content-Type: application/json'"];
  if (state.keyRequired) lines.push('-H "Authorization: Bearer $GPT2GEN_API_KEY"');
  lines.push(`-d ${shellQuote(literal(body))}`);
  return `${lines.join(" \\\n  ")}\n`;
}

function asPython(body) {
  const keyed = state.keyRequired;
  const args = Object.entries(body).filter(([k]) => !EXTRA_BODY.has(k))
    .map(([k, v]) => `    ${k}=${literal(v, true, "    ")},`);
  const extra = Object.fromEntries(Object.entries(body).filter(([k]) => EXTRA_BODY.has(k)));
  if (Object.keys(extra).length) args.push(`    extra_body=${literal(extra, true, "    ")},`);
  return [
    ...(keyed ? ["import os", ""] : []),
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(api("").replace(/\/$/, ""))}, ` +
      (keyed ? 'api_key=os.environ["GPT2GEN_API_KEY"])' : 'api_key="unused")  # this server needs no key'),
    "stream = client.completions.create(",
    ...args,
    ")",
    "for chunk in stream:",
    "    if chunk.choices:  # the last chunk carries only the usage",
    '        print(chunk.choices[0].text, end="", flush=True)',
    "print()",
    "",
  ].join("\n");
}

let requestFormat = "json";

function updateRequest() {
  let text;
  try {
    const body = completionBody();
    text = requestFormat === "curl" ? asCurl(body) : requestFormat === "python" ? asPython(body) : literal(body);
  } catch (error) {
    text = error.message;
  }
  $("request-code").textContent = text;
}

async function copyRequest(format, what) {
  requestFormat = format;
  updateRequest();
  const details = $("request");
  details.open = true;
  const text = $("request-code").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = `Copied ${what}.`;
  } catch (_) { // no clipboard (a page served over plain HTTP from another host): select it instead
    getSelection().selectAllChildren($("request-code"));
    $("copy-status").textContent = `The clipboard is not available here: ${what} is selected below, press Ctrl+C.`;
  }
}

// --- tokens shaded by probability or surprisal, with their alternatives -------------------------

// Shows the tokens of a completions `logprobs` object over the text they spell. A token's text is
// the slice of the text between its offset and the next token's, so the text shown is exactly the
// API's; a token holding part of a character shows nothing (the next token shows the character).
// A token's slice may still grow while its text streams in (the server holds back a character's
// first bytes, and text that may begin a stop string).
class TokenView {
  constructor(container, measure) {
    this.container = container;
    this.measure = measure; // "probability" or "surprisal"
    this.clear();
  }

  clear() {
    this.container.replaceChildren();
    // chars: the text's characters (code points, which the API's text_offset counts)
    Object.assign(this, { chars: [], spans: [], offsets: [], settled: 0 });
  }

  get count() { return this.spans.length; }

  // Appends a piece of text and the logprobs of the tokens it brought (either may be empty).
  add(text, logprobs) {
    for (const c of text || "") this.chars.push(c);
    if (logprobs) {
      logprobs.tokens.forEach((token, i) => {
        this.offsets.push(logprobs.text_offset[i]);
        this.spans.push(this.newSpan(token, logprobs.token_logprobs[i], logprobs.top_logprobs[i]));
      });
    }
    this.render();
  }

  newSpan(token, logprob, top) {
    const span = document.createElement("span");
    span.className = "tok";
    span.tabIndex = this.spans.length === 0 ? 0 : -1;
    span.dataset.token = token;
    span.tokenTop = top;
    if (logprob === null) {
      span.classList.add("unscored");
    } else {
      span.dataset.logprob = String(logprob);
      const p = Math.exp(logprob);
      const shade = this.measure === "probability" ? 1 - p : Math.min(-logprob / Math.LN2 / SURPRISAL_CAP_BITS, 1);
      span.style.setProperty("--shade", shade.toFixed(3));
    }
    this.container.append(span);
    return span;
  }

  // Sets the text of every span whose slice may have grown since the last call.
  render() {
    const n = this.spans.length;
    for (let i = this.settled; i < n; i++) {
      const end = i + 1 < n ? this.offsets[i + 1] : this.chars.length;
      const slice = this.chars.slice(this.offsets[i], end).join("");
      const span = this.spans[i];
      if (span.textContent !== slice) span.textContent = slice;
      span.classList.toggle("empty", slice === "");
      if (i + 1 < n && end <= this.chars.length) this.settled = i + 1;
    }
  }
}

const percent = (p) => (p >= 0.1 ? `${(100 * p).toFixed(1)}%` : p >= 0.001 ? `${(100 * p).toFixed(2)}%`
  : `${(100 * p).toExponential(1)}%`);

// A token string with its spaces and control characters made visible.
function visible(token) {
  return token.replace(/[\s\0-\x1f\x7f]/g, (c) => ({ " ": "␣", "\n": "↵", "\t": "⇥" }[c]
    ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`));
}

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showTip(span) {
  const tip = $("tip");
  const token = span.dataset.token;
  const head = element("div", "tip-head");
  head.append(element("code", "", visible(token)));
  if (span.dataset.logprob === undefined) {
    head.append(element("span", "", " first token: no context, not scored"));
  } else {
    const logprob = Number(span.dataset.logprob);
    const bits = -logprob / Math.LN2;
    head.append(element("span", "", ` p = ${percent(Math.exp(logprob))} · log p = ${logprob.toFixed(4)}` +
      (span.closest(".surprisal") ? ` · ${bits.toFixed(2)} bits` : "")));
  }
  tip.replaceChildren(head);
  const top = Object.entries(span.tokenTop || {}).sort((a, b) => b[1] - a[1]);
  if (top.length) {
    const table = element("table", "alternatives");
    table.append(element("caption", "", "Top alternatives"));
    for (const [alt, logprob] of top) {
      const p = Math.exp(logprob);
      const row = element("tr", alt === token ? "chosen" : "");
      const bar = element("span", "bar"); // as long as p relative to the likeliest's
      bar.style.setProperty("--p", Math.exp(logprob - top[0][1]).toFixed(4));
      row.append(element("td", "", ""), element("td", "", ""), element("td", "num", percent(p)));
      row.cells[0].append(element("code", "", visible(alt)));
      row.cells[1].append(bar);
      row.dataset.token = alt;
      row.dataset.logprob = String(logprob);
      table.append(row);
    }
    tip.append(table);
  }
  tip.hidden = false;
  const rect = span.getBoundingClientRect();
  const width = tip.offsetWidth;
  const height = tip.offsetHeight;
  const left = Math.max(8, Math.min(rect.left, window.innerWidth - width - 8));
  const below = rect.bottom + 6;
  const y = below + height > window.innerHeight - 8 && rect.top - height - 6 > 8 ? rect.top - height - 6 : below;
  tip.style.setProperty("left", `${left}px`);
  tip.style.setProperty("top", `${y}px`);
  span.setAttribute("aria-describedby", "tip");
}

function hideTip() {
  $("tip").hidden = true;
  for (const span of document.querySelectorAll(".tok[aria-describedby]")) span.removeAttribute("aria-describedby");
}

// Hover and focus show a token's alternatives; the arrow keys move between tokens (one tab stop).
function wireTokens(container) {
  container.addEventListener("mouseover", (e) => { if (e.target.matches(".tok")) showTip(e.target); });
  container.addEventListener("mouseout", (e) => {
    if (e.target.matches(".tok") && document.activeElement !== e.target) hideTip();
  });
  container.addEventListener("focusin", (e) => {
    if (!e.target.matches(".tok")) return;
    for (const span of container.querySelectorAll(".tok[tabindex='0']")) span.tabIndex = -1;
    e.target.tabIndex = 0;
    showTip(e.target);
  });
  container.addEventListener("focusout", hideTip);
  container.addEventListener("keydown", (e) => {
    const spans = [...container.querySelectorAll(".tok")];
    const at = spans.indexOf(e.target);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0,
      End: spans.length - 1 }[e.key];
    if (to !== undefined) {
      e.preventDefault();
      spans[Math.max(0, Math.min(to, spans.length - 1))].focus();
    }
  });
}

// --- completing ------------------------------------------------------------------------------

const completion = new TokenView($("completion"), "probability");

function setBusy(busy) {
  const hadFocus = document.activeElement;
  $("generate").disabled = busy;
  $("stop").disabled = !busy;
  $("output").setAttribute("aria-busy", String(busy));
  if (busy && hadFocus === $("generate")) $("stop").focus();
  if (!busy && hadFocus === $("stop")) $("generate").focus();
}

async function generate() {
  if (state.controller) return;
  const errorBox = $("complete-error");
  clearError(errorBox);
  let body;
  try {
    body = completionBody();
  } catch (error) {
    showError(errorBox, error.message);
    return;
  }
  requestFormat = "json";
  updateRequest();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  hideTip();
  completion.clear();
  $("echo-prompt").textContent = body.prompt;
  const stats = $("complete-stats");
  stats.textContent = "Generating…";
  delete stats.dataset.done;
  const started = performance.now();
  let first = null, last = null, firstTokens = 0, usage = null, finish = null, ended = "done";
  try {
    const response = await fetch(api("completions"), {
      method: "POST", headers: headers(), body: literal(body), signal: controller.signal,
    });
    if (!response.ok) {
      if (response.status === 401) askForKey(await errorMessage(response.clone()));
      throw new ServerError(await errorMessage(response));
    }
    for await (const chunk of serverSentEvents(response.body)) {
      if (chunk.error) throw new ServerError(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        const tokens = choice.logprobs ? choice.logprobs.tokens.length : 0;
        if (choice.text || tokens) {
          last = performance.now();
          if (first === null) { first = last; firstTokens = Math.max(tokens, 1); }
        }
        completion.add(choice.text, choice.logprobs);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") ended = "stopped";
    else {
      ended = "failed";
      showError(errorBox, error instanceof ServerError ? error.message : `The request failed: ${error.message}`);
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
  const n = usage ? usage.completion_tokens : completion.count;
  const parts = [];
  if (first !== null) parts.push(`time to first token ${Math.round(first - started)} ms`);
  parts.push(`${n} token${n === 1 ? "" : "s"}`);
  if (last > first && n > firstTokens) parts.push(`${((n - firstTokens) / ((last - first) / 1000)).toFixed(1)} tokens/s`);
  parts.push(ended === "done" ? `finished: ${finish}` : ended);
  stats.textContent = parts.join(" · ");
  stats.dataset.done = ended;
}

class ServerError extends Error {}

function stop() {
  if (state.controller) state.controller.abort(); // the server sees the disconnect and cancels
}

// --- scoring ---------------------------------------------------------------------------------

const scored = new TokenView($("scored"), "surprisal");

async function score() {
  const errorBox = $("score-error");
  const stats = $("score-stats");
  clearError(errorBox);
  hideTip();
  scored.clear();
  delete stats.dataset.perplexity;
  stats.textContent = "Scoring…";
  $("score").disabled = true;
  try {
    const response = await fetch(api("completions"), { method: "POST", headers: headers(), body: literal(scoreBody()) });
    if (!response.ok) {
      if (response.status === 401) askForKey(await errorMessage(response.clone()));
      stats.textContent = "";
      showError(errorBox, await errorMessage(response));
      return;
    }
    const choice = (await response.json()).choices[0];
    scored.add(choice.text, choice.logprobs);
    const logprobs = choice.logprobs.token_logprobs.filter((lp) => lp !== null);
    if (logprobs.length === 0) {
      stats.textContent = "One token: nothing to score (each token is scored given the ones before it).";
      return;
    }
    let total = 0;
    for (const lp of logprobs) total += lp;
    const perplexity = Math.exp(-total / logprobs.length);
    stats.dataset.total = String(total);
    stats.dataset.perplexity = String(perplexity);
    stats.replaceChildren(
      `${choice.logprobs.tokens.length} tokens, ${logprobs.length} scored · total log-probability `,
      element("strong", "", total.toFixed(3)), " nats · perplexity ", element("strong", "", perplexity.toPrecision(6)));
  } catch (error) {
    stats.textContent = "";
    showError(errorBox, `The request failed: ${error.message}`);
  } finally {
    $("score").disabled = false;
  }
}

// --- tabs and keys ---------------------------------------------------------------------------

function selectTab(tab) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  hideTip();
  tab.focus();
}

function wireTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) selectTab(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length]);
    });
  }
}

function init() {
  wireTabs();
  wireTokens($("completion"));
  wireTokens($("scored"));
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("score").addEventListener("click", score);
  $("copy-curl").addEventListener("click", () => copyRequest("curl", "the curl command"));
  $("copy-python").addEventListener("click", () => copyRequest("python", "the Python code"));
  $("key-use").addEventListener("click", useKey);
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") useKey(); });
  $("shade").addEventListener("change", (e) => $("output").classList.toggle("shaded", e.target.checked));
  $("settings").addEventListener("input", updateRequest);
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("prompt").addEventListener("input", updateRequest);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("score-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); score(); }
  });
  document.addEventListener("keydown", (e) => { // Esc closes a token's tip, else stops generating
    if (e.key !== "Escape") return;
    if (!$("tip").hidden) hideTip();
    else stop();
  });
  window.addEventListener("scroll", hideTip, { passive: true });
  updateRequest();
  connect();
}

init();
