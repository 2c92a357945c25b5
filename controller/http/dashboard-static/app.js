// The Dockyard dashboard: lists from the JSON API, kept live by /v1/events.
// No framework, no build step; every value is written with textContent. Events only
// change the records held; one render per animation frame (at most every RENDER_MS)
// redraws what changed, and the tables draw only the rows in view (vtable.js).
"use strict";

(() => {
  const RENDER_MS = 100;
  const MAX_EVENTS = 50;
  const KINDS = ["node", "service", "task"];
  const TYPES = ["created", "updated", "removed"];
  const STATES = ["NEW", "PENDING", "ASSIGNED", "ACCEPTED", "PREPARING", "STARTING", "RUNNING",
    "COMPLETE", "SHUTDOWN", "FAILED", "REJECTED", "ORPHANED"];
  // Task states up to RUNNING: what `dockyard ps` shows without --all.
  const CURRENT = new Set(STATES.slice(0, 7));
  // States in which a task holds its reservation on its node.
  const HOLDING = new Set(["ASSIGNED", "ACCEPTED", "PREPARING", "STARTING", "RUNNING"]);

  const held = { node: new Map(), task: new Map(), service: new Map() };
  let summaries = new Map(); // service id -> {running, desired} as the controller counted
  let recent = [];
  let loading = null; // events that arrive while the lists load, replayed after them
  let source = null;
  // What the page measured (read by the browser tests; shown nowhere).
  const stats = window.dockyardStats = { firstRenderMs: null, renders: 0, updates: [] };
  let pending = []; // arrival times of the events the next render shows

  const $ = (id) => document.getElementById(id);
  const version = (record) => Number((record && record.meta && record.meta.version) || 0);
  const short = (id) => (id || "").slice(0, 12);
  const when = (ts) => (ts ? new Date(ts).toLocaleString() : "");
  const gib = (bytes) => (Number(bytes) / 2 ** 30).toFixed(1);
  const cpus = (nano) => (Number(nano) / 1e9).toFixed(2).replace(/\.?0+$/, "") || "0";

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(`${path}: ${body.error || response.status}`);
    return body;
  }

  // -- state ------------------------------------------------------------------

  function nameOf(event) {
    const record = event.record || {};
    if (event.kind === "task") return record.slot ? `${record.service_name}.${record.slot}`
      : `${record.service_name || ""}.${short(record.node_id)}`;
    return (record.spec && record.spec.name) || short(event.id);
  }

  function detailOf(event) {
    const record = event.record || {};
    if (event.kind === "task" && record.status) {
      const why = record.status.error || record.status.message || "";
      return `${record.status.state}${why ? `: ${why}` : ""}`;
    }
    if (event.kind === "node" && record.status) return record.status.state;
    return "";
  }

  function apply(event) {
    const map = held[event.kind];
    if (!map) return;
    const current = map.get(event.id);
    if (current && version(current) >= event.revision) return; // we hold newer
    if (event.type === "removed") map.delete(event.id);
    else map.set(event.id, event.record);
    if (event.kind === "service") scheduleSummaries();
    recent.unshift({ kind: event.kind, type: event.type, name: nameOf(event),
      detail: detailOf(event), at: new Date() });
    if (recent.length > MAX_EVENTS) recent.length = MAX_EVENTS;
    dirty.add(event.kind).add("events");
    scheduleRender();
  }

  function onEvent(message) {
    const event = JSON.parse(message.data);
    pending.push(performance.now());
    if (loading) loading.push(event);
    else apply(event);
  }

  async function reload() {
    loading = [];
    try {
      const [info, nodes, tasks, services] = await Promise.all([
        getJSON("/v1/info"), getJSON("/v1/nodes"), getJSON("/v1/tasks"),
        getJSON("/v1/services")]);
      held.node = new Map(nodes.map((n) => [n.id, n]));
      held.task = new Map(tasks.map((t) => [t.id, t]));
      held.service = new Map(services.map((s) => [s.service.id, s.service]));
      summaries = new Map(services.map((s) => [s.service.id, s]));
      const leader = info.is_leader ? "leader" : `follower of ${info.leader_address}`;
      $("cluster").textContent =
        `cluster ${info.cluster_id.slice(0, 12)} · controller ${info.controller_id.slice(0, 12)}` +
        ` (${leader}) · ${info.version.version}`;
      const events = loading;
      loading = null;
      events.forEach(apply);
      status("");
    } catch (error) {
      loading = null;
      status(String(error));
    }
    KINDS.forEach((k) => dirty.add(k));
    render();
  }

  // The controller's own count of a service's replicas, read again at most once a
  // second after service changes (the page counts running tasks itself meanwhile).
  let summariesTimer = null;
  function scheduleSummaries() {
    if (summariesTimer || loading) return;
    summariesTimer = setTimeout(async () => {
      summariesTimer = null;
      try {
        const services = await getJSON("/v1/services");
        summaries = new Map(services.map((s) => [s.service.id, s]));
        dirty.add("service");
        scheduleRender();
      } catch (error) {
        status(String(error));
      }
    }, 1000);
  }

  // -- rendering ----------------------------------------------------------------

  const dirty = new Set();
  let renderTimer = null;
  let lastRender = 0;
  function scheduleRender() {
    if (renderTimer) return;
    const wait = Math.max(0, RENDER_MS - (performance.now() - lastRender));
    renderTimer = setTimeout(() => requestAnimationFrame(() => { renderTimer = null; render(); }),
      wait);
  }

  // One pass over the tasks: per node reservations and counts, per service running
  // and desired-running counts, per state counts.
  function tally(tasks) {
    const nodes = new Map();
    const services = new Map();
    const states = new Map();
    for (const t of tasks) {
      const state = t.status.state;
      states.set(state, (states.get(state) || 0) + 1);
      const service = services.get(t.service_id) || { running: 0, wanted: 0 };
      if (t.desired_state === "RUNNING") service.wanted += 1;
      if (state === "RUNNING" && t.desired_state === "RUNNING") service.running += 1;
      services.set(t.service_id, service);
      if (!t.node_id || !HOLDING.has(state)) continue;
      const node = nodes.get(t.node_id) || { cpus: 0, memory: 0, tasks: 0 };
      const reserved = (t.spec && t.spec.resources && t.spec.resources.reservations) || {};
      node.cpus += Number(reserved.nano_cpus || 0);
      node.memory += Number(reserved.memory_bytes || 0);
      node.tasks += 1;
      nodes.set(t.node_id, node);
    }
    return { nodes, services, states };
  }

  function replicas(service, counted) {
    const spec = service.spec;
    const summary = summaries.get(service.id);
    const running = counted ? counted.running : 0;
    if (spec.replicated) return [running, Number(spec.replicated.replicas || 0)];
    if (spec.global) return [running, counted ? counted.wanted : 0];
    return summary ? [Number(summary.running), Number(summary.desired)] : [running, 0];
  }

  function nodeCells(n, t) {
    const res = (n.description && n.description.resources) || {};
    const used = t.nodes.get(n.id) || { cpus: 0, memory: 0, tasks: 0 };
    const labels = Object.entries(n.spec.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    return [[n.spec.name], [short(n.id), "mono"], [n.status.state, `s-${n.status.state}`],
      [n.spec.availability, `s-${n.spec.availability}`],
      [`${cpus(used.cpus)} / ${cpus(res.nano_cpus || 0)}`],
      [`${gib(used.memory)} / ${gib(res.memory_bytes || 0)} GiB`], [used.tasks],
      [labels, "", labels], [when(n.status.last_heartbeat)]];
  }

  function serviceCells(s, t) {
    const spec = s.spec;
    const mode = spec.replicated ? "replicated" : spec.global ? "global" : "job";
    const [running, desired] = replicas(s, t.services.get(s.id));
    const update = s.update_status || {};
    const state = update.state && update.state !== "STATE_UNSPECIFIED" ? update.state : "";
    const cause = state && update.message ? `${state}: ${update.message}` : state;
    return [[spec.name], [short(s.id), "mono"], [mode],
      [`${running}/${desired}`, running < desired ? "s-PENDING" : ""],
      [spec.task.container.image, "mono", spec.task.container.image],
      [cause, `s-${state}`, cause]];
  }

  function taskCells(task, names) {
    const why = task.status.error || task.status.message || "";
    return [[short(task.id), "mono"],
      [task.slot ? `${task.service_name}.${task.slot}` : task.service_name],
      [names.get(task.node_id) || short(task.node_id)], [task.desired_state],
      [task.status.state, `s-${task.status.state}`], [when(task.status.timestamp)],
      [why, task.status.error ? "s-FAILED" : "", why]];
  }

  let tables = null;
  let tallied = tally([]);
  function makeTables() {
    const names = () => new Map([...held.node.values()].map((n) => [n.id, n.spec.name]));
    let nodeNames = new Map();
    return {
      node: new VirtualTable($("nodes-scroll"), $("nodes"), (n) => nodeCells(n, tallied),
        (n) => n.spec.name),
      service: new VirtualTable($("services-scroll"), $("services"),
        (s) => serviceCells(s, tallied), (s) => s.spec.name),
      task: new VirtualTable($("tasks-scroll"), $("tasks"), (t) => taskCells(t, nodeNames),
        (t) => t.id),
      names: () => { nodeNames = names(); return nodeNames; },
    };
  }

  function render() {
    const started = performance.now();
    if (!tables) tables = makeTables();
    const changed = new Set(dirty);
    dirty.clear();
    const current = [...held.task.values()].filter((t) => CURRENT.has(t.desired_state));
    if (changed.has("task") || changed.has("node") || changed.has("service")) {
      tallied = tally(current);
      renderChart(current.length);
    }
    if (changed.has("node") || changed.has("task")) {
      const nodes = [...held.node.values()].sort((a, b) => a.spec.name.localeCompare(b.spec.name));
      $("nodes-count").textContent = `${nodes.length}`;
      tables.node.setItems(nodes);
    }
    if (changed.has("service") || changed.has("task")) {
      const services = [...held.service.values()]
        .sort((a, b) => a.spec.name.localeCompare(b.spec.name));
      $("services-count").textContent = `${services.length}`;
      tables.service.setItems(services);
    }
    if (changed.has("task") || changed.has("node") || changed.has("filter")) {
      const names = tables.names();
      const filter = $("task-filter").value.trim().toLowerCase();
      const tasks = current
        .filter((t) => !filter || [t.service_name, names.get(t.node_id) || "", t.status.state]
          .some((v) => v.toLowerCase().includes(filter)))
        .sort((a, b) => a.service_name.localeCompare(b.service_name) || a.slot - b.slot ||
          a.node_id.localeCompare(b.node_id));
      $("tasks-count").textContent = filter ? `${tasks.length} of ${current.length}`
        : `${tasks.length}`;
      tables.task.setItems(tasks);
    }
    if (changed.has("events")) renderEvents();
    const done = performance.now();
    lastRender = done;
    stats.renders += 1;
    if (stats.firstRenderMs === null && held.node.size + held.task.size > 0) {
      stats.firstRenderMs = done;
    }
    for (const arrived of pending) stats.updates.push(done - arrived);
    if (stats.updates.length > 10000) stats.updates.splice(0, stats.updates.length - 10000);
    pending = [];
    stats.lastRenderMs = done - started;
  }

  function renderChart(total) {
    const counts = new Map(STATES.map((s) => [s, 0]));
    for (const [state, n] of tallied.states) counts.set(state, (counts.get(state) || 0) + n);
    const fragment = document.createDocumentFragment();
    const most = Math.max(1, ...counts.values());
    for (const [state, n] of counts) {
      if (!n) continue;
      const row = document.createElement("div");
      row.className = "bar-row";
      row.setAttribute("role", "listitem");
      row.dataset.state = state;
      const label = document.createElement("span");
      label.className = `bar-label s-${state}`;
      label.textContent = state;
      const bar = document.createElement("span");
      bar.className = `bar b-${state}`;
      bar.style.width = `${Math.max(1, Math.round((100 * n) / most))}%`;
      const count = document.createElement("span");
      count.className = "bar-count";
      count.textContent = String(n);
      row.append(label, bar, count);
      fragment.appendChild(row);
    }
    $("chart").replaceChildren(fragment);
    $("chart-total").textContent = `${total}`;
  }

  function renderEvents() {
    const fragment = document.createDocumentFragment();
    for (const e of recent) {
      const li = document.createElement("li");
      const time = document.createElement("span");
      time.className = "muted mono";
      time.textContent = e.at.toLocaleTimeString();
      const what = document.createElement("span");
      what.textContent = ` ${e.kind} ${e.type} ${e.name}${e.detail ? ` ${e.detail}` : ""}`;
      li.append(time, what);
      fragment.appendChild(li);
    }
    $("events").replaceChildren(fragment);
  }

  function status(text) {
    $("status").textContent = text;
  }

  function live(on) {
    const badge = $("live");
    badge.textContent = on ? "live" : "reconnecting…";
    badge.className = on ? "badge live" : "badge down";
  }

  // -- the event stream -----------------------------------------------------------

  function connect() {
    source = new EventSource("/v1/events");
    // "ready" comes first on every (re)connection: load the lists, then apply events.
    source.addEventListener("ready", () => { live(true); reload(); });
    for (const kind of KINDS) {
      for (const type of TYPES) source.addEventListener(`${kind}.${type}`, onEvent);
    }
    source.addEventListener("reset", () => { // history gone: start over from now
      source.close();
      setTimeout(connect, 1000);
    });
    source.onerror = () => { // the browser reconnects by itself, with Last-Event-ID ...
      live(false);
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000); // ... not after a 503
    };
  }

  $("task-filter").addEventListener("input", () => { dirty.add("filter"); scheduleRender(); });
  connect();
})();
