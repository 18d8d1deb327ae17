// The qscale page. Every text that comes from the server or the URL is put into the page as text
// (textContent / createElement), never parsed as HTML: a format name, an error or a warning that contains
// markup shows as that markup, it does not run. The Content-Security-Policy (script-src 'self', style-src
// 'self') is the second line of defence: no inline script, event handler or style attribute would apply even if
// some markup got in; the charts are styled by classes from app.css and SVG presentation attributes only.
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
  if (typeof x !== 'number') return String(x);
  if (x === 0) return '0';
  return Math.abs(x) < 1e-3 ? x.toExponential(3) : x.toPrecision(4);  // 1.273e-6, not 0.000001273
}

// a number the user typed, shown as typed (4.5, not 4.500)
const asTyped = (x) => String(+x.toPrecision(6));
const isNum = (x) => typeof x === 'number' && Number.isFinite(x);

// ---- what a prediction is in: the target's name and unit, and the interval's coverage -------------------------

const TARGET_NAMES = { kld: 'KL', dnll: 'dnll', log_ppl_ratio: 'log ppl ratio', delta_ppl: 'delta ppl', top1: 'top-1 change' };
// "nats/token (KL to the float model)" -> "nats/token": the name already says what it is
function unitShort(unit) { const u = String(unit || ''); const i = u.indexOf(' ('); return i > 0 ? u.slice(0, i) : u; }
function damageName(target, unit) {
  const name = TARGET_NAMES[target] || String(target || 'damage');
  const u = unitShort(unit);
  return u ? `${name} (${u})` : name;
}
// alpha 0.1 -> "90%": the interval's coverage, from the alpha the API answered with
const coverage = (alpha) => `${+((1 - (isNum(alpha) ? alpha : 0.1)) * 100).toFixed(1)}%`;

