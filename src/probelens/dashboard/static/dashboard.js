// The probelens dashboard: matrix, two-steps, probe-image, shortcut and discovery views of one run, or of two runs
// side by side.
//
// Every picture is a logged PNG served as stored; a probe image's cell is cut out of its grid in the browser with the
// box the grid recorded for that probe image (its probe set's fingerprint and index), never by position alone.

import {lineChart} from './charts.js';

const VIEWS = [
  ['matrix', 'Matrix'],
  ['steps', 'Two steps'],
  ['image', 'Probe image'],
  ['shortcut', 'Shortcut'],
  ['discovery', 'Discovery'],
];
const PLAY_MS = 900;
const POLL_MS = 2000; // a run that is still training: its new steps, and new runs, appear without a click
const CELL_W = 150; // a matrix cell's width in CSS pixels (the crop is scaled to it)
const STRIP_W = 96; // a filmstrip frame's width
const HIDDEN_BY_DEFAULT = new Set(['activations']); // one wide row per probe image: shown on request
const TWO_STEP_FILTERS = new Set(['wrong-other', 'between']); // row filters that compare the two steps
// StrategyMonitor's scalars per class (the listing's `discovery[].classes[].scalars`), as the view titles them
const DISCOVERY_CHARTS = {
  clusters: 'clusters (the eigengap\'s choice)',
  eigengap: 'eigengap',
  largest_share: 'largest cluster\'s share of the class',
  two_strategies: 'two strategies? (1: flag raised)',
};
const FLAG_BAND = 'flag "two strategies?" raised';
// what the monitor says once when it starts (probelens.core.discovery.EXPLORATORY_NOTE), shown in the view
const DISCOVERY_CAVEAT =
  'Strategy discovery is exploratory, not a verdict. Per class it clusters the probe images\' predicted-class ' +
  'Grad-CAM maps (SpRAy) or features (SPARE-style) and shows each cluster\'s mean map and prototype: two clusters ' +
  'may be two strategies, one of them a shortcut, or two harmless poses of the object. The "two strategies?" flag is ' +
  'not calibrated: on the project\'s test families it was raised on clean models too. Judge from the pictures, on a ' +
  'probe balanced over what you suspect; docs/discovery.md gives the measured recovery of true spurious groups (none ' +
  'on imbalanced probes). Masks or group labels (ShortcutMonitor) or concept pictures (ConceptMonitor) give a verdict.';
const SCALAR_ORDER = [
  'shortcut/score',
  'shortcut/background_only_accuracy',
  'shortcut/foreground_only_accuracy',
  'shortcut/background_swap_flip_rate',
  'shortcut/mask_attribution',
  'shortcut/probe_accuracy',
  'shortcut/verdict',
];

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error) || `${url}: HTTP ${response.status}`);
  return body;
}

/** "Indexing the logs: 12.0 of 110.3 MB read (11%)..." (`what`: whose files), or a note that reading has begun. */
function progressText(progress, what = 'the logs') {
  const mb = (n) => (n / 1048576).toFixed(1);
  if (!progress || !progress.bytes_total) return 'Reading the logs...';
  const percent = Math.floor((100 * progress.bytes_read) / progress.bytes_total);
  return `Indexing ${what}: ${mb(progress.bytes_read)} of ${mb(progress.bytes_total)} MB read (${percent}%)...`;
}

/** What a run shows before (or without) its listing. */
function emptySummary(run) {
  return {run, steps: [], scalar_steps: [], grids: [], panels: [], pictures: [], scalars: {}, alerts: [], probes: {},
    discovery: [], notices: [], indexed: true};
}

/** A run's logged steps: its pictures', else its scalars'. */
function runSteps(summary) {
  return summary.steps.length ? summary.steps : summary.scalar_steps;
}

/** The epoch a run was in at `step` (Lightning's `epoch` scalar at or before it), null where not logged. */
function epochAt(summary, step) {
  let found = null;
  for (const [s, e] of summary.epochs || []) {
    if (s <= step) found = e;
    else break;
  }
  if (found === null && (summary.epochs || []).length) found = summary.epochs[0][1];
  return found;
}

/** Where `step` lies in its epoch's logged steps: 0 at the epoch's first, 1 at its last. */
function fractionInEpoch(steps, summary, step) {
  const epoch = epochAt(summary, step);
  const same = steps.filter((s) => epochAt(summary, s) === epoch);
  if (same.length < 2) return 1;
  return (step - same[0]) / (same[same.length - 1] - same[0]);
}

/**
 * The step of run `to` that matches `step` of run `from`: at the same relative progress through training
 * (`align` = 'progress'), or in the same epoch at the same place within it ('epoch'; runs without the epoch scalar
 * fall back to progress). Two runs of different lengths then show the same moment of training.
 */
function matchStep(step, from, to, align) {
  const a = runSteps(from);
  const b = runSteps(to);
  if (!b.length || step === null) return step;
  const nearest = (target, candidates) =>
    candidates.reduce((best, s) => (Math.abs(s - target) < Math.abs(best - target) ? s : best), candidates[0]);
  if (align === 'epoch' && (from.epochs || []).length && (to.epochs || []).length) {
    const epoch = epochAt(from, step);
    let same = b.filter((s) => epochAt(to, s) === epoch);
    if (!same.length) {
      // the run beside never logged in that epoch: its steps of the closest epoch
      const closest = nearest(epoch, [...new Set(b.map((s) => epochAt(to, s)))]);
      same = b.filter((s) => epochAt(to, s) === closest);
    }
    const f = fractionInEpoch(a, from, step);
    const lo = same[0];
    const hi = same[same.length - 1];
    return nearest(lo + f * (hi - lo), same);
  }
  if (a.length < 2) return b[b.length - 1];
  const f = (step - a[0]) / (a[a.length - 1] - a[0]);
  return nearest(b[0] + f * (b[b.length - 1] - b[0]), b);
}

function imageURL(run, tag, entry) {
  const q = new URLSearchParams({run, tag, step: String(entry.step), w: String(entry.wall_time)});
  return `./image?${q}`;
}

/** The entry of a tag at `step`, or else the last one before it; null before the first. */
function entryAt(entries, step) {
  let found = null;
  for (const e of entries) {
    if (e.step <= step) found = e;
    else break;
  }
  return found;
}

/** The steps at which a 0/1 flag was raised, as runs of consecutive logged points [[first, last], ...]: a band from
 * the first raised step to the last, never over a step where it was down. */
function raisedRuns(points) {
  const runs = [];
  let open = null;
  for (const [step, value] of points) {
    if (value !== null && value >= 0.5) {
      if (open) open[1] = step;
      else runs.push((open = [step, step]));
    } else {
      open = null;
    }
  }
  return runs;
}

/** A StrategyMonitor's heading: its stage and name where it has them. */
function discoveryTitle(group) {
  const who = group.monitor ? `StrategyMonitor "${group.monitor}"` : 'StrategyMonitor';
  return group.stage ? `${who} (${group.stage})` : who;
}

/** The value a class logged for `key` at exactly `step`: undefined when not logged then, null for NaN. */
function loggedAt(item, key, step) {
  const point = (item.scalars[key] || []).find((p) => p[0] === step);
  return point ? point[1] : undefined;
}

/** Every step at which some class of a run's StrategyMonitors logged a picture or a scalar. */
function discoverySteps(summary) {
  const steps = new Set();
  for (const group of summary.discovery || []) {
    for (const item of group.classes) {
      for (const e of item.entries) steps.add(e.step);
      for (const points of Object.values(item.scalars)) for (const [s] of points) steps.add(s);
    }
  }
  return [...steps].sort((a, b) => a - b);
}

/** Alert periods [[from, to], ...] from the shortcut/verdict scalar (1 while an alert stands). */
function alertPeriods(points) {
  const periods = [];
  let start = null;
  for (let i = 0; i < points.length; i++) {
    const [step, value] = points[i];
    if (value >= 0.5 && start === null) start = step;
    if (value < 0.5 && start !== null) {
      periods.push([start, step]);
      start = null;
    }
  }
  if (start !== null) periods.push([start, points[points.length - 1][0]]);
  return periods;
}

