// The registry dashboard. Everything shown comes from node files, which are untrusted:
// text goes into the page through textContent only, never as HTML.
"use strict";

const TOKEN_KEY = "droq-registry-token";
const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  nodes: new Map(),      // node_id -> JSON text of its metadata (to spot changes)
  open: new Set(),       // node ids whose components are shown
  problems: new Set(),   // "path|error" already shown
  flashNodes: new Set(), // node ids to highlight on the next render
  lastEventId: null,
  refreshTimer: null,
  streamAbort: null,
};

class Unauthorized extends Error {}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function headers() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-cache" });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

// --- access token -------------------------------------------------------------------
function askForToken(message) {
  document.getElementById("main").hidden = true;
  const form = document.getElementById("token-form");
  form.hidden = false;
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("token-input").focus();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = document.getElementById("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  document.getElementById("token-form").hidden = true;
  start();
});

// --- rendering ----------------------------------------------------------------------
function renderStats(health) {
  document.getElementById("stat-revision").textContent = health.revision;
  document.getElementById("stat-reconciled").textContent = when(health.last_reconcile_at);
  const watcher = health.watcher.state + (health.watcher.error ? ` (${health.watcher.error})` : "");
  document.getElementById("stat-watcher").textContent = watcher;
  document.getElementById("stat-nodes").textContent = health.nodes;
  document.getElementById("stat-components").textContent = health.components;
  document.getElementById("stat-errors").textContent = health.files_in_error;
}

function renderNodes(list, sources) {
  const owner = new Map();
  for (const source of sources.sources) {
    if (source.node_id && (source.state === "ok" || source.serving_last_good)) owner.set(source.node_id, source);
  }
  const tbody = document.querySelector("#nodes tbody");
  const rows = [];
  const seen = new Map();
  for (const item of list.nodes) {
    const node = item.metadata;
    const text = JSON.stringify(item);
    const before = state.nodes.get(node.node_id);
    if (before !== undefined && before !== text) state.flashNodes.add(node.node_id);
    if (before === undefined && state.nodes.size) state.flashNodes.add(node.node_id);
    seen.set(node.node_id, text);
    const source = owner.get(node.node_id);
    const row = el("tr", {
      class: "node" + (state.flashNodes.has(node.node_id) ? " flash" : ""),
      tabindex: "0",
      "data-node-id": node.node_id,
      "aria-expanded": String(state.open.has(node.node_id)),
      onclick: () => toggle(node.node_id),
      onkeydown: (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); toggle(node.node_id); }
      },
    },
      el("td", { class: "mono", text: node.node_id }),
      el("td", { text: node.name }),
      el("td", { class: `status-${node.status}`, text: node.status }),
      el("td", { class: "mono", text: node.api_url ?? "–" }),
      el("td", { class: "num", text: item.components_count }),
      el("td", { class: "mono", text: source ? source.path : "–" }),
      el("td", { text: when(source && source.applied_at) }),
    );
    rows.push(row);
    if (state.open.has(node.node_id)) {
      const cell = el("td", { colspan: "7" }, el("span", { class: "muted", text: "loading…" }));
      rows.push(el("tr", { class: "details", "data-details-for": node.node_id }, cell));
      loadComponents(node.node_id, cell);
    }
  }
  state.nodes = seen;
  state.flashNodes.clear();
  tbody.replaceChildren(...rows);
  if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "No nodes yet: drop a node file into the assets folder." })));
}

async function loadComponents(nodeId, cell) {
  try {
    const detail = await api(`/api/v1/nodes/${encodeURIComponent(nodeId)}/components`);
    const table = el("table", { class: "components" },
      el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: "Class" }), el("th", { scope: "col", text: "Module path" }),
        el("th", { scope: "col", text: "Display name" }), el("th", { scope: "col", text: "Description" }))),
      el("tbody", {}, ...detail.components.map((c) => el("tr", {},
        el("td", { class: "mono", text: c.component_class }),
        el("td", { class: "mono", text: c.module_path }),
        el("td", { text: typeof c.display_name === "string" ? c.display_name : "–" }),
        el("td", { text: typeof c.description === "string" ? c.description : "–" })))));
    cell.replaceChildren(detail.components.length ? table : el("span", { class: "muted", text: "No components." }));
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken("The token was refused.");
    cell.replaceChildren(el("span", { class: "error-text", text: String(error.message || error) }));
  }
}

function toggle(nodeId) {
  if (state.open.has(nodeId)) state.open.delete(nodeId); else state.open.add(nodeId);
  scheduleRefresh(0);
}