// ---- one chart for both panels: x = bits per weight, y = predicted damage ---------------------------------------

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function linearTicks(a, b, n) {
  const raw = (b - a) / n || 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw * 0.999);
  const out = [];
  for (let t = Math.ceil(a / step - 1e-9) * step; t <= b + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function tickText(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return (a >= 1e-3 && a < 1e4) ? String(+v.toPrecision(6)) : v.toExponential(0).replace('e+', 'e');
}

const DIAMOND = (x, y, r) => `M${x},${y - r} L${x + r},${y} L${x},${y + r} L${x - r},${y} Z`;

// o = {id, title, width, ylabel, points: [{x, y, lo, hi, label, cls, shape, tip, format, labelled}],
//      vline: {x, label} | null, hline: {y, label} | null, legend: [[glyph, text], ...]}
// The y axis is logarithmic when every value is positive and they span a factor of 10 or more.
function chart(o) {
  const W = Math.round(o.width);
  const narrow = W < 480;
  const H = narrow ? 300 : 340;
  const L = 58; const R = 14; const B = 44;
  const g = svg('svg', { class: 'chart', id: o.id, width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': o.title });
  g.append(svg('title', {}, o.title));

  // legend: glyph + text, flowed over as many rows as the width needs
  let lx = 8; let ly = 14;
  const legend = svg('g', { class: 'legend' });
  for (const [glyph, text] of o.legend) {
    const w = 24 + 6.2 * text.length + 12;
    if (lx + w > W - 4 && lx > 8) { lx = 8; ly += 17; }
    const item = svg('g', { class: 'item' });
    const c = `${glyph} glyph`;  // 'glyph': a legend sample, never counted as data
    if (glyph === 'bar') item.append(svg('path', { class: 'interval glyph', d: `M${lx + 8},${ly - 8} V${ly + 4} M${lx + 4},${ly - 8} h8 M${lx + 4},${ly + 4} h8` }));
    else if (glyph === 'budget') item.append(svg('line', { class: c, x1: lx + 8, x2: lx + 8, y1: ly - 9, y2: ly + 5 }));
    else if (glyph === 'ceiling') item.append(svg('line', { class: c, x1: lx, x2: lx + 16, y1: ly - 2, y2: ly - 2 }));
    else if (glyph === 'diamond') item.append(svg('path', { class: 'plan glyph', d: DIAMOND(lx + 8, ly - 2, 6) }));
    else item.append(svg('circle', { class: c, cx: lx + 8, cy: ly - 2, r: 5 }));
    item.append(svg('text', { x: lx + 20, y: ly + 2 }, text));
    legend.append(item);
    lx += w;
  }
  g.append(legend);
  const T = ly + 16;
  const bottom = H - B;

  const pts = o.points.filter((p) => isNum(p.x) && isNum(p.y));
  // x: the points and the budget line, padded so that no marker sits on an edge
  const xs = pts.map((p) => p.x).concat(o.vline ? [o.vline.x] : []);
  let x0 = Math.min(...xs); let x1 = Math.max(...xs);
  const xpad = Math.max(0.4, (x1 - x0) * 0.06);
  x0 -= xpad; x1 += xpad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);

  // y: log when the values span decades, else linear from 0 (or below, for a negative dnll)
  const vals = pts.map((p) => p.y);
  const log = vals.length > 0 && vals.every((v) => v > 0) && Math.max(...vals) / Math.min(...vals) >= 10;
  const ys = pts.flatMap((p) => [p.y, p.lo, p.hi]).concat(o.hline ? [o.hline.y] : []).filter(isNum);
  let y0; let y1; let f; let ticks;
  if (log) {
    const pos = ys.filter((v) => v > 0);
    y0 = Math.floor(Math.log10(Math.min(...pos))); y1 = Math.ceil(Math.log10(Math.max(...pos)));
    if (y1 === y0) y1 += 1;
    f = (v) => (v > 0 ? Math.log10(v) : -Infinity);
    ticks = [];
    for (let e = y0; e <= y1; e += 1) ticks.push(10 ** e);
  } else {
    let lo = Math.min(0, ...ys); let hi = Math.max(...ys);
    if (!(hi > lo)) hi = lo + 1;
    ticks = linearTicks(lo, hi, narrow ? 4 : 5);
    lo = Math.min(lo, ticks[0]); hi = Math.max(hi, ticks[ticks.length - 1]);
    y0 = lo; y1 = hi; f = (v) => v;
  }
  const sy = (v) => {
    const t = (f(v) - y0) / (y1 - y0);
    return bottom - Math.min(1, Math.max(0, Number.isFinite(t) ? t : (t > 0 ? 1 : 0))) * (bottom - T);
  };

  const axes = svg('g', { class: 'axes' });
  for (const t of ticks) {
    axes.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
    axes.append(svg('text', { class: 'tick y', x: L - 5, y: sy(t) + 4 }, tickText(t)));
  }
  const span = x1 - x0;
  const xstep = [0.5, 1, 2, 4, 8].find((s) => span / s <= (narrow ? 6 : 10)) || 16;
  for (let x = Math.ceil(x0 / xstep) * xstep; x <= x1; x += xstep) {
    axes.append(svg('line', { class: 'xtick', x1: sx(x), x2: sx(x), y1: bottom, y2: bottom + 4 }));
    axes.append(svg('text', { class: 'tick x', x: sx(x), y: bottom + 17 }, tickText(x)));
  }
  axes.append(svg('line', { class: 'axis', x1: L, y1: bottom, x2: W - R, y2: bottom }));
  axes.append(svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: bottom }));
  axes.append(svg('text', { class: 'label x', x: (W + L) / 2, y: H - 8 }, 'bits per weight'));
  const ymid = (T + bottom) / 2;
  axes.append(svg('text', { class: 'label y', x: 13, y: ymid, transform: `rotate(-90 13 ${ymid})` },
    `predicted ${o.ylabel}${log ? ', log scale' : ''}`));
  g.append(axes);

  let lineBox = null; let hlineBox = null;
  if (o.hline && isNum(o.hline.y)) {
    const y = sy(o.hline.y);
    g.append(svg('line', { class: 'ceiling', x1: L, x2: W - R, y1: y, y2: y, 'data-y': o.hline.y }));
    g.append(svg('text', { class: 'linelabel', x: W - R - 2, y: y - 4, 'text-anchor': 'end' }, o.hline.label));
    hlineBox = [W - R - 2 - 6.2 * o.hline.label.length, y - 14, W - R, y];
  }
  if (o.vline && isNum(o.vline.x)) {
    const x = sx(o.vline.x);
    const left = x > (L + W - R) / 2;  // the label goes on the side with more room
    g.append(svg('line', { class: 'budget', x1: x, x2: x, y1: T - 4, y2: bottom, 'data-bpw': o.vline.x }));
    const lw = 6.2 * o.vline.label.length;
    g.append(svg('text', { class: 'linelabel', x: left ? x - 4 : x + 4, y: T + 8, 'text-anchor': left ? 'end' : 'start' }, o.vline.label));
    lineBox = left ? [x - 4 - lw, T - 4, x, T + 10] : [x, T - 4, x + 4 + lw, T + 10];
  }

  for (const p of pts) {  // interval bars under the markers
    if (!isNum(p.lo) && !isNum(p.hi)) continue;
    const x = sx(p.x);
    const ya = isNum(p.lo) ? sy(p.lo) : bottom; const yb = isNum(p.hi) ? sy(p.hi) : T;
    let d = `M${x},${ya} V${yb}`;
    if (isNum(p.hi)) d += ` M${x - 4},${yb} h8`;
    if (isNum(p.lo) && (!log || p.lo > 0)) d += ` M${x - 4},${ya} h8`;  // no cap: it runs off the log axis
    const bar = svg('path', { class: p.barCls || 'interval', d });
    if (p.format !== undefined) bar.setAttribute('data-format', String(p.format));
    g.append(bar);
  }
  for (const p of pts) {
    const x = sx(p.x); const y = sy(p.y);
    const m = p.shape === 'diamond'
      ? svg('path', { class: p.cls, d: DIAMOND(x, y, 8) })
      : svg('circle', { class: p.cls, cx: x, cy: y, r: /\bchosen\b/.test(p.cls) ? 7 : 5 });
    if (p.format !== undefined) m.setAttribute('data-format', String(p.format));
    if (p.tip) m.append(svg('title', {}, p.tip));
    g.append(m);
  }
  // labels: beside their marker, on the first side where they overlap no other label, marker or line label
  const boxes = pts.map((p) => [sx(p.x) - 7, sy(p.y) - 7, sx(p.x) + 7, sy(p.y) + 7]);
  for (const b of [lineBox, hlineBox]) if (b) boxes.push(b);
  const hits = (b) => boxes.some((c) => b[0] < c[2] && c[0] < b[2] && b[1] < c[3] && c[1] < b[3]);
  const prio = (p) => (/\b(chosen|plan)\b/.test(p.cls) ? 0 : 1);  // the chosen point and the plan get the best spot
  const order = pts.filter((p) => p.labelled).sort((a, b) => prio(a) - prio(b));
  for (const p of order) {
    const x = sx(p.x); const y = sy(p.y);
    const w = 6.4 * String(p.label).length;
    const spots = [[x + 9, y - 6, 'start'], [x + 9, y + 14, 'start'], [x - 9, y - 6, 'end'], [x - 9, y + 14, 'end'],
      [x + 9, y + 4, 'start'], [x - 9, y + 4, 'end']];
    const boxOf = ([lx_, ly_, a]) => (a === 'start' ? [lx_, ly_ - 10, lx_ + w, ly_ + 2] : [lx_ - w, ly_ - 10, lx_, ly_ + 2]);
    const inside = (b) => b[0] >= 2 && b[2] <= W - 2 && b[1] >= T - 12 && b[3] <= bottom + 2;
    const spot = spots.find((sp) => inside(boxOf(sp)) && !hits(boxOf(sp))) || spots.find((sp) => inside(boxOf(sp))) || spots[0];
    boxes.push(boxOf(spot));
    g.append(svg('text', { class: `pointlabel ${p.cls}`, x: spot[0], y: spot[1], 'text-anchor': spot[2] }, p.label));
  }
  return g;
}

