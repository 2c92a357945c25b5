// The Dockyard dashboard: lists from the JSON API, kept live by /v1/events.
// No framework, no build step; every value is written with textContent.
"use strict";

(() => {
  const MAX_TASK_ROWS = 500;
  const KINDS = ["node", "service", "task"];
  const TYPES = ["created", "updated", "removed"];
  // Task states up to RUNNING: what `dockyard ps` shows without --all.
  const CURRENT = new Set(["NEW", "PENDING", "ASSIGNED", "ACCEPTED", "PREPARING", "STARTING",
    "RUNNING"]);

  const held = { node: new Map(), task: new Map() };
  let summaries = [];
  let loading = null; // events that arrive while the lists load, replayed after them
  let source = null;

  const $ = (id) => document.getElementById(id);
  const version = (record) => Number((record && record.meta && record.meta.version) || 0);

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(`${path}: ${body.error || response.status}`);
    return body;
  }

  // -- state ------------------------------------------------------------------

  function apply(event) {
    if (event.kind === "service" || event.kind === "task" || event.kind === "node") {
      scheduleSummaries();
    }
    const map = held[event.kind];
    if (!map) return;
    const current = map.get(event.id);
    if (current && version(current) >= event.revision) return; // we hold newer
    if (event.type === "removed") map.delete(event.id);
    else map.set(event.id, event.record);
    scheduleRender();
  }

  function onEvent(message) {
    const event = JSON.parse(message.data);
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
      summaries = services;
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
    render();
  }

  let summariesTimer = null;
  function scheduleSummaries() {
    if (summariesTimer || loading) return;
    summariesTimer = setTimeout(async () => {
      summariesTimer = null;
      try {
        summaries = await getJSON("/v1/services");
        scheduleRender();
      } catch (error) {
        status(String(error));
      }
    }, 1000);
  }

  // -- rendering ----------------------------------------------------------------

  let renderTimer = null;
  function scheduleRender() {
    if (!renderTimer) renderTimer = setTimeout(() => { renderTimer = null; render(); }, 200);
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (className) td.className = className;
    return td;
  }

  function fill(tableId, rows) {
    const body = $(tableId).tBodies[0];
    const fragment = document.createDocumentFragment();
    for (const cells of rows) {
      const tr = document.createElement("tr");
      cells.forEach((c) => tr.appendChild(c));
      fragment.appendChild(tr);
    }
    body.replaceChildren(fragment);
  }

  const short = (id) => (id || "").slice(0, 12);
  const when = (ts) => (ts ? new Date(ts).toLocaleString() : "");
  const gib = (bytes) => (Number(bytes) / 2 ** 30).toFixed(1) + " GiB";

  function render() {
    const nodes = [...held.node.values()].sort((a, b) => a.spec.name.localeCompare(b.spec.name));
    $("nodes-count").textContent = `${nodes.length}`;
    fill("nodes", nodes.map((n) => {
      const res = (n.description && n.description.resources) || {};
      const labels = Object.entries(n.spec.labels || {}).map(([k, v]) => `${k}=${v}`);
      return [cell(n.spec.name), cell(short(n.id), "mono"),
        cell(n.status.state, `s-${n.status.state}`),
        cell(n.spec.availability, `s-${n.spec.availability}`),
        cell(Number(res.nano_cpus || 0) / 1e9), cell(gib(res.memory_bytes || 0)),
        cell(n.description ? n.description.runtime : ""), cell(labels.join(", "), "wrap"),
        cell(when(n.status.last_heartbeat))];
    }));

    $("services-count").textContent = `${summaries.length}`;
    fill("services", summaries.map((s) => {
      const spec = s.service.spec;
      const mode = spec.replicated ? "replicated" : spec.global ? "global" : "job";
      const update = (s.service.update_status && s.service.update_status.state) || "";
      const shown = update === "STATE_UNSPECIFIED" ? "" : update;
      return [cell(spec.name), cell(short(s.service.id), "mono"), cell(mode),
        cell(`${s.running}/${s.desired}`, Number(s.running) < Number(s.desired) ? "s-PENDING" : ""),
        cell(spec.task.container.image, "mono"), cell(shown, `s-${shown}`)];
    }));

    const names = new Map([...held.node.values()].map((n) => [n.id, n.spec.name]));
    const filter = $("task-filter").value.trim().toLowerCase();
    const tasks = [...held.task.values()]
      .filter((t) => CURRENT.has(t.desired_state))
      .filter((t) => !filter || [t.service_name, names.get(t.node_id) || "", t.status.state]
        .some((v) => v.toLowerCase().includes(filter)))
      .sort((a, b) => a.service_name.localeCompare(b.service_name) || a.slot - b.slot);
    $("tasks-count").textContent = `${tasks.length}`;
    $("tasks-more").textContent = tasks.length > MAX_TASK_ROWS
      ? `showing the first ${MAX_TASK_ROWS} of ${tasks.length}; filter to narrow` : "";
    fill("tasks", tasks.slice(0, MAX_TASK_ROWS).map((t) => [
      cell(short(t.id), "mono"), cell(t.slot ? `${t.service_name}.${t.slot}` : t.service_name),
      cell(names.get(t.node_id) || short(t.node_id)), cell(t.desired_state),
      cell(t.status.state, `s-${t.status.state}`), cell(when(t.status.timestamp)),
      cell(t.status.error || t.status.message, "wrap")]));
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

  $("task-filter").addEventListener("input", scheduleRender);
  connect();
})();
