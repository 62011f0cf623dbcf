// burrow dashboard: polls the stats listener's JSON endpoints and draws the
// page. Every text from the server (tunnel names, reasons) goes through
// textContent or SVG text nodes, never through HTML parsing.
"use strict";

(function () {
  const POLL_MS = 3000;
  const WINDOW_MS = 3600 * 1000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = { stats: null, tunnels: [], bans: [], history: null, fetchedAt: 0, refreshes: 0 };

  // ---- small helpers ------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  const numberFmt = new Intl.NumberFormat("en-US");
  function num(n) { return numberFmt.format(Math.round(n)); }

  function rate(n) {
    if (n === 0) return "0";
    if (n < 10) return n.toFixed(1).replace(/\.0$/, "");
    return num(n);
  }

  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function duration(secs) {
    secs = Math.max(0, Math.floor(secs));
    const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600);
    const m = Math.floor(secs % 3600 / 60), s = secs % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m > 0) return m + "m " + String(s).padStart(2, "0") + "s";
    return s + "s";
  }

  function clock(ms) {
    return new Date(ms).toISOString().slice(11, 19);
  }

  // ---- fetching -----------------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) {
      // The admin token changed (or the cookie expired): ask for it again.
      window.location.reload();
      throw new Error("the admin token is needed again");
    }
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  async function refresh() {
    try {
      const [stats, tunnels, bans, history] = await Promise.all(
        ["/", "/tunnels", "/bans", "/history"].map(getJson));
      Object.assign(state, { stats, tunnels, bans, history, fetchedAt: Date.now() });
    } catch (err) {
      setStatus(false, "Cannot reach burrow, retrying", " · " + err.message);
      setTimeout(refresh, POLL_MS);
      return;
    }
    try {
      state.refreshes++;
      render();
      setStatus(true, "Live", " · updated " + clock(Date.now()) + " UTC");
    } catch (err) {
      // Unexpected data: say so rather than look live with stale numbers.
      setStatus(false, "Cannot show the data, reload the page", " · " + err.message);
    } finally {
      setTimeout(refresh, POLL_MS);
    }
  }

  function setStatus(live, text, detail) {
    const status = $("status");
    status.className = "status " + (live ? "live" : "down");
    // The detail gives way on narrow screens.
    $("status-text").replaceChildren(text, el("span", "detail", detail));
  }

  // ---- rendering ----------------------------------------------------------

  function render() {
    const series = seriesOf(state.history);
    renderCards(series);
    drawChart($("chart-requests"), series, "requests");
    drawChart($("chart-errors"), series, "errors");
    renderTunnels();
    renderNodes();
    renderUsers();
    renderBans();
    document.body.dataset.refreshes = String(state.refreshes);
  }

  // Buckets within the last hour. `all` holds their counts (for the cards);
  // `points` what the charts draw, as per-minute rates. The bucket in
  // progress is drawn once it covers half an interval (a rate over a few
  // seconds would dip or spike), or when it is all there is.
  function seriesOf(history) {
    if (!history) return { all: [], points: [], now: Date.now(), interval: 10 };
    const interval = history.interval_secs || 10;
    const from = history.now - WINDOW_MS;
    const bucket = (s, secs) => ({
      t: s.end,
      requests: s.requests * 60 / secs,
      errors: s.errors * 60 / secs,
      rawRequests: s.requests,
      rawErrors: s.errors,
    });
    const done = history.samples.filter((s) => s.end > from);
    const current = history.current;
    const elapsed = (current.end - current.start) / 1000;
    const points = done.map((s) => bucket(s, Math.max(1, (s.end - s.start) / 1000)));
    if (elapsed >= interval / 2 || points.length === 0) {
      points.push(bucket(current, Math.max(elapsed, interval / 2)));
    }
    const all = done.concat([current]).map((s) => bucket(s, interval));
    return { all, points, now: history.now, interval };
  }

  function renderCards(series) {
    const s = state.stats;
    const sum = (key) => series.all.reduce((acc, p) => acc + p[key], 0);
    const requests = sum("rawRequests"), errors = sum("rawErrors");
    const lastMinute = series.all
      .filter((p) => p.t > series.now - 60000)
      .reduce((acc, p) => acc + p.rawRequests, 0);

    $("c-tunnels").textContent = num(s.active_tunnels);
    $("c-tunnels-sub").textContent = plural(s.active_names, "name") + " · " + plural(s.unique_ips, "client IP");
    $("c-requests").textContent = num(requests);
    $("c-requests-sub").textContent = num(lastMinute) + " in the last minute";
    $("c-errors").textContent = num(errors);
    $("c-errors").classList.toggle("bad", errors > 0);
    $("c-errors-sub").textContent = requests > 0
      ? (errors * 100 / requests).toFixed(1) + "% of requests"
      : "no requests";
    $("c-flight").textContent = num(s.active_requests);
    $("c-flight-sub").textContent = plural(s.active_websockets, "WebSocket") + " open";
    $("c-blocked").textContent = num(s.blocked_ips);
    $("c-blocked-sub").textContent = plural(s.total_blocked, "block") + " since start";
  }

  function plural(n, word) {
    return num(n) + " " + word + (n === 1 ? "" : "s");
  }

  // A step of 1, 2 or 5 times a power of ten giving about four grid lines.
  function niceScale(max) {
    if (!(max > 0)) return { top: 1, step: 0.5 };
    const rough = max / 4;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
    return { top: Math.ceil(max / step) * step, step };
  }

  function drawChart(box, series, key) {
    const width = Math.max(200, box.clientWidth), height = Math.max(100, box.clientHeight);
    const pad = { left: 44, right: 10, top: 10, bottom: 24 };
    const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
    const max = series.points.reduce((m, p) => Math.max(m, p[key]), 0);
    const scale = niceScale(max);
    const x = (t) => pad.left + plotW * (1 - (series.now - t) / WINDOW_MS);
    const y = (v) => pad.top + plotH * (1 - v / scale.top);

    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, width, height, "aria-hidden": "true" });
    for (let v = 0; v <= scale.top + scale.step / 2; v += scale.step) {
      const gy = Math.round(y(v)) + 0.5;
      root.appendChild(svg("line", { class: v === 0 ? "axis" : "grid", x1: pad.left, x2: width - pad.right, y1: gy, y2: gy }));
      const label = svg("text", { class: "tick", x: pad.left - 8, y: gy + 4, "text-anchor": "end" });
      label.textContent = rate(v);
      root.appendChild(label);
    }
    // Fewer time labels when the chart is too narrow for five.
    for (const minutes of plotW < 420 ? [60, 30, 0] : [60, 45, 30, 15, 0]) {
      const tx = x(series.now - minutes * 60000);
      const anchor = minutes === 60 ? "start" : minutes === 0 ? "end" : "middle";
      const label = svg("text", { class: "tick", x: tx, y: height - 6, "text-anchor": anchor });
      label.textContent = minutes === 0 ? "now" : "−" + minutes + " min";
      root.appendChild(label);
    }

    const pts = series.points.map((p) => [x(p.t), y(p[key])]);
    if (pts.length > 0) {
      // A lone point still shows as a short flat segment.
      if (pts.length === 1) pts.unshift([pts[0][0] - 2, pts[0][1]]);
      const line = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join(" ");
      const base = y(0).toFixed(1);
      const area = line + " L" + pts[pts.length - 1][0].toFixed(1) + " " + base +
        " L" + pts[0][0].toFixed(1) + " " + base + " Z";
      root.appendChild(svg("path", { class: "area", d: area }));
      root.appendChild(svg("path", { class: "line", d: line }));
      // The latest bucket stands out, even while it is the only one.
      const last = pts[pts.length - 1];
      root.appendChild(svg("circle", { class: "last", cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 3.5 }));
    } else {
      const note = svg("text", { class: "nodata", x: pad.left + plotW / 2, y: pad.top + plotH / 2, "text-anchor": "middle" });
      note.textContent = "no data yet";
      root.appendChild(note);
    }

    box.replaceChildren(root);
    box.dataset.total = String(series.points.reduce((acc, p) => acc + (key === "errors" ? p.rawErrors : p.rawRequests), 0));
    box.dataset.max = String(max);
    box.dataset.width = String(width);
    box._chart = { series, key, x, y, pad, width, plotW };
  }

  // Hover: a dashed cursor, a marker and the bucket's value.
  function attachHover(box) {
    box.addEventListener("mousemove", (event) => {
      const chart = box._chart;
      if (!chart || chart.series.points.length === 0) return;
      const rect = box.getBoundingClientRect();
      const mx = event.clientX - rect.left;
      let best = null;
      for (const p of chart.series.points) {
        const d = Math.abs(chart.x(p.t) - mx);
        if (!best || d < best.d) best = { p, d };
      }
      const root = box.querySelector("svg");
      for (const old of root.querySelectorAll(".cursor, .marker")) old.remove();
      const px = chart.x(best.p.t), py = chart.y(best.p[chart.key]);
      root.appendChild(svg("line", { class: "cursor", x1: px, x2: px, y1: chart.pad.top, y2: chart.y(0) }));
      root.appendChild(svg("circle", { class: "marker", cx: px, cy: py, r: 3.5 }));
      let tip = box.querySelector(".tip");
      if (!tip) { tip = el("div", "tip"); box.appendChild(tip); }
      const raw = chart.key === "errors" ? best.p.rawErrors : best.p.rawRequests;
      tip.textContent = clock(best.p.t) + " UTC · " + rate(best.p[chart.key]) + " / min (" + num(raw) + " in bucket)";
      const left = Math.min(Math.max(0, px - tip.offsetWidth / 2), chart.width - tip.offsetWidth);
      tip.style.left = left + "px";
    });
    box.addEventListener("mouseleave", () => {
      const tip = box.querySelector(".tip");
      if (tip) tip.remove();
      for (const old of box.querySelectorAll(".cursor, .marker")) old.remove();
    });
  }

  // /tunnels has one entry per client; the table has one row per name.
  function groupTunnels(list) {
    const byName = new Map();
    for (const t of list) {
      let row = byName.get(t.name);
      if (!row) {
        row = { name: t.name, kind: t.kind, url: t.url, clients: 0, requests: 0, errors: 0,
          bytes_in: 0, bytes_out: 0, open: 0, created: Infinity, nodes: new Set() };
        byName.set(t.name, row);
      }
      row.clients++;
      row.requests += t.requests || 0;
      row.errors += t.errors || 0;
      row.bytes_in += t.bytes_in || 0;
      row.bytes_out += t.bytes_out || 0;
      row.open += t.open_connections || 0;
      row.created = Math.min(row.created, Date.parse(t.created) || Date.now());
      if (t.node) row.nodes.add(t.node);
    }
    return Array.from(byName.values()).sort((a, b) => b.requests - a.requests || a.name.localeCompare(b.name));
  }

  function cell(text, cls) { return el("td", cls, text); }

  function renderTunnels() {
    const rows = groupTunnels(state.tunnels);
    const body = $("tunnels").tBodies[0];
    body.replaceChildren(...rows.map((t) => {
      const tr = el("tr");
      tr.dataset.name = t.name;
      const name = cell(t.name, "name");
      name.title = t.name;
      // Only burrow's own https URLs become links (never another scheme).
      const url = el(/^https:\/\//.test(t.url) ? "a" : "span", "url", t.url);
      if (url.tagName === "A") { url.href = t.url; url.rel = "noreferrer"; url.target = "_blank"; }
      name.appendChild(url);
      const kind = el("td");
      kind.appendChild(el("span", "kind " + t.kind, t.kind));
      tr.append(name, kind,
        cell(num(t.clients), "num"),
        cell(num(t.requests), "num requests"),
        cell(num(t.errors), "num errors" + (t.errors > 0 ? " bad" : "")),
        cell(bytes(t.bytes_in), "num"),
        cell(bytes(t.bytes_out), "num"),
        cell(num(t.open), "num"),
        cell(duration((Date.now() - t.created) / 1000), "num"));
      if (clustered()) tr.append(cell(Array.from(t.nodes).sort().join(", "), "node-col"));
      return tr;
    }));
    for (const th of document.querySelectorAll("#tunnels th.node-col")) th.hidden = !clustered();
    $("tunnels-count").textContent = rows.length ? "(" + rows.length + ")" : "";
    $("tunnels").hidden = rows.length === 0;
    $("tunnels-empty").hidden = rows.length > 0;
  }

  // In a cluster the stats carry the node table.
  function clustered() { return Boolean(state.stats && state.stats.cluster); }

  function renderNodes() {
    const cluster = state.stats && state.stats.cluster;
    $("nodes-panel").hidden = !cluster;
    if (!cluster) return;
    const nodes = cluster.nodes || [];
    $("nodes").tBodies[0].replaceChildren(...nodes.map((n) => {
      const tr = el("tr");
      tr.dataset.node = n.id;
      const name = cell(n.id, "name");
      if (n.id === cluster.node_id) name.appendChild(el("span", "muted", " (this node)"));
      const stateCell = el("td");
      stateCell.appendChild(el("span", "kind " + (n.alive ? "alive" : "dead"), n.alive ? "alive" : "gone"));
      const beat = n.last_heartbeat ? String(n.last_heartbeat).replace("T", " ").replace("Z", "") : "–";
      tr.append(name, cell(n.address, ""), stateCell, cell(num(n.tunnels), "num"), cell(beat, ""));
      return tr;
    }));
    $("nodes-count").textContent = "(" + nodes.length + ")";
    $("nodes-redis").textContent = "· Redis " + cluster.redis;
  }

  // With plans: the accounts that moved the most this period.
  function renderUsers() {
    const users = (state.stats && state.stats.top_users) || null;
    $("users-panel").hidden = users === null;
    if (users === null) return;
    const body = $("users").tBodies[0];
    body.replaceChildren(...users.map((u) => {
      const tr = el("tr");
      const quota = u.transfer ? bytes(u.transfer.limit) + "/" + u.transfer.period : "";
      const resets = u.transfer ? u.transfer.resets_date : (u.requests ? u.requests.resets_date : "");
      tr.append(cell(u.account, "account"), cell(u.plan, ""), cell(bytes(u.transfer_used), "num"),
        cell(quota, "num"), cell(num(u.requests_used), "num"), cell(resets, ""));
      return tr;
    }));
  }

  function renderBans() {
    const body = $("bans").tBodies[0];
    const bans = state.bans.slice().sort((a, b) => a.remaining_secs - b.remaining_secs);
    body.replaceChildren(...bans.map((b) => {
      const tr = el("tr");
      tr.dataset.ip = b.ip;
      const left = cell("", "num left");
      left.dataset.until = String(state.fetchedAt + b.remaining_secs * 1000);
      tr.append(cell(b.ip, "ip"), left, cell(String(b.until).replace("T", " ").replace("Z", ""), ""), cell(b.reason, "reason"));
      return tr;
    }));
    tickBans();
    $("bans-count").textContent = bans.length ? "(" + bans.length + ")" : "";
    $("bans").hidden = bans.length === 0;
    $("bans-empty").hidden = bans.length > 0;
  }

  // Time left counts down between polls.
  function tickBans() {
    for (const td of document.querySelectorAll("#bans td.left")) {
      td.textContent = duration((Number(td.dataset.until) - Date.now()) / 1000);
    }
  }

  function start() {
    attachHover($("chart-requests"));
    attachHover($("chart-errors"));
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (state.stats) render(); }, 100);
    });
    setInterval(tickBans, 1000);
    refresh();
  }

  start();
})();