// the chart's width: the box it is drawn into (so a 390 px phone gets a 358 px chart, a desktop up to 760 px)
function widthOf(box) { return Math.max(260, Math.min(760, box.clientWidth || 560)); }

// ---- state: the last prediction and the last plan, so either is redrawn on resize and the plan joins the ranking -

let lastPredict = null;  // {res, body, bpw, ceiling}
let lastPlan = null;     // the /api/plan answer

function numberOf(id) {
  const v = $(id).value.trim();
  if (v === '') return null;
  const x = parseFloat(v);
  return Number.isFinite(x) ? x : null;
}

async function loadLaws() {
  let laws = [];
  try { laws = await (await fetch('/api/laws')).json(); } catch (e) { show(errorBox([`laws: ${e.message}`])); }
  for (const m of Array.isArray(laws) ? laws : []) {
    const t = m.target || {};
    const o = el('option', { value: String(m.name) }, String(m.name));
    o.dataset.info = `${m.kind} law, ${m.estimator}: predicts ${t.name || t} (${t.unit || ''})` +
      (m.kind === 'public' ? ' from inputs, no model needed' : '');
    o.dataset.unit = unitShort(t.unit);
    $('law').append(o);
  }
  try {
    const models = await (await fetch('/api/models')).json();
    for (const m of Array.isArray(models) ? models : []) $('models').append(el('option', { value: String(m.name) }));
  } catch (e) { /* the list is only a convenience */ }
  const info = () => {
    const o = $('law').selectedOptions[0];
    $('lawinfo').textContent = o ? o.dataset.info : '';
    $('budgetunit').textContent = o && o.dataset.unit ? o.dataset.unit : "in the law's unit";
  };
  $('law').addEventListener('change', info);
  // a prediction can be shared as a link: /?law=...&model=...&formats=...&bpw=...&budget=...&inputs=...&run=1
  // (bpw: a bits-per-weight budget; budget: the largest acceptable damage, as in the API)
  // and a plan as /?pmodel=...&pcands=...&pbpw=...&plan=1 (or pkld=... instead of pbpw)
  const q = new URLSearchParams(location.search);
  for (const k of ['law', 'model', 'formats', 'bpw', 'budget', 'inputs']) if (q.has(k)) $(k).value = q.get(k);
  for (const k of ['pmodel', 'pcands', 'pbpw', 'pkld']) if (q.has(k)) $(k).value = q.get(k);
  info();
  if (q.get('run') === '1') $('f').requestSubmit();
  if (q.get('plan') === '1') $('pf').requestSubmit();
}

