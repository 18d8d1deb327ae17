// The qscale page. Every text that comes from the server or the URL is put into the page as text
// (textContent / createElement), never parsed as HTML: a format name, an error or a warning that contains
// markup shows as that markup, it does not run. The Content-Security-Policy (script-src 'self') is the
// second line of defence: no inline script or event handler would run even if some markup got in.
'use strict';
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function show(...nodes) { $('out').replaceChildren(...nodes); }

function errorLines(detail) {
  if (typeof detail === 'string') return [detail];
  if (Array.isArray(detail)) {  // a 422: [{loc, msg, type}, ...]
    return detail.map((d) => (d && d.msg !== undefined)
      ? `${(d.loc || []).filter((x) => x !== 'body').join('.')}: ${d.msg}` : JSON.stringify(d));
  }
  return [JSON.stringify(detail)];
}

function errorBox(lines) {
  const p = el('p', { class: 'err' });
  lines.forEach((line, i) => { if (i) p.append(document.createElement('br')); p.append(String(line)); });
  return p;
}

function fmt(x) {
  if (x === null || x === undefined) return '';
  return typeof x === 'number' ? x.toPrecision(4) : String(x);
}

async function loadLaws() {
  let laws = [];
  try { laws = await (await fetch('/api/laws')).json(); } catch (e) { show(errorBox([`laws: ${e.message}`])); }
  for (const m of Array.isArray(laws) ? laws : []) {
    const t = m.target || {};
    const o = el('option', { value: String(m.name) }, String(m.name));
    o.dataset.info = `${m.kind} law, ${m.estimator}: predicts ${t.name || t} (${t.unit || ''})` +
      (m.kind === 'public' ? ' from inputs, no model needed' : '');
    $('law').append(o);
  }
  try {
    const models = await (await fetch('/api/models')).json();
    for (const m of Array.isArray(models) ? models : []) $('models').append(el('option', { value: String(m.name) }));
  } catch (e) { /* the list is only a convenience */ }
  const info = () => { const o = $('law').selectedOptions[0]; $('lawinfo').textContent = o ? o.dataset.info : ''; };
  $('law').addEventListener('change', info);
  // a prediction can be shared as a link: /?law=...&model=...&formats=...&budget=...&inputs=...&run=1
  const q = new URLSearchParams(location.search);
  for (const k of ['law', 'model', 'formats', 'budget', 'inputs']) if (q.has(k)) $(k).value = q.get(k);
  info();
  if (q.get('run') === '1') $('f').requestSubmit();
}

async function submit(ev) {
  ev.preventDefault();
  show(el('p', { class: 'muted' }, 'computing features and predicting...'));
  const body = { law: $('law').value };
  if ($('model').value) body.model = $('model').value;
  const fs = $('formats').value.trim();
  // sent as typed: the server splits on commas outside brackets, so lut[-1,0,1]-g32 stays one format
  if (fs) body.formats = fs;
  if ($('budget').value) body.budget = parseFloat($('budget').value);
  if ($('inputs').value) {
    try { body.inputs = JSON.parse($('inputs').value); } catch (e) { show(errorBox([`inputs: not JSON (${e.message})`])); return; }
  }
  let r; let j;
  try {
    r = await fetch('/api/predict', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    j = await r.json();
  } catch (e) { show(errorBox([`request failed: ${e.message}`])); return; }
  if (!r.ok) {
    const lines = errorLines(j && j.detail);
    if (r.headers.get('retry-after')) lines.push(`(retry after ${r.headers.get('retry-after')} s)`);
    show(errorBox(lines)); return;
  }
  const res = j.result || {};
  const rows = res.predictions || [res];
  const pick = res.recommended && (res.recommended.format || res.recommended);
  const table = el('table', {}, el('tr', {}, ...['format', 'bits/elem', 'predicted', 'interval', 'unit'].map((h) => el('th', {}, h))));
  for (const p of rows) {
    table.append(el('tr', { class: p.format === pick ? 'pick' : '' },
      el('td', {}, fmt(p.format)), el('td', {}, fmt(p.bits_per_element)), el('td', {}, fmt(p.value)),
      el('td', {}, `${fmt(p.lo)} .. ${fmt(p.hi)}`), el('td', {}, fmt(p.unit))));
  }
  const out = [table];
  if (pick) out.push(el('p', {}, 'Cheapest format within the budget: ', el('b', {}, String(pick))));
  const warns = [...new Set(rows.flatMap((p) => p.warnings || []))];
  if (warns.length) out.push(errorBox(warns));
  if (res.skipped && res.skipped.length) out.push(errorBox(res.skipped.map((s) => `skipped ${s.format}: ${s.reason}`)));
  show(...out);
}

$('f').addEventListener('submit', submit);
loadLaws();