function verdictTag(summary) {
  return Object.keys(summary.scalars).find((t) => t.endsWith('shortcut/verdict')) || null;
}

function probeLabel(summary, fingerprint) {
  const sets = Object.keys(summary.probes);
  if (sets.length < 2) return '';
  const i = sets.indexOf(fingerprint);
  return i >= 0 && i < 26 ? `probe set ${String.fromCharCode(65 + i)}` : `probe set ${fingerprint || 'unrecorded'}`;
}

/**
 * The box of a probe image's map inside its cell, without the caption stamped under it (the caption is shown once
 * per row, as HTML): the map box the grid recorded; else, for a captioned cell taller than wide (a square probe
 * image's tile over its caption band, as the monitors draw it), the cell's top square; else the whole cell.
 */
function mapBox(entry, index) {
  const k = String(index);
  if (entry.maps && entry.maps[k]) return entry.maps[k];
  const box = entry.boxes[k];
  const [x0, y0, x1, y1] = box;
  if (entry.predictions && entry.predictions[k] && y1 - y0 > x1 - x0) return [x0, y0, x1, y0 + (x1 - x0)];
  return box;
}

/** Colour stops of the colormaps probelens' monitors use by default (a scale that records `stops` brings its own). */
const COLORMAPS = {
  jet: ['#00007f', '#0000ff', '#007fff', '#00ffff', '#7fff7f', '#ffff00', '#ff7f00', '#ff0000', '#7f0000'],
  viridis: ['#440154', '#472d7b', '#3b528b', '#2c728e', '#21918c', '#28ae80', '#5ec962', '#addc30', '#fde725'],
  gray: ['#000000', '#ffffff'],
  hot: ['#0b0000', '#ff0000', '#ffff00', '#ffffff'],
  bwr: ['#0000ff', '#ffffff', '#ff0000'],
};

/** An activation grid: its cell is a whole row of channels, drawn full width under its probe image's row. */
function isWide(grid) {
  return grid.method === 'activations' || grid.method.endsWith('/activations');
}

/** A colour bar with the scale mode of a column's maps, from the scale its grid recorded; null when none was. */
function colorBar(entry) {
  const scale = entry && entry.scale;
  if (!scale) return null;
  const stops = scale.stops || COLORMAPS[scale.colormap];
  if (!stops) return null;
  const bar = h('div', {class: 'colorbar', title: scale.colormap || ''});
  bar.style.background = `linear-gradient(to right, ${stops.join(', ')})`;
  const fmt = (v) => (typeof v === 'number' ? Number(v.toPrecision(3)).toString() : '?');
  const text =
    scale.mode === 'fixed'
      ? `fixed scale ${fmt(scale.vmin ?? 0)} to ${fmt(scale.vmax)}`
      : scale.symmetric
        ? 'per image: each map from minus to plus its own largest magnitude'
        : 'per image: each map from its own min to max';
  return h('div', {class: 'scale'}, bar, h('div', {class: 'small scale-mode', text}));
}

/** What a recorded colour scale says about brightness (the colour stops aside). */
function scaleKey(scale) {
  return JSON.stringify([scale.colormap, scale.mode, scale.vmin ?? 0, scale.vmax ?? null, !!scale.symmetric]);
}

/**
 * The colour scales of a column's maps at two steps (`a` and `b`: the entries shown, or null): one bar and whether
 * brightness can be compared across the two when both record the same scale; each step's own bar when they differ;
 * a word when neither recorded one (no guessed bar).
 */
function scalePair(a, b, stepA, stepB) {
  const sa = a && a.scale;
  const sb = b && b.scale;
  if (!sa && !sb) return h('div', {class: 'small scale-mode scale-pair', text: 'colour scale not recorded'});
  if (sa && sb && scaleKey(sa) === scaleKey(sb)) {
    const text =
      sa.mode === 'fixed'
        ? 'the same scale at both steps: brightness can be compared'
        : 'at both steps: compare where a map is bright, not how bright';
    return h('div', {class: 'scale-pair same'}, colorBar(b), h('div', {class: 'small scale-note', text}));
  }
  return h(
    'div',
    {class: 'scale-pair differ'},
    [
      [stepA, a],
      [stepB, b],
    ].map(([s, e]) =>
      h(
        'div',
        {},
        h('div', {class: 'small', text: `step ${s}:`}),
        colorBar(e) || h('div', {class: 'small', text: 'not recorded'}),
      ),
    ),
    h('div', {class: 'small scale-note', text: 'different scales at the two steps: brightness cannot be compared'}),
  );
}

/** A probe image's box cut out of a logged grid, scaled to `width` CSS pixels (`box`: default its whole cell). */
function crop(run, item, entry, index, width, box = null) {
  box = box || entry.boxes[String(index)];
  const [x0, y0, x1, y1] = box;
  const scale = width / (x1 - x0);
  const frame = h('div', {class: 'crop'});
  frame.style.width = `${width}px`;
  frame.style.height = `${Math.round((y1 - y0) * scale)}px`;
  const img = h('img', {src: imageURL(run, item.tag, entry), alt: `${item.tag} #${index} step ${entry.step}`});
  img.style.width = `${Math.round(entry.w * scale)}px`;
  img.style.left = `${-Math.round(x0 * scale)}px`;
  img.style.top = `${-Math.round(y0 * scale)}px`;
  if (scale > 1.01) img.classList.add('pixelated');
  frame.appendChild(img);
  return frame;
}

function caption(entry, index) {
  const p = entry.predictions && entry.predictions[String(index)];
  if (!p) return null;
  const [truth, pred, prob] = p;
  return h(
    'div',
    {class: `cap ${truth === pred ? 'right' : 'wrong'}`},
    h('div', {class: 'label', text: `true: ${truth}`}),
    h('div', {class: 'pred', text: `pred: ${pred} ${prob.toFixed(2)}`}),
  );
}

export class Dashboard {
  constructor(root) {
    this.root = root;
    // stepA: the two-steps view's other step: 'first' (the first logged step), 'before' (the logged step before the
    // slider's) or a step number
    this.state = {
      view: 'matrix',
      runs: [],
      left: null,
      right: null,
      step: null,
      stepA: 'first',
      probes: {},
      playing: false,
    };
    this.summaries = new Map();
    this.hiddenMethods = new Set(HIDDEN_BY_DEFAULT);
    this.timer = null;
  }

  async start() {
    this.root.replaceChildren(h('p', {class: 'message', id: 'progress', text: 'Reading the logs...'}));
    this.errors = new Map(); // run -> why its listing could not be read (shown in that run's panel only)
    await this.waitForRuns();
    this.pollTimer = setInterval(() => this.poll(), POLL_MS);
  }

  /** Poll the run listing until a run can be shown: runs are listed before their pictures are indexed. */
  async waitForRuns() {
    for (;;) {
      let listing;
      try {
        listing = await getJSON('./runs');
      } catch (err) {
        this.fail(`The probelens plugin did not answer: ${err.message}. Is TensorBoard still running?`);
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        continue;
      }
      this.logdir = listing.logdir;
      this.state.runs = this.showable(listing);
      if (this.state.runs.length) {
        this.state.left = this.state.runs[0];
        await this.load();
        return;
      }
      const indexing = listing.indexing || {done: true};
      if (listing.message || indexing.done) this.fail(listing.message || 'No run has probelens data.');
      else this.root.replaceChildren(h('p', {class: 'message', id: 'progress', text: progressText(indexing)}));
      await new Promise((resolve) => setTimeout(resolve, indexing.done ? POLL_MS : 500));
    }
  }

  /** The runs a selector offers: those with probelens data, and those not read yet (they may have some). */
  showable(listing) {
    return listing.runs.filter((r) => r.probelens || r.indexed === false).map((r) => r.run);
  }