async function submit(ev) {
  ev.preventDefault();
  show(el('p', { class: 'muted' }, 'computing features and predicting...'));
  lastPredict = null;  // a plan finishing meanwhile must not bring the old ranking back
  const body = { law: $('law').value };
  if ($('model').value) body.model = $('model').value;
  const fs = $('formats').value.trim();
  // sent as typed: the server splits on commas outside brackets, so lut[-1,0,1]-g32 stays one format
  if (fs) body.formats = fs;
  const ceiling = numberOf('budget');
  if (ceiling !== null) body.budget = ceiling;
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
  lastPredict = { res: j.result || {}, body, bpw: numberOf('bpw'), ceiling };
  renderPredict();
}

// The format the budgets pick. Bits only: the least predicted damage at or under the bits (ties: fewer bits).
// Damage only: the API's recommendation (the fewest bits whose upper interval end is within it). Both: that
// recommendation if it is within the bits too (every other format within the damage has more bits).
function choose(rows, res, bpw, ceiling) {
  const bits = (p) => p.bits_per_element;
  const within = (p) => isNum(bits(p)) && bits(p) <= bpw + 1e-9;
  if (ceiling !== null) {
    // a ranking carries the API's recommendation; a single prediction does not: the same rule, here
    const rec = 'recommended' in res ? rows.find((p) => p.format === res.recommended)
      : rows.filter((p) => isNum(p.hi) && p.hi <= ceiling && isNum(bits(p))).sort((a, b) => (bits(a) - bits(b)) || (a.hi - b.hi))[0];
    return rec && (bpw === null || within(rec)) ? rec : null;
  }
  if (bpw === null) return null;
  const ok = rows.filter((p) => within(p) && isNum(p.value));
  ok.sort((a, b) => (a.value - b.value) || (bits(a) - bits(b)));
  return ok[0] || null;
}

