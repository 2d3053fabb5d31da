// uniws admin UI: plain JS, no build step, no external resources.
// API URLs are relative to the page (`<prefix>/admin/auth`, `<prefix>/admin/api`).
"use strict";

const TOKEN_KEY = "uniws.admin.token";
const POLL_MS = 5000;
const $ = (id) => document.getElementById(id);

const METHODS = {
  publish: { help: "Publish data to a channel.", params: { channel: "news", data: { text: "hello" } } },
  broadcast: { help: "Publish the same data to several channels.", params: { channels: ["news", "alerts"], data: { text: "hello" } } },
  presence: { help: "Clients subscribed to a channel (presence must be on for it).", params: { channel: "news" } },
  presence_stats: { help: "Number of clients and unique users in a channel.", params: { channel: "news" } },
  history: { help: "Publications kept in a channel's history.", params: { channel: "news", limit: 10, reverse: true } },
  history_remove: { help: "Forget a channel's history.", params: { channel: "news" } },
  channels: { help: "Active channels (with subscribers) matching a pattern.", params: { pattern: "*" } },
  info: { help: "Nodes and their figures.", params: {} },
  subscribe: { help: "Subscribe a user's connections to a channel.", params: { user: "42", channel: "news" } },
  unsubscribe: { help: "Unsubscribe a user from a channel.", params: { user: "42", channel: "news" } },
  disconnect: { help: "Disconnect a user's connections.", params: { user: "42" } },
  refresh: { help: "Refresh or expire a user's connections.", params: { user: "42", expired: true } },
};

let token = localStorage.getItem(TOKEN_KEY);
let pollTimer = null;
let lastSample = null;   // {at, node: count, workers: {index: count}} for publications/s

// ---------------------------------------------------------------------------- auth

async function login(password) {
  const form = new FormData();
  form.append("password", password);
  const resp = await fetch("admin/auth", { method: "POST", body: form });
  if (!resp.ok) return null;
  const body = await resp.json();
  return body.token || null;
}

function setToken(value) {
  token = value;
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

function logout() {
  setToken(null);
  stopPolling();
  lastSample = null;
  showLogin();
}

async function api(method, params) {
  const headers = { "Content-Type": "application/json" };
  if (token && token !== "insecure") headers.Authorization = "token " + token;
  const resp = await fetch("admin/api", { method: "POST", headers, body: JSON.stringify({ method, params }) });
  if (resp.status === 401) {
    logout();
    throw new Error("session expired: log in again");
  }
  const text = await resp.text();
  if (!resp.ok) throw new Error(`HTTP ${resp.status}: ${text.trim() || resp.statusText}`);
  return { reply: JSON.parse(text), text };
}

// ---------------------------------------------------------------------------- views

function showLogin() {
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  $("password").value = "";
  $("password").focus();
}

function showApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  route();
}