  /** Read the run listing and the shown runs again; redraw only when something changed (following the newest step
   * if it was shown). New runs join the selectors; a run that went away says so in its own panel. */
  async poll() {
    if (this.state.playing || this.polling) return;
    this.polling = true;
    try {
      const before = this.fingerprint();
      const atEnd = this.state.step === this.steps()[this.steps().length - 1];
      try {
        const listing = await getJSON('./runs');
        const runs = this.showable(listing);
        for (const r of [this.state.left, this.state.right]) if (r && !runs.includes(r)) runs.push(r);
        runs.sort();
        this.state.runs = runs;
      } catch (err) {
        return; // the next poll tries again
      }
      await Promise.all([this.summary(this.state.left), this.summary(this.state.right)]);
      if (this.fingerprint() === before) return;
      const steps = this.steps();
      if (atEnd || !steps.includes(this.state.step)) this.state.step = steps.length ? steps[steps.length - 1] : null;
      this.draw();
    } finally {
      this.polling = false;
    }
  }

  /** What a redraw depends on besides the user's choices: the runs, and per shown run its steps, notices, error. */
  fingerprint() {
    return JSON.stringify([
      this.state.runs,
      this.shown().map((s) => [
        s.run,
        s.steps,
        s.scalar_steps,
        s.notices,
        s.indexed,
        s.progress,
        s.grids.length,
        (s.discovery || []).map((g) =>
          g.classes.map((c) => [c.class, c.entries.length, Object.values(c.scalars).map((p) => p.length)]),
        ),
      ]),
      [this.state.left, this.state.right].map((r) => (r ? this.errors.get(r) || null : null)),
    ]);
  }

  fail(message) {
    this.root.replaceChildren(h('p', {class: 'message error', role: 'alert', text: message}));
  }

  /** Read a run's listing; a failure (a deleted run, a server gone) is kept for that run's panel, not thrown. */
  async summary(run) {
    if (!run) return null;
    try {
      const summary = await getJSON(`./run?${new URLSearchParams({run})}`);
      this.summaries.set(run, summary);
      this.errors.delete(run);
      return summary;
    } catch (err) {
      this.errors.set(run, err.message);
      return null;
    }
  }

  /** (Re)read the shown runs' listings and draw. */
  async load() {
    await Promise.all([this.summary(this.state.left), this.summary(this.state.right)]);
    const steps = this.steps();
    if (this.state.step === null || !steps.includes(this.state.step)) {
      this.state.step = steps.length ? steps[steps.length - 1] : null;
    }
    this.draw();
  }

  shown() {
    return [this.state.left, this.state.right].filter(Boolean).map((run) => this.summaries.get(run) || emptySummary(run));
  }

  /** The notices of one run's panel: its listing could not be read (deleted?), damaged files, indexing progress. */
  notices(summary) {
    const out = [];
    const error = this.errors.get(summary.run);
    if (error) out.push(h('p', {class: 'notice error', role: 'alert', text: error}));
    for (const text of summary.notices || []) out.push(h('p', {class: 'notice warning', role: 'status', text}));
    if (summary.indexed === false) {
      const text = `${progressText(summary.progress, 'this run')} The steps read so far are shown; the rest follow.`;
      out.push(h('p', {class: 'notice progress', role: 'status', text}));
    }
    return out.length ? h('div', {class: 'notices'}, out) : null;
  }

  /** Every logged step of the shown runs (pictures first; the scalar steps when a run has no picture). */
  steps() {
    const all = new Set();
    const shown = this.aligned() ? this.shown().slice(0, 1) : this.shown();
    for (const s of shown) for (const step of runSteps(s)) all.add(step);
    return [...all].sort((a, b) => a - b);
  }

  /** Whether the run beside is aligned to the first run by epoch or by relative progress (not by raw step). */
  aligned() {
    return !!this.state.right && (this.state.align || 'step') !== 'step';
  }

  /** The step `summary`'s run shows: the slider's step, or for the run beside (aligned) its matching step. */
  stepOf(summary) {
    const first = this.shown()[0];
    if (!this.aligned() || !first || summary.run === first.run) return this.state.step;
    return matchStep(this.state.step, first, summary, this.state.align);
  }

  /** The two-steps view's other step, for the slider's run: null where there is none (no step logged; the step
   * before the first). A chosen step no longer among the logged ones (another run chosen) is the nearest logged. */
  stepA() {
    const steps = this.steps();
    if (!steps.length || this.state.step === null) return null;
    const choice = this.state.stepA;
    if (choice === 'before') {
      const i = steps.indexOf(this.state.step);
      return i > 0 ? steps[i - 1] : null;
    }
    if (typeof choice === 'number') {
      return steps.reduce((best, s) => (Math.abs(s - choice) < Math.abs(best - choice) ? s : best), steps[0]);
    }
    return steps[0];
  }

  /** The two-steps view's other step in `summary`'s run: for the run beside (aligned) its matching step. */
  stepAOf(summary) {
    const a = this.stepA();
    const first = this.shown()[0];
    if (a === null || !this.aligned() || !first || summary.run === first.run) return a;
    return matchStep(a, first, summary, this.state.align);
  }

  setStep(step, summary = null) {
    const first = this.shown()[0];
    if (summary && first && this.aligned() && summary.run !== first.run) {
      step = matchStep(step, summary, first, this.state.align); // a click in the run beside: its step, mapped back
    }
    const steps = this.steps();
    if (!steps.length) return;
    // the nearest logged step (a click on a chart lands between them)
    let best = steps[0];
    for (const s of steps) if (Math.abs(s - step) < Math.abs(best - step)) best = s;
    this.state.step = best;
    this.draw();
  }

  togglePlay() {
    this.state.playing = !this.state.playing;
    clearInterval(this.timer);
    if (this.state.playing) {
      this.timer = setInterval(() => {
        const steps = this.steps();
        const i = steps.indexOf(this.state.step);
        this.state.step = steps[(i + 1) % steps.length];
        this.draw();
      }, PLAY_MS);
    }
    this.draw();
  }

  draw() {
    const focus = document.activeElement && document.activeElement.id;
    this.root.replaceChildren(...[this.toolbar(), this.body(), this.lightbox()].filter(Boolean));
    if (focus) document.getElementById(focus)?.focus();
  }

  toolbar() {
    const runSelect = (id, value, allowNone) =>
      h(
        'select',
        {
          id,
          onchange: (e) => {
            this.state[id === 'run-left' ? 'left' : 'right'] = e.target.value || null;
            this.load();
          },
        },
        allowNone ? h('option', {value: '', text: '(none)', selected: !value}) : null,
        this.state.runs.map((r) => h('option', {value: r, text: r, selected: r === value})),
      );
    const steps = this.steps();
    const index = Math.max(0, steps.indexOf(this.state.step));
    const slider = h('input', {
      id: 'step-slider',
      type: 'range',
      min: 0,
      max: Math.max(0, steps.length - 1),
      step: 1,
      value: index,
      'aria-label': 'step',
      disabled: steps.length < 2,
      oninput: (e) => {
        this.state.step = steps[Number(e.target.value)];
        this.draw();
      },
    });
    return h(
      'header',
      {class: 'toolbar'},
      h(
        'nav',
        {class: 'views'},
        VIEWS.map(([id, label]) =>
          h('button', {
            class: `view-tab${this.state.view === id ? ' active' : ''}`,
            dataset: {view: id},
            text: label,
            onclick: () => {
              this.state.view = id;
              this.draw();
            },
          }),
        ),
      ),
      h('label', {}, 'run ', runSelect('run-left', this.state.left, false)),
      h('label', {}, 'beside it ', runSelect('run-right', this.state.right, true)),
      this.state.right
        ? h(
            'label',
            {title: 'which step of the run beside matches the slider: the same step, epoch or point of training'},
            'align ',
            h(
              'select',
              {
                id: 'align',
                onchange: (e) => {
                  this.state.align = e.target.value;
                  const steps = this.steps();
                  if (!steps.includes(this.state.step)) this.state.step = steps[steps.length - 1] ?? null;
                  this.draw();
                },
              },
              [
                ['step', 'by step'],
                ['epoch', 'by epoch'],
                ['progress', 'by progress'],
              ].map(([value, text]) => h('option', {value, text, selected: value === (this.state.align || 'step')})),
            ),
          )
        : null,
      this.state.view === 'steps' ? this.compareWith(steps) : null,
      this.state.view === 'discovery' ? this.discoveryStep() : null,
      h(
        'span',
        {class: 'stepper'},
        h('button', {id: 'play', text: this.state.playing ? 'pause' : 'play', onclick: () => this.togglePlay()}),
        slider,
        h('output', {id: 'step-value', text: steps.length ? `step ${this.state.step}` : 'no steps'}),
        h('span', {class: 'small', text: ` (${index + 1} of ${steps.length} logged steps)`}),
      ),
      h('button', {id: 'reload', text: 'reload', title: 'ask for the newest listings now', onclick: () => this.poll()}),
    );
  }

