/**
 * A brokerage decision in words: why an attempt went where it went.
 *
 * The rule is PanDA's brokerage as panda_lab/model/brokerage.py applies it: drop the
 * sites that cannot take the job (offline, not in its list), avoid the sites where an
 * earlier attempt failed, weigh the rest by their free capacity (slots / (1 + queued +
 * running)), ×`DATA_NEAR` where the job's input data is stored, and pick at random by
 * weight.  The job keeps the decision as `broker_info`: `{"picked", "weights": {site:
 * weight}, "rejected": {site: reason}, "near_data"?: [site], "note"?}`, and, where the
 * brokerage records them, `"policy"` and `"candidates"`: one row per site, `{"site",
 * "passed", "filter", "reason", "factors": {free, speed, locality, network,
 * reliability}, "est": {queue_s, read_s, compute_s, total_s}, "access", "weight",
 * "picked"}`.  When the server gives its own sentence for the decision (the model's
 * `explain(info)`, served as the job's `explanation`), that sentence is shown instead of
 * the one made here.  Pure: no DOM.
 */
import { h, VirtualElement } from '@lumino/virtualdom';

/** How much more a site near the job's data weighs (panda_lab/model/brokerage.py). */
export const DATA_NEAR = 9;

/** What the weights mean, in one line. */
export const WEIGHT_MEANING =
  'weight = free capacity of the site: its slots / (1 + jobs queued + jobs running), ' +
  `×${DATA_NEAR} where the job's input data is stored; ` +
  "a site's chance is its weight over the sum of the weights";

/** What a candidate row says, in one line. */
export const CANDIDATE_MEANING =
  "each site the brokerage considered: left out by a filter (and why), or passed with a " +
  'weight from its cost model (free slots, speed, data locality, network, reliability; ' +
  'the tooltip gives the factors and estimated queue, read and compute times); ' +
  "a site's chance is its weight over the sum of the weights";

/** One site weighed, as the weights table shows it. */
export interface WeightRow {
  site: string;
  weight: number;
  /** Its chance of being picked, 0–1. */
  chance: number;
  picked: boolean;
  nearData: boolean;
}

/** The decision in words: one sentence, the sites weighed, the sites left out. */
export interface Explanation {
  sentence: string;
  weights: WeightRow[];
  /** Sites that could not or should not take the job: [site, why]. */
  rejected: [string, string][];
  /** `candidates` rows as the server gave them (empty when it gives none). */
  candidates: Record<string, unknown>[];
}

function record(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value) ?
    value as Record<string, unknown> : {};
}

/** A percentage to show: "55 %", "<1 %". */
export function percent(x: number): string {
  const p = Math.round(100 * x);
  return p === 0 && x > 0 ? '<1 %' : `${p} %`;
}

/** "LOCAL-GRID avoided: an earlier attempt failed there" → "... avoided, an earlier ...". */
function clause(site: string, why: string): string {
  return `${site} ${why.replace(/^(\w+): /, '$1, ')}`;
}

/**
 * Explain one attempt's brokerage record.
 * @param info - the attempt's `broker_info` ({} when it was never brokered).
 * @param site - the site it is at, used when `info` names none.
 * @returns the sentence ("Sent to LOCAL-HPC: LOCAL-GRID avoided, an earlier attempt
 *   failed there; LOCAL-HPC the least loaded (weight 2 of 3, 67 % chance)."), the
 *   weights with each site's chance, the rejected sites and any `candidates` rows.
 */
export function explainBrokerage(info: Record<string, unknown>, site: string | null,
  serverSentence: string | null = null): Explanation {
  const picked = typeof info.picked === 'string' ? info.picked : site;
  const weightsIn = record(info.weights);
  const near = Array.isArray(info.near_data) ? info.near_data.map(String) : [];
  const total = Object.values(weightsIn).reduce<number>((a, w) => a + Number(w || 0), 0);
  const weights: WeightRow[] = Object.entries(weightsIn).map(([s, w]) => ({
    site: s, weight: Number(w), chance: total > 0 ? Number(w) / total : 0,
    picked: s === picked, nearData: near.includes(s)
  })).sort((a, b) => b.weight - a.weight || a.site.localeCompare(b.site));
  const rejected = Object.entries(record(info.rejected)).map(
    ([s, why]) => [s, String(why)] as [string, string]).sort();
  const candidates = Array.isArray(info.candidates) ?
    info.candidates.map(record) : [];
  if (serverSentence) {
    return { sentence: serverSentence, weights, rejected, candidates };
  }
  if (!picked) {
    return { sentence: 'Not brokered yet: no site chosen.', weights, rejected, candidates };
  }
  const clauses = rejected.map(([s, why]) => clause(s, why));
  const mine = weights.find(w => w.picked);
  if (near.includes(picked)) {
    clauses.push(`${picked} is near the input data (weight ×${DATA_NEAR})`);
  }
  if (mine && weights.length === 1) {
    clauses.push(`${picked} the only site left`);
  } else if (mine && weights.length > 1) {
    const best = mine.weight >= weights[0].weight;
    const chance = `${percent(mine.chance)} chance`;
    clauses.push(best ?
      `${picked} the least loaded (weight ${round(mine.weight)} of ${round(total)}, ${chance})` :
      `picked at random by weight: ${picked} had a ${chance}, ` +
      `${weights[0].site} the most (${percent(weights[0].chance)})`);
  }
  if (typeof info.note === 'string' && info.note) {
    clauses.push(info.note);
  }
  const sentence = `Sent to ${picked}` + (clauses.length ? `: ${clauses.join('; ')}.` : '.');
  return { sentence, weights, rejected, candidates };
}

