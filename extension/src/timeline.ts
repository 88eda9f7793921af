/**
 * The task stream: each attempt a bar on its pilot's row, from when the pilot started it
 * to when it ended (or now), coloured by its state, failures marked.
 *
 * Dask's task-stream plot (distributed's dashboard, one row per worker thread) drawn
 * from panda-lab's own records: an attempt's `pilot_id`, `site`, `started_at` and
 * `ended_at` (panda_lab/store/schema.py `jobs`).  `layout` is pure (tested without a
 * browser); `drawTimeline` makes the SVG in the page (the virtual DOM makes HTML
 * elements only, so the SVG is built with `createElementNS` through a renderer).
 *
 * Each pilot's row also says its memory and CPU (as Dask's dashboard shows per worker):
 * the server's words for the pilot's latest report and its attempts' measurements here
 * (panda_lab/widgets/stream.py `row_usage`), under the plot and as the row's tooltip.
 */
import { h, hpass, VirtualElement } from '@lumino/virtualdom';
import type { Attempt, PilotUsage } from './types';

/** One bar: an attempt on a row, in seconds since the first start. */
export interface Bar {
  job: number;
  jobIndex: number;
  attempt: number;
  row: number;
  x0: number;
  x1: number;
  state: string;
  /** Ended unsuccessfully (failed): drawn with a mark. */
  failed: boolean;
  /** Still on its pilot: its end is "now". */
  open: boolean;
  title: string;
}

/** The stream laid out: one row per pilot, the bars, the time span in seconds. */
export interface Layout {
  /** Row labels, "SITE · pilot N", by site then pilot. */
  rows: string[];
  bars: Bar[];
  /** Seconds from the first start to the last end (or now): the x axis. */
  span: number;
  /** The first start (Unix seconds): x = 0. */
  t0: number;
  /** Attempts not drawn: never started on a pilot. */
  notStarted: number;
  /** Per row: its pilot's memory and CPU and its attempts' here, in words. */
  usage: string[];
}

/** What an ended attempt's payload used: " · peak 231 MB, CPU 3.9 s", or " · memory and
 * CPU not measured"; "" for one still running. */
function used(a: Attempt): string {
  if (a.ended_at === null) {
    return '';
  }
  const mem = a.peak_rss_mb === null || a.peak_rss_mb === undefined ? null :
    `peak ${Math.round(a.peak_rss_mb)} MB`;
  const cpu = a.cpu_s === null || a.cpu_s === undefined ? null :
    `CPU ${Math.round(a.cpu_s * 10) / 10} s`;
  return mem === null && cpu === null ? ' · memory and CPU not measured' :
    ` · ${[mem ?? 'memory not measured', cpu ?? 'CPU not measured'].join(', ')}`;
}

function seconds(s: number): string {
  return s < 10 ? `${Math.round(s * 10) / 10} s` : s < 120 ? `${Math.round(s)} s` :
    `${Math.round(s / 6) / 10} min`;
}

/**
 * Lay attempts out on pilot rows.
 * @param attempts - a task's attempts, any order.
 * @param now - Unix seconds: the end of attempts still running.
 * @param failedStates - the states marked as failures (the vocabulary's
 *   job_unsuccessful but `closed`, which never ran).
 * @param pilots - the task's pilots with their usage in words (GET tasks/{id}).
 */
export function layout(attempts: Attempt[], now: number,
  failedStates: readonly string[] = ['failed'], pilots: readonly PilotUsage[] = []): Layout {
  const drawn = attempts.filter(a => a.started_at !== null && a.pilot_id !== null);
  const keys = [...new Set(drawn.map(a => `${a.site ?? '-'}\u0000${a.pilot_id}`))];
  keys.sort((a, b) => {
    const [sa, pa] = a.split('\u0000');
    const [sb, pb] = b.split('\u0000');
    return sa.localeCompare(sb) || Number(pa) - Number(pb);
  });
  const rowOf = new Map(keys.map((k, i) => [k, i]));
  const t0 = drawn.length ? Math.min(...drawn.map(a => a.started_at as number)) : now;
  const bars = drawn.map(a => {
    const start = a.started_at as number;
    const end = a.ended_at ?? Math.max(now, start);
    const failed = failedStates.includes(a.state);
    return {
      job: a.id, jobIndex: a.job_index, attempt: a.attempt,
      row: rowOf.get(`${a.site ?? '-'}\u0000${a.pilot_id}`) as number,
      x0: start - t0, x1: Math.max(end, start) - t0, state: a.state, failed,
      open: a.ended_at === null,
      title: `job #${a.job_index} attempt ${a.attempt}: ${a.state}, ` +
        `${seconds(Math.max(end - start, 0))}` +
        (a.error_message ? ` (${a.error_message.slice(0, 120)})` : '') + used(a)
    };
  });
  const span = bars.length ? Math.max(...bars.map(b => b.x1), 1e-3) : 0;
  const usageOf = new Map(pilots.map(p => [String(p.id), p.usage]));
  return {
    rows: keys.map(k => {
      const [site, pilot] = k.split('\u0000');
      return `${site} · pilot ${pilot}`;
    }),
    bars, span, t0, notStarted: attempts.length - drawn.length,
    usage: keys.map(k => usageOf.get(k.split('\u0000')[1]) ?? 'pilot usage unknown')
  };
}

