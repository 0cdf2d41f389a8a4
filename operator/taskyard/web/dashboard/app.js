// The taskyard dashboard: plain JavaScript over the task API of the same origin. The token is kept in
// this tab's sessionStorage and sent with every request; the API acts as it, so RBAC decides.
"use strict";

const PHASES = ["Pending", "Queued", "Running", "Cancelling", "Succeeded", "Failed", "Cancelled"];
const FINAL = new Set(["Succeeded", "Failed", "Cancelled"]);
const LIST_EVERY_MS = 2000;
const TASK_EVERY_MS = 1500;

const $ = (id) => document.getElementById(id);
const session = {
  get token() { return sessionStorage.getItem("taskyard.token") || ""; },
  set token(value) { value ? sessionStorage.setItem("taskyard.token", value) : sessionStorage.removeItem("taskyard.token"); },
  get namespace() { return sessionStorage.getItem("taskyard.namespace") || ""; },
  set namespace(value) { sessionStorage.setItem("taskyard.namespace", value); },
};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers() {
  const sent = { Authorization: `Bearer ${session.token}` };
  if (session.namespace) sent["X-Taskyard-Namespace"] = session.namespace;
  return sent;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { signOut(body.error); throw new ApiError(401, body.error || "Unauthorized"); }
  if (!response.ok) throw new ApiError(response.status, body.error || `HTTP ${response.status}`);
  return body;
}

// --- small helpers ------------------------------------------------------------------------------

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function duration(ms) {
  if (ms == null) return "";
  let seconds = Math.round(ms / 1000);
  const hours = Math.floor(seconds / 3600); seconds -= hours * 3600;
  const minutes = Math.floor(seconds / 60); seconds -= minutes * 60;
  return (hours ? `${hours}h` : "") + (hours || minutes ? `${minutes}m` : "") + `${seconds}s`;
}

function usage(task) {
  const used = (task.result && task.result.usage) || {};
  const tokens = (used.inputTokens || 0) + (used.outputTokens || 0);
  return { tokens: tokens ? tokens.toLocaleString("en") : "", cost: used.costUSD != null ? `$${used.costUSD.toFixed(4)}` : "" };
}

function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : ""; }

let timers = [];
let stream = null;
function stopWork() {
  timers.forEach(clearInterval); timers = [];
  if (stream) { stream.abort(); stream = null; }
}
function every(ms, work) { work(); timers.push(setInterval(work, ms)); }

function show(view) {
  for (const id of ["sign-in", "tasks-view", "new-view", "task-view"]) $(id).hidden = id !== view;
  $("nav").hidden = view === "sign-in";
}

// --- sign in ------------------------------------------------------------------------------------

function signOut(reason) {
  session.token = "";
  stopWork();
  $("sign-in-error").textContent = reason || "";
  show("sign-in");
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  session.token = $("token").value.trim();
  try {
    const status = await api("/v1/status");
    if (!session.namespace) session.namespace = status.namespace;
    $("token").value = "";
    route();
  } catch (error) {
    $("sign-in-error").textContent = error.message;
  }
});

$("sign-out").addEventListener("click", () => signOut(""));
$("namespace").addEventListener("change", () => { session.namespace = $("namespace").value.trim(); route(); });

// --- the list -------------------------------------------------------------------------------------

for (const phase of PHASES) $("filter-phase").add(new Option(phase, phase));
$("filter-phase").addEventListener("change", () => renderTasks());
$("filter-agent").addEventListener("change", () => renderTasks());
let listed = [];

function renderTasks() {
  const phase = $("filter-phase").value, agent = $("filter-agent").value;
  const agents = [...new Set(listed.map((task) => task.agent))].sort();
  const select = $("filter-agent");
  const known = [...select.options].map((option) => option.value);
  for (const name of agents) if (!known.includes(name)) select.add(new Option(name, name));
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  const shown = listed.filter((task) => (!phase || task.phase === phase) && (!agent || task.agent === agent));
  for (const task of shown) {
    const row = body.insertRow();
    row.dataset.task = task.taskId;
    const link = document.createElement("a");
    link.href = `#/task/${encodeURIComponent(task.taskId)}`;
    link.textContent = task.taskId;
    cell(row, "").appendChild(link);
    cell(row, task.phase, `phase-cell`).dataset.phase = task.phase;
    cell(row, task.agent);
    cell(row, task.priority);
    cell(row, duration(task.duration));
    const used = usage(task);
    cell(row, used.tokens);
    cell(row, used.cost);
  }
  $("tasks-empty").hidden = shown.length > 0;
}

