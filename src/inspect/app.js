// The request inspector's page. Everything a visitor sent (paths,
// headers, bodies) goes into the page as text (textContent), never as
// markup. POSTs carry the X-Burrow-Inspector header the server requires.
'use strict';

const state = { after: 0, entries: new Map(), selected: null, detail: null };
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function api(path, options) {
  const response = await fetch(path, Object.assign({ cache: 'no-store' }, options));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || 'HTTP ' + response.status);
  return body;
}

function post(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'X-Burrow-Inspector': '1', 'Content-Type': 'application/json' },
    body: JSON.stringify(body || {}),
  });
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
  return (n / 1024 / 1024).toFixed(1) + ' MiB';
}

function statusText(entry) {
  if (entry.kind === 'websocket_close') return 'closed';
  if (entry.status === null) return 'failed';
  return String(entry.status);
}

// "held 1.8 s for the client's options", as the request log says it.
function heldText(ms) {
  const took = ms < 1000 ? ms + ' ms' : (ms / 1000).toFixed(1) + ' s';
  return 'held ' + took + " for the client's options";
}

function statusClass(entry) {
  if (entry.status === null) return 'failed';
  return 's' + String(entry.status).charAt(0);
}

function setLive(on) {
  const badge = $('live');
  badge.textContent = on ? 'live' : 'reconnecting';
  badge.className = 'badge ' + (on ? 'on' : 'off');
}

function merge(data) {
  for (const entry of data.entries) {
    state.entries.set(entry.id, entry);
    state.after = Math.max(state.after, entry.id);
  }
  const kept = new Set(data.kept);
  for (const id of Array.from(state.entries.keys())) {
    if (!kept.has(id)) state.entries.delete(id);
  }
  $('tunnels').textContent = data.tunnels.length
    ? 'tunnels: ' + data.tunnels.join(', ')
    : 'no HTTP tunnel on this connection';
  render();
}

function matches(entry) {
  const status = $('filter-status').value;
  const path = $('filter-path').value;
  if (status === 'error' && entry.status !== null && !entry.error) return false;
  if (status && status !== 'error' && String(entry.status).charAt(0) !== status) return false;
  return !path || entry.path.includes(path);
}

function row(entry) {
  const tr = el('tr');
  tr.dataset.id = entry.id;
  if (entry.id === state.selected) tr.classList.add('selected');
  tr.append(el('td', 'time', new Date(entry.at_ms).toLocaleTimeString()));
  tr.append(el('td', 'method', entry.method));
  const path = el('td', 'path', entry.path);
  if (entry.kind === 'websocket_open') path.append(el('span', 'tag', 'websocket open'));
  if (entry.kind === 'websocket_close') path.append(el('span', 'tag', 'websocket closed'));
  if (entry.replay_of) path.append(el('span', 'tag replay', 'replay of #' + entry.replay_of));
  if (entry.by_burrow) path.append(el('span', 'tag burrow', 'answered by burrow'));
  if (entry.held_ms > 0) path.append(el('span', 'tag held', heldText(entry.held_ms)));
  tr.append(path);
  tr.append(el('td', 'status ' + statusClass(entry), statusText(entry)));
  tr.append(el('td', 'duration', entry.duration_ms + ' ms'));
  tr.append(el('td', 'in', bytes(entry.request_bytes)));
  tr.append(el('td', 'out', bytes(entry.response_bytes)));
  tr.append(el('td', 'visitor', entry.user ? entry.user + ' · ' + entry.visitor : entry.visitor));
  tr.addEventListener('click', () => select(entry.id));
  return tr;
}

function render() {
  const entries = Array.from(state.entries.values()).filter(matches);
  entries.sort((a, b) => b.id - a.id);
  $('entries').tBodies[0].replaceChildren(...entries.map(row));
  $('empty').hidden = state.entries.size > 0;
}

function headerRows(target, headers, id) {
  const rows = headers.map((header) => {
    const tr = el('tr');
    tr.append(el('td', null, header.name));
    const value = el('td', null, header.value);
    if (header.secret) {
      const reveal = el('button', 'secret', header.value + ' (show)');
      reveal.type = 'button';
      reveal.addEventListener('click', () => revealSecrets(id));
      value.replaceChildren(reveal);
    }
    tr.append(value);
    return tr;
  });
  target.tBodies[0].replaceChildren(...rows);
}

function bodyText(body) {
  if (body.kind === 'empty') return body.size ? '(' + bytes(body.size) + ', not kept)' : '(empty)';
  const note = body.truncated ? '\n… (' + bytes(body.captured) + ' of ' + bytes(body.size) + ' shown)' : '';
  if (body.kind === 'binary') return 'binary, ' + bytes(body.size) + '\n' + body.hex + note;
  return body.text + note;
}

function showDetail(detail) {
  state.detail = detail;
  $('detail').hidden = false;
  $('detail-title').textContent = detail.method + ' ' + detail.path;
  const from = detail.user ? detail.user + ' (' + detail.visitor + ')' : detail.visitor;
  const meta = [detail.tunnel, statusText(detail), detail.duration_ms + ' ms', 'from ' + from];
  if (detail.replay_of) meta.push('replay of #' + detail.replay_of);
  if (detail.error) meta.push(detail.error);
  if (detail.by_burrow) meta.push('answered by burrow: the app never saw it');
  if (detail.held_ms > 0) meta.push(heldText(detail.held_ms));
  $('detail-meta').textContent = meta.join(' · ');
  $('replay').disabled = detail.kind !== 'request';
  $('edit-method').value = detail.method;
  $('edit-path').value = detail.path;
  $('edit-body').value = detail.request.body.kind === 'binary' ? '' : (detail.request.body.text || '');
  headerRows($('req-headers'), detail.request.headers, detail.id);
  headerRows($('resp-headers'), detail.response.headers, detail.id);
  $('req-body').textContent = bodyText(detail.request.body);
  $('resp-body').textContent = bodyText(detail.response.body);
}

async function select(id) {
  state.selected = id;
  render();
  $('replay-error').hidden = true;
  try {
    showDetail(await api('/api/entries/' + id));
  } catch (err) {
    showError(err);
  }
}

async function revealSecrets(id) {
  try {
    showDetail(await api('/api/entries/' + id + '?reveal=1'));
  } catch (err) {
    showError(err);
  }
}

function showError(err) {
  const box = $('replay-error');
  box.textContent = String(err.message || err);
  box.hidden = false;
}

async function replay(edits) {
  if (!state.detail) return;
  $('replay-error').hidden = true;
  try {
    const result = await post('/api/entries/' + state.detail.id + '/replay', edits);
    merge(await api('/api/entries?after=' + state.after));
    if (result.id) await select(result.id);
  } catch (err) {
    showError(err);
  }
}

function editedRequest() {
  return { method: $('edit-method').value, path: $('edit-path').value, body: $('edit-body').value };
}

async function clearAll() {
  try {
    await post('/api/clear');
    state.entries.clear();
    state.selected = null;
    $('detail').hidden = true;
    render();
  } catch (err) {
    showError(err);
  }
}

async function feed() {
  let wait = 0;
  for (;;) {
    try {
      merge(await api('/api/entries?after=' + state.after + '&wait=' + wait));
      setLive(true);
      wait = 1;
    } catch (err) {
      setLive(false);
      await sleep(1000);
    }
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('filter-status').addEventListener('change', render);
  $('filter-path').addEventListener('input', render);
  $('clear').addEventListener('click', clearAll);
  $('replay').addEventListener('click', () => replay({}));
  $('replay-edited').addEventListener('click', () => replay(editedRequest()));
  feed();
});