const SVG = 'http://www.w3.org/2000/svg';
/** Row height and the label gutter, in CSS pixels. */
export const ROW_PX = 18;
export const GUTTER_PX = 120;

function el(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, String(v));
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** Draw `lay` into `host` as an SVG as wide as the host; a click on a bar calls
 * `open(job id)`. */
export function drawTimeline(host: HTMLElement, lay: Layout, open: (job: number) => void):
  void {
  host.textContent = '';
  if (!lay.bars.length) {
    host.textContent = 'no job has started on a pilot yet';
    return;
  }
  const width = Math.max(host.clientWidth || 600, GUTTER_PX + 120);
  const plot = width - GUTTER_PX - 8;
  const height = lay.rows.length * ROW_PX + 20;
  const svg = el('svg', { width, height, viewBox: `0 0 ${width} ${height}`,
    class: 'panda-timeline-svg', role: 'img',
    'aria-label': `task stream: ${lay.bars.length} attempts on ${lay.rows.length} pilots` });
  const x = (s: number): number => GUTTER_PX + (plot * s) / lay.span;
  lay.rows.forEach((label, i) => {
    const text = el('text', { x: 2, y: i * ROW_PX + 13, class: 'panda-tl-label' }, label);
    if (lay.usage[i]) {
      text.appendChild(el('title', {}, `${label}: ${lay.usage[i]}`));
    }
    svg.appendChild(text);
    svg.appendChild(el('line', { x1: GUTTER_PX, x2: width - 8, y1: (i + 1) * ROW_PX,
      y2: (i + 1) * ROW_PX, class: 'panda-tl-grid' }));
  });
  for (const b of lay.bars) {
    const x0 = x(b.x0);
    const rect = el('rect', {
      x: x0, y: b.row * ROW_PX + 3, width: Math.max(x(b.x1) - x0, 2), height: ROW_PX - 6,
      class: `panda-tl-bar panda-tl-${b.state}` + (b.failed ? ' panda-tl-failed' : ''),
      'data-job-id': b.job
    });
    rect.appendChild(el('title', {}, b.title));
    rect.addEventListener('click', () => open(b.job));
    svg.appendChild(rect);
    if (b.failed) {  // a cross at the end of the bar
      const cx = x(b.x1);
      const cy = b.row * ROW_PX + ROW_PX / 2;
      svg.appendChild(el('path', {
        d: `M${cx - 4} ${cy - 4} L${cx + 4} ${cy + 4} M${cx - 4} ${cy + 4} L${cx + 4} ${cy - 4}`,
        class: 'panda-tl-mark' }));
    }
  }
  const axis = lay.rows.length * ROW_PX + 14;
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(el('text', { x: x(f * lay.span), y: axis, class: 'panda-tl-axis',
      'text-anchor': f === 0 ? 'start' : f === 1 ? 'end' : 'middle' },
    seconds(f * lay.span)));
  }
  host.appendChild(svg);
}

/** The task stream as a virtual DOM node whose content `drawTimeline` makes. */
export function renderTimeline(lay: Layout, open: (job: number) => void): VirtualElement {
  return hpass('div', { className: 'panda-timeline' }, {
    render: host => drawTimeline(host, lay, open)
  });
}

/** Each pilot's memory and CPU, one line a row of the stream (none without bars). */
export function renderUsage(lay: Layout): VirtualElement | null {
  if (!lay.bars.length) {
    return null;
  }
  return h.div({ className: 'panda-tl-usage' }, ...lay.rows.map((row, i) =>
    h.div({ className: 'panda-tl-usage-row' }, h.b(row), `: ${lay.usage[i]}`)));
}