async function refreshTasks() {
  try {
    const answer = await api("/v1/dashboard/tasks");
    listed = answer.tasks;
    $("tasks-namespace").textContent = `in ${answer.namespace}`;
    $("tasks-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    renderTasks();
  } catch (error) {
    $("tasks-updated").textContent = error.message;
  }
}

// --- a new Task -----------------------------------------------------------------------------------

async function loadAgents() {
  try {
    const { agents } = await api("/v1/agents");
    $("agents").replaceChildren(...agents.map((agent) => new Option(`${agent.name} (${agent.kind})`, agent.name)));
  } catch (error) { /* the caller may not list agents: they type the name */ }
}

$("new-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("new-error").textContent = "";
  try {
    const created = await api("/v1/tasks", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ agent: $("new-agent").value.trim(), task: $("new-prompt").value, priority: $("new-priority").value }),
    });
    $("new-prompt").value = "";
    location.hash = `#/task/${encodeURIComponent(created.taskId)}`;
  } catch (error) {
    $("new-error").textContent = error.message;
  }
});

// --- one Task -------------------------------------------------------------------------------------

function renderTask(task) {
  $("task-name").textContent = task.taskId;
  $("task-phase").textContent = task.phase;
  $("task-phase").className = `phase ${task.phase}`;
  $("cancel").hidden = FINAL.has(task.phase) || task.status === "stopped";
  const used = usage(task);
  const fields = [
    ["Status", task.status], ["Reason", task.reason], ["Agent", task.agent], ["Priority", task.priority],
    ["Attempts", task.attempts], ["Started", when(task.startTime)], ["Finished", when(task.exitTime)],
    ["Duration", duration(task.duration)], ["Exit code", task.exitCode], ["Tokens", used.tokens],
    ["Cost", used.cost], ["Error", task.error], ["Prompt", task.task],
  ];
  const body = $("task-fields").tBodies[0];
  body.replaceChildren();
  for (const [name, value] of fields) {
    if (value == null || value === "") continue;
    const row = body.insertRow();
    cell(row, name);
    cell(row, value);
  }
  $("result").textContent = task.result ? JSON.stringify(task.result, null, 2) : "—";
}

async function refreshEvents(name) {
  const { events } = await api(`/v1/tasks/${encodeURIComponent(name)}/events`);
  const body = $("events").tBodies[0];
  body.replaceChildren();
  for (const event of events) {
    const row = body.insertRow();
    cell(row, when(event.timestamp)); cell(row, event.type); cell(row, event.reason); cell(row, event.message);
  }
}

// EventSource cannot send a token: the stream is read with fetch, and its events parsed here.
async function followLog(name) {
  const controller = new AbortController();
  stream = controller;
  const log = $("log");
  log.textContent = "";
  $("log-state").textContent = "following…";
  try {
    const response = await fetch(`/v1/tasks/${encodeURIComponent(name)}/logs/stream`, { headers: headers(), signal: controller.signal });
    if (!response.ok) throw new ApiError(response.status, (await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      let end;
      while ((end = pending.indexOf("\n\n")) >= 0) {
        const frame = pending.slice(0, end);
        pending = pending.slice(end + 2);
        let type = "message", data = "";
        for (const line of frame.split("\n")) {
          if (line.startsWith("event: ")) type = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const payload = data ? JSON.parse(data) : {};
        if (type === "message") {
          const line = document.createElement("div");
          line.className = "log-line";
          line.textContent = payload.line;
          log.appendChild(line);
          log.scrollTop = log.scrollHeight;
        } else if (type === "task-complete") {
          $("log-state").textContent = `Task ${payload.status} (exit code: ${payload.exitCode})`;
        } else if (type === "error") {
          $("log-state").textContent = `Stream error: ${payload.message}`;
        }
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") $("log-state").textContent = `Stream error: ${error.message}`;
  }
}

$("cancel").addEventListener("click", async () => {
  const name = $("task-name").textContent;
  try {
    await api(`/v1/tasks/${encodeURIComponent(name)}`, { method: "DELETE" });
    $("cancel").hidden = true;
  } catch (error) {
    $("task-error").textContent = error.message;
  }
});

function openTask(name) {
  $("task-error").textContent = "";
  $("events").tBodies[0].replaceChildren();
  // Polled until a while after the Task is final: the operator posts its last Event a moment later.
  let afterFinal = 0;
  every(TASK_EVERY_MS, async () => {
    if (afterFinal > 5) return;
    try {
      const task = await api(`/v1/tasks/${encodeURIComponent(name)}`);
      renderTask(task);
      await refreshEvents(name);
      if (FINAL.has(task.phase)) afterFinal += 1;
    } catch (error) {
      $("task-error").textContent = error.message;
    }
  });
  followLog(name);
}

// --- routes: #/ (list), #/new, #/task/<name> -------------------------------------------------------

function route() {
  stopWork();
  if (!session.token) { show("sign-in"); return; }
  $("namespace").value = session.namespace;
  const hash = location.hash || "#/";
  if (hash === "#/new") { show("new-view"); loadAgents(); return; }
  const match = hash.match(/^#\/task\/(.+)$/);
  if (match) { show("task-view"); openTask(decodeURIComponent(match[1])); return; }
  show("tasks-view");
  every(LIST_EVERY_MS, refreshTasks);
}

window.addEventListener("hashchange", route);
route();