function route() {
  const page = location.hash === "#actions" ? "actions" : "status";
  $("status-page").hidden = page !== "status";
  $("actions-page").hidden = page !== "actions";
  for (const name of ["status", "actions"]) {
    const link = $("nav-" + name);
    if (name === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (page === "status") startPolling();
  else stopPolling();
}

// ---------------------------------------------------------------------------- status

function startPolling() {
  if (pollTimer !== null) return;
  refreshStatus();
  // A second sample soon after the first gives the publication rates without a 5 s wait.
  setTimeout(() => { if (pollTimer !== null) refreshStatus(); }, 1000);
  pollTimer = setInterval(refreshStatus, POLL_MS);
}

function stopPolling() {
  if (pollTimer !== null) clearInterval(pollTimer);
  pollTimer = null;
}

function humanUptime(seconds) {
  if (seconds === undefined || seconds === null) return "just started";
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

const fmt = (n) => (n === undefined || n === null ? "n/a" : Number(n).toLocaleString("en-US"));
const fmtRate = (r) => (r === null ? "–" : r === 0 ? "0" : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en-US"));

function item(entry, name) {
  const items = entry.metrics && entry.metrics.items;
  return items && items[name] !== undefined ? items[name] : 0;
}

function rates(node, workers) {
  // Publications the node sequenced (each once), and publications each worker's hub handled.
  const now = performance.now();
  const sample = {
    at: now,
    node: workers.reduce((sum, w) => sum + (w.metrics && w.metrics.items["uniws.node.sequenced"] !== undefined
      ? item(w, "uniws.node.sequenced") : item(w, "uniws.node.publications")), 0),
    workers: Object.fromEntries(workers.map((w) => [w.worker, item(w, "uniws.node.publications")])),
  };
  const prev = lastSample;
  lastSample = sample;
  if (!prev) return { node: null, workers: {} };
  const dt = (now - prev.at) / 1000;
  const out = { node: Math.max(0, (sample.node - prev.node) / dt), workers: {} };
  for (const [w, count] of Object.entries(sample.workers)) {
    out.workers[w] = prev.workers[w] === undefined ? null : Math.max(0, (count - prev.workers[w]) / dt);
  }
  return out;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillTable(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}

async function refreshStatus() {
  try {
    const { reply } = await api("info", {});
    if (reply.error) throw new Error(`${reply.error.code}: ${reply.error.message}`);
    renderStatus(reply.result.nodes || []);
    $("status-error").hidden = true;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (!token) return;
    $("status-error").textContent = "Could not load node info: " + err.message;
    $("status-error").hidden = false;
  }
}

function renderStatus(nodes) {
  const node = nodes[0] || {};
  const workers = node.workers || (nodes.length ? [{ ...node, worker: 0 }] : []);
  const r = rates(node, workers);
  $("node-name").textContent = node.name ? `${node.name} · v${node.version}` : "";
  const cards = [
    ["Nodes", nodes.length], ["Workers", workers.length], ["Clients", node.num_clients],
    ["Users", node.num_users], ["Channels", node.num_channels], ["Subscriptions", node.num_subs],
    ["Publications/s", r.node],
  ];
  $("cards").replaceChildren(...cards.map(([label, value]) => {
    const div = document.createElement("div");
    div.className = "stat";
    div.dataset.stat = label.toLowerCase().replace("/", "_");
    const v = document.createElement("div");
    v.className = "value";
    v.textContent = label === "Publications/s" ? fmtRate(value) : fmt(value);
    const l = document.createElement("div");
    l.className = "label";
    l.textContent = label;
    div.append(v, l);
    return div;
  }));
  fillTable($("nodes-table"), nodes.map((n) => [
    cell(n.name), cell(n.version), cell(humanUptime(n.uptime)), cell(fmt(n.num_clients), "num"),
    cell(fmt(n.num_users), "num"), cell(fmt(n.num_subs), "num"), cell(fmt(n.num_channels), "num"),
    cell(fmtRate(n === node ? r.node : null), "num"), cell(fmt((n.workers || [n]).length), "num"),
    cell(n.process ? `${Number(n.process.cpu).toFixed(1)}%` : "n/a", "num"),
    cell(n.process ? `${(n.process.rss / 1048576).toFixed(1)} MiB` : "n/a", "num"),
  ]));
  fillTable($("workers-table"), workers.map((w) => [
    cell(String(w.worker)), cell(humanUptime(w.uptime)), cell(fmt(w.num_clients), "num"),
    cell(fmt(w.num_users), "num"), cell(fmt(w.num_subs), "num"), cell(fmt(w.num_channels), "num"),
    cell(fmtRate(r.workers[w.worker] === undefined ? null : r.workers[w.worker]), "num"),
    cell(fmt(item(w, "uniws.bus.gaps")), "num"),
  ]));
}

// ---------------------------------------------------------------------------- actions

function setupActions() {
  const select = $("method");
  for (const name of Object.keys(METHODS)) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    select.append(opt);
  }
  let shown = select.value;
  select.addEventListener("change", () => {
    edited[shown] = $("params").value;        // switching back restores what was typed
    shown = select.value;
    loadTemplate(shown);
  });
  loadTemplate(select.value);
  $("format").addEventListener("click", () => {
    try {
      $("params").value = JSON.stringify(JSON.parse($("params").value || "{}"), null, 2);
      $("params-error").hidden = true;
    } catch (err) {
      $("params-error").textContent = "Invalid JSON: " + err.message;
      $("params-error").hidden = false;
    }
  });
  $("action-form").addEventListener("submit", (ev) => { ev.preventDefault(); sendAction(); });
  $("params").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); sendAction(); }
  });
}

const edited = {};   // method -> params text typed for it

function loadTemplate(method) {
  $("params").value = edited[method] ?? JSON.stringify(METHODS[method].params, null, 2);
  $("method-help").textContent = METHODS[method].help;
  $("params-error").hidden = true;
}

