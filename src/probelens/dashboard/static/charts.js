// A small SVG line chart: one scalar over steps, alert periods shaded, the current step marked, click to pick a step.

const SVG = 'http://www.w3.org/2000/svg';

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function niceRange(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo >= 0 && hi <= 1) return [0, 1]; // rates and accuracies: the full scale, so two runs compare by eye
  if (lo === hi) {
    lo -= 0.5;
    hi += 0.5;
  }
  const pad = (hi - lo) * 0.08;
  return [lo - pad, hi + pad];
}

/**
 * Draws `series` ([{name, points: [[step, value], ...], dashed}]) into a new SVG element.
 * `alerts`: [[from, to], ...] step ranges to shade (`bandTitle`: what a shaded range means, its tooltip);
 * `current`: the step to mark; `onPick(step)`: called with the clicked step (the x position turned back into a step).
 * Each point's dot carries its step and value as logged (`data-step`, `data-value`; `null` values are left out).
 */
export function lineChart({
  title,
  series,
  alerts = [],
  bandTitle = 'shortcut alert',
  current = null,
  onPick = null,
  width = 330,
  height = 150,
}) {
  const m = {left: 38, right: 10, top: 20, bottom: 22};
  const svg = el('svg', {width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart'});
  el('text', {x: m.left, y: 13, class: 'chart-title'}, svg).textContent = title;
  // a value that was NaN or infinite is listed as null: left out of the line, never drawn as 0
  series = series.map((s) => ({...s, points: s.points.filter((p) => Number.isFinite(p[1]))}));
  const all = series.flatMap((s) => s.points);
  if (!all.length) return svg;
  const steps = all.map((p) => p[0]);
  let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  if (x0 === x1) {
    x0 -= 1;
    x1 += 1;
  }
  const [y0, y1] = niceRange(all.map((p) => p[1]));
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const x = (s) => m.left + ((s - x0) / (x1 - x0)) * w;
  const y = (v) => m.top + h - ((v - y0) / (y1 - y0)) * h;
  for (const [from, to] of alerts) {
    const left = x(Math.max(from, x0));
    const right = x(Math.min(to, x1));
    el('rect', {x: left, y: m.top, width: Math.max(3, right - left), height: h, class: 'alert-band'}, svg).appendChild(
      el('title'),
    ).textContent = from === to ? `${bandTitle}: step ${from}` : `${bandTitle}: steps ${from} to ${to}`;
  }
  el('line', {x1: m.left, x2: m.left, y1: m.top, y2: m.top + h, class: 'axis'}, svg);
  el('line', {x1: m.left, x2: m.left + w, y1: m.top + h, y2: m.top + h, class: 'axis'}, svg);
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    el('text', {x: m.left - 4, y: y(v) + 3, class: 'tick', 'text-anchor': 'end'}, svg).textContent = v.toFixed(2);
  }
  for (const s of [x0, x1]) {
    el('text', {x: x(s), y: height - 6, class: 'tick', 'text-anchor': 'middle'}, svg).textContent = String(s);
  }
  series.forEach((s, i) => {
    const d = s.points.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    el('path', {d, class: `line line-${i}${s.dashed ? ' dashed' : ''}`}, svg);
    for (const [step, value] of s.points) {
      const dot = el('circle', {cx: x(step), cy: y(value), r: 2.5, class: `dot line-${i}`}, svg);
      dot.dataset.step = String(step);
      dot.dataset.value = String(value);
      el('title', {}, dot).textContent = `${s.name}: ${value.toFixed(3)} at step ${step}`;
    }
  });
  if (current !== null && current >= x0 && current <= x1) {
    el('line', {x1: x(current), x2: x(current), y1: m.top, y2: m.top + h, class: 'current-step'}, svg);
  }
  if (onPick) {
    svg.classList.add('pickable');
    svg.addEventListener('click', (event) => {
      const box = svg.getBoundingClientRect();
      const px = ((event.clientX - box.left) / box.width) * width;
      onPick(x0 + ((px - m.left) / w) * (x1 - x0));
    });
  }
  return svg;
}
