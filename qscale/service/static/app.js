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
  // and a plan as /?pmodel=...&pcands=...&pbpw=...&plan=1 (or pkld=... instead of pbpw)
  const q = new URLSearchParams(location.search);
  for (const k of ['law', 'model', 'formats', 'budget', 'inputs']) if (q.has(k)) $(k).value = q.get(k);
  for (const k of ['pmodel', 'pcands', 'pbpw', 'pkld']) if (q.has(k)) $(k).value = q.get(k);
  info();
  if (q.get('run') === '1') $('f').requestSubmit();
  if (q.get('plan') === '1') $('pf').requestSubmit();
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

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// bits per weight (x) against predicted KL (log y): every uniform candidate, and the plan
function frontierChart(plan) {
  const pts = (plan.uniform || []).map((u) => ({ x: u.bpw, y: u.value, label: u.format, kind: 'uniform' }));
  pts.push({ x: plan.bpw, y: plan.predicted.value, label: 'plan', kind: 'plan' });
  const ok = pts.filter((p) => Number.isFinite(p.x) && p.y > 0);
  const W = 560; const H = 300; const L = 60; const B = 40;
  const xs = ok.map((p) => p.x); const ys = ok.map((p) => Math.log10(p.y));
  const x0 = Math.min(...xs) - 0.3; const x1 = Math.max(...xs) + 0.3;
  const y0 = Math.floor(Math.min(...ys)); const y1 = Math.ceil(Math.max(...ys));
  const sx = (x) => L + (x - x0) / (x1 - x0 || 1) * (W - L - 10);
  const sy = (y) => H - B - (Math.log10(y) - y0) / (y1 - y0 || 1) * (H - B - 10);
  const g = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', id: 'frontier' });
  g.append(svg('title', {}, 'bits per weight against predicted KL'));
  g.append(svg('line', { x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: '#888' }));
  g.append(svg('line', { x1: L, y1: 10, x2: L, y2: H - B, stroke: '#888' }));
  for (let e = y0; e <= y1; e += 1) {
    g.append(svg('text', { x: L - 6, y: sy(10 ** e) + 4, 'text-anchor': 'end', 'font-size': 11 }, `1e${e}`));
  }
  for (let x = Math.ceil(x0); x <= x1; x += 1) {
    g.append(svg('text', { x: sx(x), y: H - B + 16, 'text-anchor': 'middle', 'font-size': 11 }, x));
  }
  g.append(svg('text', { x: (W + L) / 2, y: H - 6, 'text-anchor': 'middle', 'font-size': 12 }, 'bits per weight'));
  g.append(svg('text', { x: 12, y: H / 2, transform: `rotate(-90 12 ${H / 2})`, 'text-anchor': 'middle', 'font-size': 12 }, 'predicted KL (nats/token)'));
  for (const p of ok) {
    const plan_ = p.kind === 'plan';
    g.append(svg('circle', { cx: sx(p.x), cy: sy(p.y), r: plan_ ? 7 : 5, fill: plan_ ? '#c0392b' : 'none', stroke: plan_ ? '#c0392b' : '#e67e22', 'stroke-width': 2, class: p.kind }));
    g.append(svg('text', { x: sx(p.x) + 8, y: sy(p.y) - 6, 'font-size': 11 }, p.label));
  }
  return g;
}

async function submitPlan(ev) {
  ev.preventDefault();
  $('pout').replaceChildren(el('p', { class: 'muted' }, 'profiling (once per model) and planning...'));
  const body = { model: $('pmodel').value, candidates: $('pcands').value };
  if ($('pkld').value) body.max_kld = parseFloat($('pkld').value); else body.target_bpw = parseFloat($('pbpw').value);
  let r; let j;
  try {
    r = await fetch('/api/plan', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    j = await r.json();
  } catch (e) { $('pout').replaceChildren(errorBox([`request failed: ${e.message}`])); return; }
  if (!r.ok) { $('pout').replaceChildren(errorBox(errorLines(j && j.detail))); return; }
  const p = j.predicted || {};
  const summary = el('p', { id: 'plansummary' }, `${fmt(j.bpw)} bits/weight, predicted KL ${fmt(p.value)} (${fmt(p.lo)} .. ${fmt(p.hi)}) nats/token`);
  const used = el('table', {}, el('tr', {}, el('th', {}, 'format'), el('th', {}, 'layers')));
  for (const [k, v] of Object.entries(j.formats_used || {})) used.append(el('tr', {}, el('td', {}, k), el('td', {}, v)));
  const layers = el('table', {}, el('tr', {}, ...['layer', 'format', 'predicted KL'].map((h) => el('th', {}, h))));
  for (const [name, d] of Object.entries(j.detail || {})) layers.append(el('tr', {}, el('td', {}, name), el('td', {}, d.format), el('td', {}, fmt(d.kld))));
  const details = el('details', {}, el('summary', {}, 'which layer got what'), layers);
  $('pout').replaceChildren(summary, frontierChart(j), used, details);
}

$('f').addEventListener('submit', submit);
$('pf').addEventListener('submit', submitPlan);
loadLaws();