function renderPredict() {
  if (!lastPredict) return;
  const { res, body, bpw, ceiling } = lastPredict;
  const rows = res.predictions || [res];
  const first = rows[0] || {};
  const cov = coverage(first.alpha);
  const unit = unitShort(first.unit);
  const name = damageName(first.target, first.unit);
  const chosen = choose(rows, res, bpw, ceiling);
  const label = (p) => (p.format === null || p.format === undefined ? 'prediction' : String(p.format));
  // a warning every format carries is said once; a format's own warnings dash its marker
  const all = rows.length > 1 ? (rows[0].warnings || []).filter((w) => rows.every((p) => (p.warnings || []).includes(w))) : [];
  const warned = new Set(rows.filter((p) => (p.warnings || []).some((w) => !all.includes(w))).map(label));

  const out = [];
  // the choice, in words
  const interval = (p) => `${fmt(p.value)} ${unit}, ${cov} interval ${fmt(p.lo)} .. ${fmt(p.hi)}`;
  if (bpw !== null || ceiling !== null) {
    const within = [];
    if (ceiling !== null) within.push(`the budget of ${asTyped(ceiling)} ${unit} (upper end of the ${cov} interval)`);
    if (bpw !== null) within.push(`${asTyped(bpw)} bits per weight`);
    const lead = ceiling !== null ? `Cheapest format within ${within.join(' and ')}: `
      : `Least predicted damage at or under ${within[0]}: `;
    out.push(chosen
      ? el('p', { id: 'choice' }, lead, el('b', {}, label(chosen)), ` (${fmt(chosen.bits_per_element)} bits per weight, ${interval(chosen)})`)
      : el('p', { id: 'choice' }, `No format here is within ${within.join(' and ')}.`));
  }

  // the plan computed on this page joins the chart when it predicts the same thing for the same model
  let planPoint = null; let planNote = null;
  if (lastPlan && lastPlan.predicted) {
    const pm = lastPlan.model && lastPlan.model.name;
    if (first.target !== 'kld') planNote = `The plan (${pm}) is not drawn: it predicts KL, this law predicts ${first.target}.`;
    else if (body.model !== pm) planNote = `The plan is not drawn: it is for ${pm}, this prediction for ${body.model || 'no model'}.`;
    else {
      const pp = lastPlan.predicted;
      planPoint = { x: lastPlan.bpw, y: pp.value, lo: pp.lo, hi: pp.hi, label: 'plan', cls: 'plan', shape: 'diamond', barCls: 'planbar', labelled: true,
        tip: `mixed-precision plan: ${fmt(lastPlan.bpw)} bits per weight, predicted KL ${fmt(pp.value)} (${fmt(pp.lo)} .. ${fmt(pp.hi)}) nats/token` };
    }
  }

  const drawn = rows.filter((p) => isNum(p.bits_per_element) && isNum(p.value));
  const few = drawn.length <= 8;
  const points = drawn.map((p) => ({
    x: p.bits_per_element, y: p.value, lo: p.lo, hi: p.hi, label: label(p), format: label(p),
    cls: `fmt${p === chosen ? ' chosen' : ''}${warned.has(label(p)) ? ' warned' : ''}`,
    labelled: few || p === chosen,
    tip: `${label(p)}: ${fmt(p.bits_per_element)} bits per weight, predicted ${interval(p)}`,
  }));
  if (planPoint) points.push(planPoint);

  const box = el('div', { class: 'chartbox' });
  const plot = el('div', { class: 'plot' });
  const notes = el('div', { class: 'notes', id: 'notes' });
  box.append(plot, notes);
  out.push(box);

  // the table: the same numbers, exact
  const table = el('table', { id: 'ranking' }, el('tr', {}, ...['format', 'bits/weight', `predicted ${unit}`, `${cov} interval`].map((h) => el('th', {}, h))));
  for (const p of rows) {
    table.append(el('tr', { class: p === chosen ? 'pick' : '' },
      el('td', {}, label(p)), el('td', {}, fmt(p.bits_per_element)), el('td', {}, fmt(p.value)),
      el('td', {}, `${fmt(p.lo)} .. ${fmt(p.hi)}`)));
  }
  out.push(table);
  show(...out);

  if (points.length) {
    const legend = [['fmt', 'predicted'], ['bar', `${cov} interval`]];
    if (bpw !== null) legend.push(['budget', 'budget']);
    if (ceiling !== null) legend.push(['ceiling', 'max damage']);
    if (chosen) legend.push(['fmt chosen', 'chosen']);
    if (planPoint) legend.push(['diamond', 'plan']);
    plot.append(chart({
      id: 'ranking-chart', width: widthOf(plot), ylabel: name, points, legend,
      title: `bits per weight against predicted ${name}, with ${cov} intervals`,
      vline: bpw !== null ? { x: bpw, label: `budget ${asTyped(bpw)} bits/weight` } : null,
      hline: ceiling !== null ? { y: ceiling, label: `max ${asTyped(ceiling)} ${unit}` } : null,
    }));
    plot.append(el('p', { class: 'muted caption' },
      `Bars: the ${cov} interval (alpha ${isNum(first.alpha) ? asTyped(first.alpha) : '?'}). Predicted ${first.target || 'damage'} in ${first.unit || '?'}.` +
      (planPoint ? ' The diamond: the mixed-precision plan computed below (predicted by the profile law).' : '')));
  }

  // warnings and skipped formats, as text, beside the chart (under it on a phone)
  const items = [];
  for (const w of all) items.push(el('li', {}, el('b', {}, 'all formats'), `: ${w}`));
  for (const p of rows) {
    for (const w of p.warnings || []) if (!all.includes(w)) items.push(el('li', { class: 'fmtwarn' }, el('b', {}, label(p)), `: ${w}`));
  }
  for (const s of res.skipped || []) items.push(el('li', { class: 'skipped' }, 'skipped ', el('b', {}, String(s.format)), `: ${s.reason}`));
  for (const p of rows) if (!drawn.includes(p)) items.push(el('li', {}, el('b', {}, label(p)), ': not drawn (no bits per weight or no value)'));
  if (planNote) items.push(el('li', {}, planNote));
  if (items.length) {
    notes.append(el('h3', {}, 'Warnings'));
    if (warned.size) notes.append(el('p', { class: 'muted' }, 'Formats with a warning have a dashed marker.'));
    notes.append(el('ul', {}, ...items));
  } else notes.append(el('p', { class: 'muted' }, 'No warnings: every format is inside the law\u2019s training range.'));
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
  lastPlan = j;
  renderPlan();
  renderPredict();  // the ranking gains the plan's point
}