function renderProblems(sources, shared) {
  const box = document.getElementById("problems");
  const bad = sources.sources.filter((s) => s.state !== "ok");
  const now = new Set();
  const items = bad.map((s) => {
    const key = `${s.path}|${s.error}`;
    now.add(key);
    const fresh = !state.problems.has(key);
    return el("li", { class: fresh ? "flash" : "", "data-path": s.path },
      el("strong", { class: "mono", text: s.path }), " ",
      el("span", { class: `state-${s.state}`, text: s.state }),
      s.serving_last_good ? el("span", { class: "muted", text: ` · still serving the last good version of ${s.node_id}` }) : null,
      el("div", { class: "mono error-text", text: s.error || "" }));
  });
  state.problems = now;
  box.replaceChildren(items.length ? el("ul", { class: "plain" }, ...items) : el("p", { class: "muted", text: "Every node file is fine." }));
  const sharedBox = document.getElementById("shared");
  sharedBox.replaceChildren(shared.classes.length
    ? el("ul", { class: "plain" }, ...shared.classes.map((c) => el("li", {},
        el("span", { class: "mono", text: c.component_class }), " → ",
        el("span", { class: "mono", text: c.chosen }),
        el("span", { class: "muted", text: ` (also: ${c.nodes.slice(1).join(", ")})` }))))
    : el("p", { class: "muted", text: "No class is claimed by more than one active node." }));
}

async function refresh() {
  try {
    const [health, list, sources, shared] = await Promise.all([
      api("/health"), api("/api/v1/nodes?status=all"), api("/api/v1/sources"), api("/api/v1/shared-classes"),
    ]);
    document.getElementById("main").hidden = false;
    renderStats(health);
    renderNodes(list, sources);
    renderProblems(sources, shared);
  } catch (error) {
    if (error instanceof Unauthorized) askForToken(state.token ? "The token was refused." : "");
    else setLive(false, String(error.message || error));
  }
}

function scheduleRefresh(delay = 60) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, delay);
}

// --- search -------------------------------------------------------------------------
let searchTimer = null;
let searchSeq = 0;
document.getElementById("search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  const query = event.target.value.trim();
  searchTimer = setTimeout(() => runSearch(query), 120);
});

async function runSearch(query) {
  const box = document.getElementById("search-results");
  const seq = ++searchSeq;
  if (!query) { box.replaceChildren(); return; }
  try {
    const found = await api(`/api/v1/search?q=${encodeURIComponent(query)}`);
    if (seq !== searchSeq) return;
    if (!found.results.length) {
      box.replaceChildren(el("p", { class: "muted", text: `Nothing matches “${query}”.` }));
      return;
    }
    box.replaceChildren(el("ul", { class: "plain" }, ...found.results.map((r) => el("li", {},
      el("strong", { class: "mono", text: r.component_class }),
      r.display_name ? el("span", { class: "muted", text: ` · ${r.display_name}` }) : null,
      el("div", {}, r.node_id
        ? el("span", {}, "runs on ", el("span", { class: "mono", "data-chosen": "", text: r.node_id }),
            " as ", el("code", { text: r.module_path }),
            r.candidates.length > 1 ? el("span", { class: "muted", text: ` · other candidates: ${r.candidates.slice(1).join(", ")}` }) : null)
        : el("span", { class: "muted", text: `declared by ${r.declared_by}, which is not active` })),
      r.description ? el("div", { class: "muted", text: r.description }) : null)),
      found.truncated ? el("li", { class: "muted", text: "More matches: type more to narrow down." }) : null));
  } catch (error) {
    if (error instanceof Unauthorized) return askForToken("The token was refused.");
    box.replaceChildren(el("p", { class: "error-text", text: String(error.message || error) }));
  }
}

// --- live updates -------------------------------------------------------------------
// EventSource cannot send an Authorization header, so the stream is read with fetch().
function setLive(up, text) {
  const pill = document.getElementById("live");
  pill.className = "pill " + (up ? "live" : "down");
  pill.textContent = text;
}

async function follow() {
  let backoff = 500;
  for (;;) {
    const controller = new AbortController();
    state.streamAbort = controller;
    try {
      const h = { ...headers(), Accept: "text/event-stream" };
      if (state.lastEventId !== null) h["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/api/v1/events", { headers: h, signal: controller.signal, cache: "no-store" });
      if (response.status === 401) { askForToken("The token was refused."); return; }
      if (!response.ok || !response.body) throw new Error(`event stream: HTTP ${response.status}`);
      setLive(true, `live · revision ${response.headers.get("X-Registry-Revision")}`);
      backoff = 500;
      scheduleRefresh(0);
      await readEvents(response.body, onEvent);
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    setLive(false, "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = { event: "message", data: [], id: null };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(val);
        else if (field === "event") event.event = val;
        else if (field === "id") event.id = val;
      }
      if (event.data.length || event.id !== null) handle(event);
    }
  }
}

function onEvent(event) {
  if (event.id !== null) state.lastEventId = event.id;
  let record = {};
  try { record = JSON.parse(event.data.join("\n")); } catch (_) { /* keep-alive or malformed */ }
  if (record.node_id) state.flashNodes.add(record.node_id);
  if (record.revision !== undefined) setLive(true, `live · revision ${record.revision}`);
  scheduleRefresh();
}

// The watcher's state and the last reconcile time change without a change record.
async function refreshStats() {
  if (document.getElementById("main").hidden) return;
  try { renderStats(await api("/health")); } catch (_) { /* the stream reports trouble */ }
}

function start() {
  if (state.streamAbort) state.streamAbort.abort();
  refresh();
  follow();
}

setInterval(refreshStats, 5000);

start();