  /** The two-steps view's "compare with": the first logged step, the step before the slider's, or any logged step. */
  compareWith(steps) {
    const i = steps.indexOf(this.state.step);
    const resolved = this.stepA();
    const choice = this.state.stepA;
    const value = typeof choice === 'number' ? String(resolved) : choice;
    return h(
      'label',
      {title: 'the step shown beside the slider\'s step in the two-steps view'},
      'compare with ',
      h(
        'select',
        {
          id: 'step-a',
          onchange: (e) => {
            const v = e.target.value;
            this.state.stepA = v === 'first' || v === 'before' ? v : Number(v);
            this.draw();
          },
        },
        [
          ['first', `the first logged step (${steps.length ? steps[0] : 'none'})`],
          ['before', `the step before the slider's (${i > 0 ? steps[i - 1] : 'none'})`],
          ...steps.map((s) => [String(s), `step ${s}`]),
        ].map(([v, text]) => h('option', {value: v, text, selected: v === value})),
      ),
    );
  }

  body() {
    const panels = this.shown().map((s) =>
      h(
        'section',
        {class: 'run-panel', dataset: {run: s.run}},
        h(
          'h2',
          {text: s.run},
          this.aligned() && s !== this.shown()[0]
            ? h('span', {
                class: 'aligned-step small',
                text:
                  this.state.view === 'steps' && this.stepAOf(s) !== null
                    ? ` at steps ${this.stepAOf(s)} and ${this.stepOf(s)} (aligned by ${this.state.align})`
                    : ` at step ${this.stepOf(s)} (aligned by ${this.state.align})`,
              })
            : null,
        ),
        this.notices(s),
        this.state.view === 'matrix'
          ? this.matrix(s)
          : this.state.view === 'steps'
            ? this.twoSteps(s)
            : this.state.view === 'image'
            ? this.probeView(s)
            : this.state.view === 'discovery'
              ? this.discovery(s)
              : this.shortcut(s),
      ),
    );
    return h('main', {class: `runs runs-${panels.length}`}, panels);
  }

  // ------------------------------------------------------------------ matrix
  methodFilter(summary) {
    const methods = [...new Set(summary.grids.map((g) => g.method))];
    if (methods.length < 2) return null;
    return h(
      'div',
      {class: 'filter'},
      'methods: ',
      methods.map((m) =>
        h(
          'label',
          {},
          h('input', {
            type: 'checkbox',
            checked: !this.hiddenMethods.has(m),
            dataset: {method: m},
            onchange: (e) => {
              if (e.target.checked) this.hiddenMethods.delete(m);
              else this.hiddenMethods.add(m);
              this.draw();
            },
          }),
          ` ${m} `,
        ),
      ),
    );
  }

  /** What the grids say about a probe image (a row) at `step` (default: the step the panel shows) and at the logged
   * step before it; only what they recorded for this probe image (its probe set's fingerprint and index). */
  rowFacts(summary, columns, {fingerprint, index}, step = this.stepOf(summary)) {
    const k = String(index);
    for (const c of columns) {
      const i = c.entries.indexOf(entryAt(c.entries, step));
      const now = c.entries[i];
      if (!now || now.probe !== fingerprint || !now.predictions || !now.predictions[k]) continue;
      const prev = i > 0 ? c.entries[i - 1] : null;
      // the step before is this probe image's only where that grid recorded the same probe set
      const before = prev && prev.probe === fingerprint && prev.predictions ? prev.predictions[k] || null : null;
      return {now: now.predictions[k], before};
    }
    return null;
  }

  /** The row filter in the current view: the filters over two steps exist in the two-steps view only. */
  rowFilterIn() {
    const filter = this.rowFilterValue || 'all';
    return this.state.view !== 'steps' && TWO_STEP_FILTERS.has(filter) ? 'all' : filter;
  }

  /** Whether a row passes the row filter (all, misclassified, prediction changed, one class; in the two-steps view
   * also misclassified at the other step, and prediction changed between the two steps). */
  rowShown(summary, columns, row) {
    const filter = this.rowFilterIn();
    if (filter === 'all') return true;
    const facts = this.rowFacts(summary, columns, row);
    if (TWO_STEP_FILTERS.has(filter)) {
      const other = this.stepAOf(summary);
      const then = other === null ? null : this.rowFacts(summary, columns, row, other);
      if (!then) return false;
      if (filter === 'wrong-other') return then.now[0] !== then.now[1];
      return !!facts && then.now[1] !== facts.now[1]; // 'between'
    }
    if (filter.startsWith('class:')) {
      const other = this.state.view === 'steps' ? this.stepAOf(summary) : null;
      const known = facts || (other !== null ? this.rowFacts(summary, columns, row, other) : null);
      return !!known && filter === `class:${known.now[0]}`;
    }
    if (!facts) return false;
    const [truth, pred] = facts.now;
    if (filter === 'wrong') return truth !== pred;
    if (filter === 'changed') return !!facts.before && facts.before[1] !== pred;
    return false;
  }

  rowFilter(summary, columns) {
    const classes = new Set();
    const twoSteps = this.state.view === 'steps';
    const step = this.stepOf(summary);
    const other = twoSteps ? this.stepAOf(summary) : null;
    for (const row of this.rows(summary)) {
      for (const s of other === null ? [step] : [step, other]) {
        const facts = this.rowFacts(summary, columns, row, s);
        if (facts) classes.add(facts.now[0]);
      }
    }
    const options = [
      ['all', 'every probe image'],
      ['wrong', twoSteps ? `misclassified at step ${step}` : 'misclassified'],
      ...(other !== null
        ? [
            ['wrong-other', `misclassified at step ${other}`],
            ['between', `prediction changed between step ${Math.min(step, other)} and step ${Math.max(step, other)}`],
          ]
        : []),
      ['changed', `prediction changed since the step before${twoSteps ? ` ${step}` : ''}`],
      ...[...classes].sort().map((c) => [`class:${c}`, `class ${c}`]),
    ];
    const value = this.rowFilterIn();
    return h(
      'label',
      {class: 'filter'},
      'rows: ',
      h(
        'select',
        {
          id: 'row-filter',
          onchange: (e) => {
            this.rowFilterValue = e.target.value;
            this.draw();
          },
        },
        options.map(([v, text]) => h('option', {value: v, text, selected: v === value})),
      ),
    );
  }

  /** The enlarged cell (a click on a matrix cell; in the two-steps view both steps): the map at up to 4x the cell's
   * width, with its caption; a click closes it. */
  lightbox() {
    const e = this.enlarged;
    if (!e) return null;
    const close = () => {
      this.enlarged = null;
      this.draw();
    };
    const width = Math.max(CELL_W, Math.min(600, Math.floor((window.innerWidth - 80) / e.shots.length) - 24));
    return h(
      'div',
      {class: 'lightbox', role: 'dialog', onclick: close},
      h(
        'div',
        {class: 'shots'},
        e.shots.map((entry) =>
          h(
            'figure',
            {dataset: {step: String(entry.step)}},
            crop(e.run, e.item, entry, e.index, width, mapBox(entry, e.index)),
            h(
              'figcaption',
              {},
              h('code', {text: `${e.item.tag} #${e.index} step ${entry.step}`}),
              caption(entry, e.index),
            ),
          ),
        ),
        h('button', {class: 'link close', text: 'close', onclick: close}),
      ),
    );
  }

  rows(summary) {
    const rows = [];
    for (const [fingerprint, indices] of Object.entries(summary.probes)) {
      for (const index of indices) rows.push({fingerprint, index});
    }
    return rows;
  }