function renderPlan() {
  const j = lastPlan;
  if (!j) return;
  const p = j.predicted || {};
  const cov = coverage(p.alpha);
  const summary = el('p', { id: 'plansummary' }, `${fmt(j.bpw)} bits/weight, predicted KL ${fmt(p.value)} (${cov} interval ${fmt(p.lo)} .. ${fmt(p.hi)}) nats/token`);
  const used = el('table', {}, el('tr', {}, el('th', {}, 'format'), el('th', {}, 'layers')));
  for (const [k, v] of Object.entries(j.formats_used || {})) used.append(el('tr', {}, el('td', {}, k), el('td', {}, v)));
  const layers = el('table', {}, el('tr', {}, ...['layer', 'format', 'predicted KL'].map((h) => el('th', {}, h))));
  for (const [name, d] of Object.entries(j.detail || {})) layers.append(el('tr', {}, el('td', {}, name), el('td', {}, d.format), el('td', {}, fmt(d.kld))));
  const details = el('details', {}, el('summary', {}, 'which layer got what'), layers);
  const plot = el('div', { class: 'plot' });
  $('pout').replaceChildren(summary, plot, used, details);
  const points = (j.uniform || []).map((u) => ({ x: u.bpw, y: u.value, lo: u.lo, hi: u.hi, label: u.format, cls: 'uniform', labelled: true,
    tip: `${u.format} on every layer: ${fmt(u.bpw)} bits per weight, predicted KL ${fmt(u.value)} nats/token` }));
  points.push({ x: j.bpw, y: p.value, lo: p.lo, hi: p.hi, label: 'plan', cls: 'plan', barCls: 'planbar', labelled: true,
    tip: `the plan: ${fmt(j.bpw)} bits per weight, predicted KL ${fmt(p.value)} nats/token` });
  const target = j.target && j.target.bpw;
  const legend = [['uniform', 'one format everywhere'], ['plan', 'plan'], ['bar', `${cov} interval`]];
  if (isNum(target)) legend.push(['budget', 'target']);
  plot.append(chart({
    id: 'frontier', width: widthOf(plot), ylabel: 'KL (nats/token)', points, legend,
    title: 'bits per weight against predicted KL: every candidate on every layer, and the plan',
    vline: isNum(target) ? { x: target, label: `target ${asTyped(target)} bits/weight` } : null, hline: null,
  }));
}

// a phone turned sideways, a window resized: the charts are drawn again at the new width
let lastWidth = window.innerWidth;
window.addEventListener('resize', () => {
  if (window.innerWidth === lastWidth) return;
  lastWidth = window.innerWidth;
  requestAnimationFrame(() => { renderPredict(); renderPlan(); });
});

$('f').addEventListener('submit', submit);
$('pf').addEventListener('submit', submitPlan);
loadLaws();