function round(x: number): string {
  return String(Math.round(x * 100) / 100);
}

function cell(value: unknown): string {
  if (typeof value === 'number') {
    return round(value);
  }
  if (typeof value === 'boolean') {
    return value ? 'yes' : '';
  }
  return value === null || value === undefined ? '' :
    typeof value === 'string' ? value : JSON.stringify(value);
}

/** One candidate row in words: what became of it, its weight and chance, the time the
 * brokerage estimated, how it would read its input; its factors in the tooltip. */
export function candidateCells(c: Record<string, unknown>, total: number): string[] {
  const weight = Number(c.weight ?? 0);
  const est = record(c.est);
  const filter = String(c.filter ?? 'left out');
  const reason = String(c.reason ?? '');
  const fate = c.picked ? 'picked' : c.passed !== false ? 'passed' :
    reason.startsWith(filter) ? reason : reason ? `${filter}: ${reason}` : filter;
  return [String(c.site ?? ''), fate, c.passed === false ? '' : round(weight),
    c.passed === false || total <= 0 ? '' : percent(weight / total),
    typeof est.total_s === 'number' ? `${round(est.total_s)} s` : '',
    typeof c.access === 'string' ? c.access : ''];
}

function factorsTitle(c: Record<string, unknown>): string {
  const parts = [record(c.factors), record(c.est)].flatMap(
    o => Object.entries(o).map(([k, v]) => `${k} ${cell(v)}`));
  return parts.join(', ');
}

/** The decision drawn: the sentence, the candidates (or weights) table with what the
 * weights mean.
 * @param serverSentence - the server's own sentence for it, when it gives one. */
export function renderBrokerage(info: Record<string, unknown>, site: string | null,
  serverSentence: string | null = null): VirtualElement {
  const e = explainBrokerage(info, site, serverSentence);
  const parts: (VirtualElement | null)[] = [
    h.p({ className: 'panda-broker-sentence' }, e.sentence)];
  if (typeof info.policy === 'string') {
    parts.push(h.div({ className: 'panda-broker-policy' }, `policy: ${info.policy}`));
  }
  if (e.candidates.length) {
    const total = e.candidates.reduce<number>(
      (a, c) => a + (c.passed === false ? 0 : Number(c.weight ?? 0)), 0);
    parts.push(h.div({ className: 'panda-scroll-x' },
      h.table({ className: 'panda-table panda-broker-candidates' },
        h.tr(...['site', 'decision', 'weight', 'chance', 'estimate', 'input']
          .map(k => h.th(k))),
        ...e.candidates.map(c => h.tr({
          className: c.picked ? 'panda-picked' : '', title: factorsTitle(c)
        }, ...candidateCells(c, total).map(v => h.td(v)))))));
  } else if (e.weights.length) {
    parts.push(h.table({ className: 'panda-table panda-broker-weights' },
      h.tr(h.th('site'), h.th('weight'), h.th('chance'), h.th('')),
      ...e.weights.map(w => h.tr({ className: w.picked ? 'panda-picked' : '' },
        h.td(w.site), h.td(round(w.weight)), h.td(percent(w.chance)),
        h.td([w.picked ? 'picked' : '', w.nearData ? 'near data' : '']
          .filter(Boolean).join(', '))))));
  }
  if (e.weights.length || e.candidates.length) {
    parts.push(h.div({ className: 'panda-broker-meaning' },
      e.candidates.length ? CANDIDATE_MEANING : WEIGHT_MEANING));
  }
  return h.div({ className: 'panda-broker' }, ...parts);
}