  /**
   * One matrix cell: probe image `index` of probe set `fingerprint` cut out of column `c`'s picture at `step` (or the
   * last one logged before it, marked so), at the box that picture recorded for this probe image; an empty cell
   * where that picture does not show it (not logged yet, or another probe set). `shots` (entry -> the entries a
   * click enlarges) defaults to the cell's own.
   */
  cellAt(summary, c, step, {fingerprint, index}, options = {}) {
    const {side = null, current = false, shots = (entry) => [entry]} = options;
    const cls = [side ? `side-${side}` : '', current ? 'slider-step' : ''].join(' ').trim() || null;
    const entry = entryAt(c.entries, step);
    if (!entry) return h('td', {class: `empty ${cls || ''}`.trim(), text: `not logged by step ${step}`});
    if (entry.probe !== fingerprint || !entry.boxes || !entry.boxes[String(index)]) {
      return h('td', {
        class: `empty ${cls || ''}`.trim(),
        text: '-',
        title: `the picture of step ${entry.step} does not show this probe image (another probe set)`,
      });
    }
    const dataset = {tag: c.tag, step: String(entry.step), probe: fingerprint, index: String(index)};
    if (side) dataset.side = side;
    return h(
      'td',
      {class: cls},
      h(
        'div',
        {
          class: 'cell',
          dataset,
          title: 'click to enlarge',
          onclick: () => {
            this.enlarged = {run: summary.run, item: c, shots: shots(entry), index};
            this.draw();
          },
        },
        crop(summary.run, c, entry, index, CELL_W, mapBox(entry, index)),
        entry.step !== step ? h('div', {class: 'stale', text: `from step ${entry.step}`}) : null,
      ),
    );
  }

  /** The entry of the first column whose picture at `step` recorded probe image `index` of probe set `fingerprint`
   * and its prediction there, or null. */
  predictionAt(columns, step, {fingerprint, index}) {
    for (const c of columns) {
      const entry = entryAt(c.entries, step);
      if (entry && entry.probe === fingerprint && entry.predictions && entry.predictions[String(index)]) return entry;
    }
    return null;
  }

  /** A probe image's activation rows (one per activation grid) at `steps`, full width under its row. */
  wideRow(summary, wide, steps, {fingerprint, index}, colspan) {
    const k = String(index);
    const figures = wide.flatMap((g) =>
      steps.map((step) => {
        const entry = entryAt(g.entries, step);
        if (!entry || entry.probe !== fingerprint || !entry.boxes || !entry.boxes[k]) return null;
        const [x0, , x1] = entry.boxes[k];
        const full = Math.max(CELL_W, colspan * (CELL_W + 8));
        return h(
          'figure',
          {class: 'wide-cell', dataset: {tag: g.tag, step: String(entry.step)}},
          h(
            'figcaption',
            {class: 'small'},
            h('code', {text: `${g.method} ${g.layer}`}),
            steps.length > 1 || entry.step !== step ? ` step ${entry.step}` : '',
          ),
          crop(summary.run, g, entry, index, Math.min(full, Math.max(CELL_W, 2 * (x1 - x0)))),
        );
      }),
    );
    if (!figures.some(Boolean)) return null;
    return h(
      'tr',
      {class: 'wide-row', dataset: {wide: `${fingerprint}:${index}`}},
      h('th', {class: 'rowhead'}),
      h('td', {class: 'wide', colspan: String(Math.max(1, colspan))}, figures),
    );
  }

  /** The row header: the probe image's index (a click follows it over time), its probe set, and `extra`. */
  rowHead(summary, {fingerprint, index}, ...extra) {
    const set = probeLabel(summary, fingerprint);
    return h(
      'th',
      {class: 'rowhead'},
      h('button', {
        class: 'link',
        text: `#${index}`,
        title: 'this image over time',
        onclick: () => {
          this.state.probes[summary.run] = `${fingerprint}:${index}`;
          this.state.view = 'image';
          this.draw();
        },
      }),
      set ? h('div', {class: 'small', text: set}) : null,
      ...extra,
    );
  }

  /** Why a run has no matrix, or null when it has one. */
  noGrid(summary) {
    if (summary.grids.length) return null;
    return h('p', {
      class: 'message',
      text: summary.pictures.length
        ? 'No picture of this run records which box shows which probe image (probelens before 0.2 did not ' +
          'write that layout), so there is no matrix; the pictures are shown whole below. Train again with ' +
          'probelens 0.2 or later for per-image cells.'
        : 'This run has no per-image grid (add GradCAMMonitor, SaliencyMonitor or ActivationMonitor).' +
          ((summary.discovery || []).length ? ' Its strategy discovery is in the Discovery view.' : ''),
    });
  }

  matrix(summary) {
    const step = this.stepOf(summary);
    const shownGrids = summary.grids.filter((g) => !this.hiddenMethods.has(g.method));
    // an activation grid's cell is a whole row of channels: under its probe image's row, full width, not a column
    const columns = shownGrids.filter((g) => !isWide(g));
    const wide = shownGrids.filter(isWide);
    const out = [this.methodFilter(summary)];
    if (!summary.grids.length) {
      out.push(this.noGrid(summary));
    } else if (!columns.length && !wide.length) {
      out.push(h('p', {class: 'message', text: 'Every method is switched off above.'}));
    } else {
      const head = h(
        'tr',
        {},
        h('th', {text: 'probe image'}),
        columns.map((c) =>
          h(
            'th',
            {dataset: {tag: c.tag}},
            h('div', {text: (c.stage ? `${c.stage} ` : '') + c.method}),
            h('code', {text: c.layer}),
            colorBar(entryAt(c.entries, step)),
          ),
        ),
      );
      const rows = this.rows(summary).filter((row) => this.rowShown(summary, columns, row));
      const body = rows.flatMap((row) => {
        // the caption of this row at this step: what the first grid that recorded it says
        const said = this.predictionAt(columns, step, row);
        const main = h(
          'tr',
          {dataset: {probe: `${row.fingerprint}:${row.index}`}},
          this.rowHead(summary, row, said ? caption(said, row.index) : null),
          columns.map((c) => this.cellAt(summary, c, step, row)),
        );
        const wideRow = this.wideRow(summary, wide, [step], row, columns.length);
        return wideRow ? [main, wideRow] : [main];
      });
      out.push(this.rowFilter(summary, columns));
      if (!body.length) out.push(h('p', {class: 'message', text: 'No probe image matches this filter at this step.'}));
      out.push(h('div', {class: 'scroll'}, h('table', {class: 'matrix'}, h('thead', {}, head), h('tbody', {}, body))));
    }
    if (summary.pictures.length) out.push(this.pictures(summary));
    return out;
  }