async function sendAction() {
  const method = $("method").value;
  let params;
  try {
    params = JSON.parse($("params").value || "{}");
    if (params === null || typeof params !== "object" || Array.isArray(params)) throw new Error("params must be a JSON object");
  } catch (err) {
    $("params-error").textContent = "Invalid JSON: " + err.message;
    $("params-error").hidden = false;
    $("params").focus();
    return;
  }
  $("params-error").hidden = true;
  const button = $("send");
  button.disabled = true;
  const started = performance.now();
  try {
    const { reply } = await api(method, params);
    const ms = Math.round(performance.now() - started);
    $("result-raw").textContent = JSON.stringify(reply, null, 2);
    if (reply.error) {
      setStatus(false, `error ${reply.error.code}: ${reply.error.message}`, ms);
      $("result-view").replaceChildren();
    } else {
      setStatus(true, "ok", ms);
      $("result-view").replaceChildren(readable(method, reply.result || {}));
    }
    $("raw-details").open = !!reply.error;
  } catch (err) {
    setStatus(false, err.message, null);
    $("result-view").replaceChildren();
    $("result-raw").textContent = "";
  } finally {
    button.disabled = false;
  }
}

function setStatus(ok, text, ms) {
  const badge = document.createElement("span");
  badge.className = "badge " + (ok ? "ok" : "bad");
  badge.textContent = text;
  const parts = [badge];
  if (ms !== null) {
    const t = document.createElement("span");
    t.className = "muted small";
    t.textContent = ` ${ms} ms`;
    parts.push(t);
  }
  $("result-status").replaceChildren(...parts);
}

function kv(pairs) {
  const dl = document.createElement("dl");
  dl.className = "kv";
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = typeof v === "string" ? v : JSON.stringify(v);
    dl.append(dt, dd);
  }
  return dl;
}

function table(headers, rows, emptyText) {
  if (!rows.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = emptyText;
    return p;
  }
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  const t = document.createElement("table");
  const head = document.createElement("tr");
  head.append(...headers.map((h) => { const th = document.createElement("th"); th.textContent = h; return th; }));
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  tbody.append(...rows.map((r) => {
    const tr = document.createElement("tr");
    tr.append(...r.map((v) => cell(typeof v === "string" ? v : JSON.stringify(v))));
    return tr;
  }));
  t.append(thead, tbody);
  wrap.append(t);
  return wrap;
}

function readable(method, result) {
  switch (method) {
    case "publish":
      return kv(Object.keys(result).length ? Object.entries(result) : [["published", "yes (channel keeps no history)"]]);
    case "broadcast":
      return table(["#", "result"], (result.responses || []).map((r, i) => [String(i + 1), r.error ? `error ${r.error.code}: ${r.error.message}` : r.result || {}]), "No channels.");
    case "presence":
      return table(["client", "user", "conn_info", "chan_info"],
        Object.values(result.presence || {}).sort((a, b) => a.user.localeCompare(b.user) || a.client.localeCompare(b.client))
          .map((c) => [c.client, c.user, c.conn_info ?? "", c.chan_info ?? ""]), "Nobody is present.");
    case "presence_stats":
      return kv([["clients", String(result.num_clients)], ["users", String(result.num_users)]]);
    case "history":
      return table(["offset", "data"], (result.publications || []).map((p) => [String(p.offset ?? ""), p.data]),
        `No publications (offset ${result.offset ?? 0}, epoch ${result.epoch ?? "–"}).`);
    case "channels":
      return table(["channel", "clients"], Object.entries(result.channels || {}).map(([c, v]) => [c, String(v.num_clients)]), "No active channels.");
    case "info":
      return table(["name", "version", "clients", "users", "channels", "subscriptions"],
        (result.nodes || []).map((n) => [n.name, n.version, String(n.num_clients), String(n.num_users), String(n.num_channels), String(n.num_subs)]), "No nodes.");
    default: {
      const p = document.createElement("p");
      p.textContent = "Done.";
      return p;
    }
  }
}

// ---------------------------------------------------------------------------- start

async function start() {
  setupActions();
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => { if (token) route(); });
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("login-button");
    button.disabled = true;
    $("login-error").hidden = true;
    try {
      const value = await login($("password").value);
      if (!value) {
        $("login-error").textContent = "Wrong password.";
        $("login-error").hidden = false;
        $("password").select();
        return;
      }
      setToken(value);
      showApp();
    } catch (err) {
      $("login-error").textContent = "Cannot reach the server: " + err.message;
      $("login-error").hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  if (!token) {
    // admin_insecure: any password is accepted and the token is "insecure": log in at once.
    try {
      const value = await login("");
      if (value === "insecure") setToken(value);
    } catch (err) { /* server unreachable: the login form says so on submit */ }
  }
  if (token) showApp();
  else showLogin();
}

start();