  // ------------------------------------------------------------------ two steps
  /**
   * The matrix at two steps side by side: per probe image (a row, keyed by its probe set and index) and per
   * (method, layer), the map at the earlier step beside the map at the later one. One step is the slider's, the
   * other the toolbar's "compare with" (the first logged step, the step before the slider's, or a chosen step); with
   * a run beside, aligned, each run shows its matching steps. The column header says whether the two maps share a
   * colour scale, i.e. whether their brightness can be compared.
   */
  twoSteps(summary) {
    const step = this.stepOf(summary);
    const other = this.stepAOf(summary);
    const shownGrids = summary.grids.filter((g) => !this.hiddenMethods.has(g.method));
    const columns = shownGrids.filter((g) => !isWide(g));
    const wide = shownGrids.filter(isWide);
    const out = [this.methodFilter(summary)];
    if (!summary.grids.length) {
      out.push(this.noGrid(summary));
      if (summary.pictures.length) out.push(this.pictures(summary));
      return out;
    }
    if (step === null || step === undefined || !runSteps(summary).length) {
      out.push(h('p', {class: 'message', text: 'No step of this run is indexed yet.'}));
      return out;
    }
    if (other === null) {
      out.push(
        h('p', {
          class: 'message',
          text:
            `Step ${step} is the first logged step: there is no step before it. Move the slider, or choose ` +
            'another step to compare with.',
        }),
      );
      return out;
    }
    if (!columns.length && !wide.length) {
      out.push(h('p', {class: 'message', text: 'Every method is switched off above.'}));
      return out;
    }
    const [early, late] = other <= step ? [other, step] : [step, other];
    const pair = [early, late];
    const sideOf = (s, i) => (i ? 'later' : 'earlier');
    out.push(
      h(
        'p',
        {class: 'small two-steps-intro'},
        early === late
          ? `Both sides show step ${step}: choose another step to compare with.`
          : `Left: step ${early}, right: step ${late}, for every probe image. The slider moves step ${step}` +
              ` (outlined); "compare with" picks step ${other}.`,
      ),
    );
    const head = h(
      'tr',
      {},
      h('th', {text: 'probe image'}),
      columns.map((c) => {
        const [a, b] = pair.map((s) => entryAt(c.entries, s));
        return h(
          'th',
          {colspan: '2', dataset: {tag: c.tag}},
          h('div', {text: (c.stage ? `${c.stage} ` : '') + c.method}),
          h('code', {text: c.layer}),
          scalePair(a, b, early, late),
          h(
            'div',
            {class: 'pair-steps'},
            pair.map((s) => h('span', {class: s === step ? 'slider-step' : null, text: `step ${s}`})),
          ),
        );
      }),
    );
    const rows = this.rows(summary).filter((row) => this.rowShown(summary, columns, row));
    const body = rows.flatMap((row) => {
      const said = pair.map((s) => this.predictionAt(columns, s, row));
      const preds = said.map((entry) => (entry ? entry.predictions[String(row.index)] : null));
      const truth = (preds[0] || preds[1] || [null])[0];
      const changed = preds[0] && preds[1] && preds[0][1] !== preds[1][1];
      const captions = h(
        'div',
        {class: 'cap-steps'},
        truth !== null ? h('div', {class: 'label', text: `true: ${truth}`}) : null,
        pair.map((s, i) => {
          const p = preds[i];
          return h(
            'div',
            {
              class: `cap ${p ? (p[0] === p[1] ? 'right' : 'wrong') : ''} ${i && changed ? 'changed' : ''}`,
              dataset: {step: String(s)},
            },
            h('span', {class: 'small', text: `step ${s}: `}),
            h('span', {
              class: 'pred',
              text: p ? `${i && changed ? '\u25B2 ' : ''}${p[1]} ${p[2].toFixed(2)}` : 'not recorded',
            }),
          );
        }),
      );
      const shots = (c) => () => {
        const entries = pair.map((s) => entryAt(c.entries, s));
        const shows = (e) => e && e.probe === row.fingerprint && e.boxes && e.boxes[String(row.index)];
        return entries.filter((e, i) => shows(e) && entries.indexOf(e) === i);
      };
      const main = h(
        'tr',
        {dataset: {probe: `${row.fingerprint}:${row.index}`}},
        this.rowHead(summary, row, captions),
        columns.flatMap((c) =>
          pair.map((s, i) =>
            this.cellAt(summary, c, s, row, {side: sideOf(s, i), current: s === step, shots: shots(c)}),
          ),
        ),
      );
      const wideRow = this.wideRow(summary, wide, early === late ? [late] : pair, row, 2 * columns.length);
      return wideRow ? [main, wideRow] : [main];
    });
    out.push(this.rowFilter(summary, columns));
    if (!body.length) out.push(h('p', {class: 'message', text: 'No probe image matches this filter.'}));
    out.push(
      h('div', {class: 'scroll'}, h('table', {class: 'matrix two-steps'}, h('thead', {}, head), h('tbody', {}, body))),
    );
    return out;
  }

  pictures(summary) {
    const step = this.stepOf(summary);
    return h(
      'details',
      {class: 'pictures', open: !summary.grids.length},
      h('summary', {text: `Other pictures at step ${step} (${summary.pictures.length})`}),
      summary.pictures.map((p) => {
        const entry = entryAt(p.entries, step);
        return h(
          'figure',
          {},
          h('figcaption', {}, h('code', {text: p.tag}), entry && entry.step !== step ? ` (step ${entry.step})` : ''),
          entry
            ? h('img', {class: 'whole', src: imageURL(summary.run, p.tag, entry), alt: `${p.tag} step ${entry.step}`})
            : h('span', {class: 'small', text: 'not logged yet'}),
        );
      }),
    );
  }

  // ------------------------------------------------------------------ probe image
  probeView(summary) {
    const rows = this.rows(summary);
    if (!rows.length) {
      return h('p', {class: 'message', text: 'This run has no per-image grid, so there is no probe image to follow.'});
    }
    const keys = rows.map((r) => `${r.fingerprint}:${r.index}`);
    // each run follows its own probe image: two runs' probe sets are different images even at the same index
    if (!keys.includes(this.state.probes[summary.run])) this.state.probes[summary.run] = keys[0];
    const [fingerprint, indexText] = this.state.probes[summary.run].split(':');
    const index = Number(indexText);
    const grids = summary.grids.filter(
      (g) => !this.hiddenMethods.has(g.method) && g.entries.some((e) => e.probe === fingerprint && e.boxes[indexText]),
    );
    const has = (e) => e.probe === fingerprint && e.boxes && e.boxes[indexText];
    const steps = [...new Set(grids.flatMap((g) => g.entries.filter(has).map((e) => e.step)))].sort((a, b) => a - b);
    // the prediction per step, from any grid of this probe set that recorded it
    const predictions = new Map();
    for (const g of grids) {
      for (const e of g.entries) {
        const p = e.predictions && e.probe === fingerprint && e.predictions[indexText];
        if (p && !predictions.has(e.step)) predictions.set(e.step, p);
      }
    }
    const vtag = verdictTag(summary);
    const verdict = new Map(vtag ? summary.scalars[vtag] : []);
    const header = h(
      'tr',
      {},
      h('th', {text: 'step'}),
      steps.map((s) => h('th', {class: s === this.stepOf(summary) ? 'current' : null, text: String(s)})),
    );
    const changedPred = new Set();
    const changedVerdict = new Set();
    steps.forEach((s, i) => {
      if (!i) return;
      const a = predictions.get(steps[i - 1]);
      const b = predictions.get(s);
      if (a && b && a[1] !== b[1]) changedPred.add(s);
      if (verdict.has(steps[i - 1]) && verdict.has(s) && verdict.get(steps[i - 1]) !== verdict.get(s))
        changedVerdict.add(s);
    });
    const predRow = h(
      'tr',
      {class: 'predictions'},
      h('th', {text: 'prediction'}),
      steps.map((s) => {
        const p = predictions.get(s);
        return h(
          'td',
          {
            class: [
              changedPred.has(s) ? 'changed' : '',
              p && p[0] !== p[1] ? 'wrong' : 'right',
              s === this.stepOf(summary) ? 'current' : '',
            ].join(' '),
            dataset: {step: String(s)},
          },
          p ? `${changedPred.has(s) ? '\u25B2 ' : ''}${p[1]} ${p[2].toFixed(2)}` : '?',
        );
      }),
    );
    const verdictRow = vtag
      ? h(
          'tr',
          {class: 'verdicts'},
          h('th', {text: 'verdict'}),
          steps.map((s) =>
            h(
              'td',
              {
                class: [
                  changedVerdict.has(s) ? 'changed' : '',
                  verdict.get(s) >= 0.5 ? 'wrong' : '',
                  s === this.stepOf(summary) ? 'current' : '',
                ].join(' '),
              },
              verdict.has(s)
                ? `${changedVerdict.has(s) ? '\u25B2 ' : ''}${verdict.get(s) >= 0.5 ? 'shortcut alert' : 'ok'}`
                : '',
            ),
          ),
        )
      : null;
    const strips = grids.map((g) =>
      h(
        'tr',
        {class: 'strip', dataset: {tag: g.tag}},
        h('th', {}, h('div', {text: g.method}), h('code', {text: g.layer})),
        steps.map((s) => {
          const e = g.entries.find((x) => x.step === s);
          if (!e || e.probe !== fingerprint || !e.boxes[indexText]) return h('td', {class: 'empty', text: '-'});
          return h(
            'td',
            {class: s === this.stepOf(summary) ? 'current' : null, onclick: () => this.setStep(s, summary)},
            h(
              'div',
              {class: 'cell', dataset: {tag: g.tag, step: String(s), probe: fingerprint, index: indexText}},
              crop(summary.run, g, e, index, STRIP_W, mapBox(e, index)),
            ),
          );
        }),
      ),
    );
    const truth = predictions.size ? [...predictions.values()][0][0] : null;
    const notes = [];
    if (changedPred.size) notes.push(`prediction changed at step ${[...changedPred].join(', ')}`);
    if (changedVerdict.size) notes.push(`verdict changed at step ${[...changedVerdict].join(', ')}`);
    if (!predictions.size)
      notes.push('no prediction recorded in these logs (probelens before 0.2); the captions in the pictures say it');
    return [
      this.probePicker(summary, rows),
      this.methodFilter(summary),
      h(
        'p',
        {class: 'probe-title'},
        h('strong', {text: `#${index}`}),
        truth ? ` true label: ${truth}. ` : ' ',
        notes.join('; ') || 'prediction unchanged over the logged steps.',
      ),
      h(
        'div',
        {class: 'scroll'},
        h('table', {class: 'filmstrips'}, h('thead', {}, header), h('tbody', {}, predRow, verdictRow, strips)),
      ),
    ];
  }

  probePicker(summary, rows) {
    return h(
      'label',
      {class: 'filter'},
      'probe image ',
      h(
        'select',
        {
          class: 'probe-picker',
          onchange: (e) => {
            this.state.probes[summary.run] = e.target.value;
            this.draw();
          },
        },
        rows.map(({fingerprint, index}) => {
          const key = `${fingerprint}:${index}`;
          const set = probeLabel(summary, fingerprint);
          return h('option', {
            value: key,
            selected: key === this.state.probes[summary.run],
            text: `#${index}${set ? ` (${set})` : ''}`,
          });
        }),
      ),
    );
  }

  // ------------------------------------------------------------------ shortcut
  shortcut(summary) {
    const tags = Object.keys(summary.scalars);
    if (!tags.length) {
      return h('p', {
        class: 'message',
        text:
          'This run has no shortcut/* scalars: add ShortcutMonitor(probe) with a probe set that has foreground ' +
          "masks to the Trainer's callbacks.",
      });
    }
    const vtag = verdictTag(summary);
    const alerts = vtag ? alertPeriods(summary.scalars[vtag]) : [];
    const bare = (t) => t.replace(/^(validate|test)\//, '');
    const ordered = [
      ...SCALAR_ORDER.flatMap((name) => tags.filter((t) => bare(t) === name)),
      ...tags.filter((t) => !SCALAR_ORDER.includes(bare(t)) && !bare(t).endsWith('_chance')),
    ];
    // per (class, group) accuracies: one chart per class, a line per group; concept scores: one chart per concept,
    // a line per class
    const families = [
      [/^shortcut\/group_accuracy\/([^/]+)\/([^/]+)$/, (m) => [`group accuracy: ${m[1]}`, m[2]]],
      // concept/<concept>/<class>[/<layer>]; concept/<concept>/cav_accuracy[...] stays a chart of its own
      [
        /^concept\/([^/]+)\/(?!cav_accuracy)([^/]+)(?:\/(.+))?$/,
        (m) => [`concept ${m[1]}${m[3] ? ` at ${m[3]}` : ''}`, m[2]],
      ],
    ];
    // A monitor given name= writes <family>/<name>/... (README "Names and stages in tags"); its name is known from
    // the probe accuracy every such monitor logs (<family>/<name>/probe_accuracy), and is taken out before the
    // families are read, so that it is never read as a concept or a class
    const names = new Set(
      tags.map((t) => bare(t).match(/^(shortcut|concept)\/([^/]+)\/probe_accuracy$/)).filter(Boolean)
        .map((m) => `${m[1]}/${m[2]}`),
    );
    const unnamed = (t) => {
      const parts = bare(t).split('/');
      return parts.length > 2 && names.has(`${parts[0]}/${parts[1]}`)
        ? [[parts[0], ...parts.slice(2)].join('/'), parts[1]]
        : [bare(t), ''];
    };
    const grouped = new Map();
    const single = [];
    for (const tag of ordered) {
      const [plain, monitor] = unnamed(tag);
      const family = families.map(([re, name]) => [plain.match(re), name]).find(([m]) => m);
      if (!family) {
        single.push(tag);
        continue;
      }
      const [base, line] = family[1](family[0]);
      const title = monitor ? `${base} (${monitor})` : base;
      const key = `${tag.startsWith(bare(tag)) ? '' : tag.slice(0, tag.length - bare(tag).length)}${title}`;
      if (!grouped.has(key)) grouped.set(key, []);
      grouped.get(key).push({name: line, points: summary.scalars[tag], tag});
    }
    const groupCharts = [...grouped.entries()].map(([title, series]) =>
      h(
        'figure',
        {class: 'chart-box', dataset: {group: title}},
        lineChart({title, series, alerts, current: this.stepOf(summary), onPick: (s) => this.setStep(s, summary)}),
        h(
          'figcaption',
          {class: 'legend small'},
          series.map((s, i) => h('span', {class: `key line-${i}`, text: s.name})),
        ),
      ),
    );
    const charts = single.map((tag) => {
      const series = [{name: bare(tag), points: summary.scalars[tag]}];
      const chance = tags.find((t) => t === `${tag}_chance`);
      if (chance) series.push({name: 'chance', points: summary.scalars[chance], dashed: true});
      return h(
        'figure',
        {class: 'chart-box', dataset: {tag}},
        lineChart({
          title: bare(tag) + (chance ? ' (dashed: chance)' : ''),
          series,
          alerts,
          current: this.stepOf(summary),
          onPick: (s) => this.setStep(s, summary),
        }),
      );
    });
    const alertList = summary.alerts.length
      ? h(
          'ul',
          {class: 'alerts'},
          summary.alerts.map((a) =>
            h(
              'li',
              {},
              h('button', {class: 'link', text: `step ${a.step}`, onclick: () => this.setStep(a.step)}),
              ` ${a.text}`,
            ),
          ),
        )
      : h('p', {class: 'small', text: alerts.length ? '' : 'No shortcut alert in this run.'});
    return [
      h('p', {
        class: 'small',
        text: 'Shaded: steps while a shortcut alert stood. Click a chart to move every view to that step.',
      }),
      h('div', {class: 'charts'}, charts, groupCharts),
      alertList,
      this.counterfactuals(summary),
    ];
  }

  counterfactuals(summary) {
    const step = this.stepOf(summary);
    const panel = summary.panels[0];
    if (!panel)
      return h('p', {class: 'small', text: 'No counterfactual panel (shortcut/counterfactuals) in this run.'});
    const entry = entryAt(panel.entries, step);
    if (!entry) return h('p', {class: 'small', text: `No counterfactual panel logged by step ${step}.`});
    const indices = Object.keys(entry.boxes || {})
      .map(Number)
      .sort((a, b) => a - b);
    return h(
      'section',
      {class: 'counterfactuals'},
      h('h3', {text: `Counterfactuals at step ${entry.step}`}),
      h('p', {
        class: 'small',
        text: 'Per probe image: original, object only, background only, background swapped, with the prediction on each.',
      }),
      h(
        'div',
        {class: 'cf-grid'},
        indices.map((k) =>
          h(
            'div',
            {
              class: 'cell cf',
              dataset: {tag: panel.tag, step: String(entry.step), probe: entry.probe, index: String(k)},
            },
            crop(summary.run, panel, entry, k, 300),
          ),
        ),
      ),
    );
  }
  // ------------------------------------------------------------------ discovery
  /** The toolbar's "discovery step": the steps at which the first run's StrategyMonitor logged, with the classes it
   * flagged there; picking one moves the slider (and every view) to it. */
  discoveryStep() {
    const first = this.shown()[0];
    const steps = first ? discoverySteps(first) : [];
    if (!steps.length) return null;
    const flagged = new Map();
    for (const group of first.discovery) {
      for (const item of group.classes) {
        for (const [s, v] of item.scalars.two_strategies || []) {
          if (v !== null && v >= 0.5) flagged.set(s, [...(flagged.get(s) || []), item.class]);
        }
      }
    }
    const current = this.stepOf(first);
    const options = steps.map((s) => [
      String(s),
      `step ${s}` + (flagged.has(s) ? ` (flag raised: ${[...new Set(flagged.get(s))].join(', ')})` : ''),
    ]);
    if (!steps.includes(current)) options.unshift(['', `step ${current}: no discovery logged`]);
    return h(
      'label',
      {title: 'the steps at which strategy discovery was logged; the flagged classes in brackets'},
      'discovery step ',
      h(
        'select',
        {
          id: 'discovery-step',
          onchange: (e) => {
            if (e.target.value !== '') this.setStep(Number(e.target.value));
          },
        },
        options.map(([v, text]) =>
          h('option', {value: v, text, selected: v === (steps.includes(current) ? String(current) : '')}),
        ),
      ),
    );
  }

  /**
   * StrategyMonitor's clusters per class: the cluster count, the eigengap, the largest cluster's share and the
   * "two strategies?" flag over steps (shaded where the flag was raised), and the class's picture (per cluster its
   * mean map, then its prototype with its map) at the panel's step. Every class that logged anything is shown; a
   * class with nothing at this step says so (and which step its picture is from), never a picture of another step
   * unannounced. The monitor's caveat stands above: exploratory, not a verdict.
   */
  discovery(summary) {
    const groups = summary.discovery || [];
    if (!groups.length) {
      return h('p', {
        class: 'message',
        text:
          'This run has no strategy discovery (discovery/<class>/* scalars or probelens/discovery/<class> pictures): ' +
          "add StrategyMonitor(probe) to the Trainer's callbacks.",
      });
    }
    const step = this.stepOf(summary);
    return [
      h('p', {class: 'caveat', role: 'note', text: DISCOVERY_CAVEAT}),
      h('p', {
        class: 'small',
        text:
          'Shaded: steps at which the class was flagged "two strategies?". Click a chart to move every view to ' +
          'that step.',
      }),
      ...groups.map((group) =>
        h(
          'section',
          {class: 'discovery-group', dataset: {stage: group.stage, monitor: group.monitor}},
          groups.length > 1 || group.monitor || group.stage ? h('h3', {text: discoveryTitle(group)}) : null,
          group.classes.map((item) => this.discoveryClass(summary, group, item, step)),
        ),
      ),
    ];
  }

  /** One class of a StrategyMonitor: what it logged at `step` (or that it logged nothing), its charts, the steps
   * that raised the flag, and its picture. */
  discoveryClass(summary, group, item, step) {
    const keys = Object.keys(item.scalars);
    const flagPoints = item.scalars.two_strategies || [];
    const bands = raisedRuns(flagPoints);
    const raisedAt = flagPoints.filter(([, v]) => v !== null && v >= 0.5).map(([s]) => s);
    const exact = item.entries.find((e) => e.step === step) || null;
    const shown = exact || entryAt(item.entries, step);
    const scalarsHere = keys.filter((k) => loggedAt(item, k, step) !== undefined);

    // what was logged at this step, in words; what is missing is said
    const facts = [];
    const value = (k) => loggedAt(item, k, step);
    if (scalarsHere.length) {
      const parts = [];
      if (value('clusters') !== undefined) parts.push(`${value('clusters') ?? '?'} cluster(s)`);
      if (value('eigengap') !== undefined) {
        parts.push(
          value('eigengap') === null
            ? 'eigengap not computed (NaN: too few probe images of this class to cluster)'
            : `eigengap ${value('eigengap').toFixed(3)}`,
        );
      }
      if (value('largest_share') !== undefined && value('largest_share') !== null) {
        parts.push(`largest cluster ${Math.round(100 * value('largest_share'))}% of the class`);
      }
      if (value('two_strategies') !== undefined && value('two_strategies') !== null) {
        parts.push(value('two_strategies') >= 0.5 ? 'flag "two strategies?" raised' : 'flag not raised');
      }
      for (const k of keys.filter((k) => !(k in DISCOVERY_CHARTS) && value(k) !== undefined)) {
        parts.push(`${k} ${value(k) === null ? 'NaN' : Number(value(k).toPrecision(4))}`);
      }
      facts.push(h('span', {class: 'facts', text: `at step ${step}: ${parts.join(', ')}`}));
    }
    let missing = null;
    if (!scalarsHere.length && !exact) {
      missing = `${item.class}: nothing logged at step ${step}`;
      missing += shown
        ? `; the picture below is from step ${shown.step}, the last logged before it.`
        : '; no picture of this class was logged before it.';
    } else if (!exact) {
      missing = shown
        ? `No picture of ${item.class} at step ${step}; the picture below is from step ${shown.step}, the last ` +
          'logged before it.'
        : `No picture of ${item.class} logged by step ${step}.`;
    } else if (!scalarsHere.length) {
      missing = `No discovery scalars of ${item.class} at step ${step} (the picture is).`;
    }

    const charts = keys.map((k) =>
      h(
        'figure',
        {class: 'chart-box', dataset: {key: k, tag: item.scalar_tags[k]}},
        lineChart({
          title: DISCOVERY_CHARTS[k] || k,
          series: [{name: k, points: item.scalars[k]}],
          alerts: bands,
          bandTitle: FLAG_BAND,
          current: step,
          onPick: (s) => this.setStep(s, summary),
        }),
      ),
    );
    const raised = h(
      'p',
      {class: 'raised small'},
      raisedAt.length
        ? [
            'flag "two strategies?" raised at step(s): ',
            ...raisedAt.flatMap((s, i) => [
              i ? ', ' : '',
              h('button', {
                class: 'link',
                dataset: {step: String(s)},
                text: String(s),
                onclick: () => this.setStep(s, summary),
              }),
            ]),
          ]
        : flagPoints.length
          ? `flag "two strategies?" never raised (${flagPoints.length} firing(s))`
          : 'the flag "two strategies?" was not logged for this class',
    );
    let picture;
    if (shown) {
      const prototypes = Object.keys(shown.boxes || {})
        .map(Number)
        .sort((a, b) => a - b);
      const rows = new Set(this.rows(summary).map((r) => `${r.fingerprint}:${r.index}`));
      picture = h(
        'figure',
        {
          class: `discovery-picture${exact ? '' : ' earlier'}`,
          dataset: {tag: item.tag, step: String(shown.step)},
        },
        h(
          'figcaption',
          {},
          h('code', {text: item.tag}),
          ` at step ${shown.step}` + (exact ? '' : ` (not step ${step})`),
          prototypes.length ? ' - prototypes: ' : '',
          prototypes.flatMap((k, i) => {
            const key = `${shown.probe}:${k}`;
            const label = `#${k}`;
            // a prototype is a probe image: followed over steps in the probe-image view where a grid shows it
            const link = rows.has(key)
              ? h('button', {
                  class: 'link',
                  title: 'follow this probe image in the Probe image view',
                  text: label,
                  onclick: () => {
                    this.state.probes[summary.run] = key;
                    this.state.view = 'image';
                    this.draw();
                  },
                })
              : label;
            return [i ? ', ' : '', link];
          }),
        ),
        (() => {
          const src = imageURL(summary.run, item.tag, shown);
          const img = h('img', {class: 'whole', src, alt: `${item.tag} step ${shown.step}`});
          if (shown.w && shown.w < 400) img.style.width = `${2 * shown.w}px`; // small probe images: twice as large
          return img;
        })(),
      );
    } else {
      picture = item.tag ? null : h('p', {class: 'small', text: `No picture of ${item.class} logged (yet).`});
    }
    return h(
      'section',
      {class: 'discovery-class', dataset: {class: item.class, monitor: group.monitor, stage: group.stage}},
      h('h4', {text: item.class}, ' ', ...facts),
      missing ? h('p', {class: 'notice warning missing', role: 'status', text: missing}) : null,
      h('div', {class: 'charts'}, charts),
      raised,
      picture,
    );
  }
}
