/**
 * A task opened in the task view: what its header says of a task that ended or still
 * runs, the job table's sorting and filtering, the task stream's layout, the brokerage
 * in words and the analysis report.
 *
 * The kind of bug guarded here: a monitor that says something other than what
 * happened.  Its members: a final task showing a rate to come or a Kill button; a task
 * that lost jobs not saying so or where to look; a failed attempt that a retry
 * recovered shown as the job's state; a brokerage record shown as raw JSON only.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { explainBrokerage, percent, renderBrokerage } from '../src/brokerage';
import {
  DetailActions, renderReport, renderTaskDetail, renderTaskHeader, reportEvents, reportStatus
} from '../src/detail';
import { DEFAULT_VIEW, JobView, inputText, jobRows, renderJobTable, stateRank } from '../src/jobs';
import { layout, renderUsage } from '../src/timeline';
import type { Attempt, ReportRow, TaskDetail, TaskSummary, Vocabulary } from '../src/types';
import { byClass, click, one, text } from './vdom';
import type { VirtualElement } from '@lumino/virtualdom';

const VOCABULARY: Vocabulary = JSON.parse(
  readFileSync(join(__dirname, '..', '..', 'test', 'fixtures', 'vocabulary.json'), 'utf8'));
const NOW = 1_700_000_000;

function attempt(over: Partial<Attempt> = {}): Attempt {
  return { id: 1, job_index: 0, attempt: 1, state: 'finished', site: 'LOCAL-GRID',
    pilot_id: 1, created_at: NOW - 100, started_at: NOW - 90, ended_at: NOW - 80,
    error_category: null, error_message: null, ...over };
}

function range(job: number, file: string, start: number, stop: number, state: string,
  over: Partial<ReportRow> = {}): ReportRow {
  return { job_index: job, file_index: 0, path: `/data/${file}`, tree: 'Events', start,
    stop, scout: false, state, attempts: 1, sites: ['LOCAL-GRID'], error_category: null,
    error: null, merged: state === 'finished', ...over };
}

const LOST: TaskSummary = {
  label: 'finished: 2 of 4 jobs failed (2,000 events not processed)', tone: 'warning',
  jobs_lost: 2, events_lost: 2000, wall_s: 80, rate: 25
};

/** A dimuon analysis over two files, 4 jobs: two finished (one after a retry at another
 * site), two failed. */
function analysis(over: Partial<TaskDetail> = {}): TaskDetail {
  const attempts = [
    attempt({ id: 1, job_index: 0, site: 'LOCAL-GRID', pilot_id: 1 }),
    attempt({ id: 2, job_index: 1, state: 'failed', site: 'LOCAL-GRID', pilot_id: 1,
      started_at: NOW - 80, ended_at: NOW - 75, error_category: 'system',
      error_message: 'worker died' }),
    attempt({ id: 3, job_index: 2, state: 'failed', site: 'LOCAL-HPC', pilot_id: 2,
      started_at: NOW - 89, ended_at: NOW - 60, error_category: 'user',
      error_message: 'ValueError: bad muon' }),
    attempt({ id: 4, job_index: 3, state: 'failed', site: 'LOCAL-HPC', pilot_id: 2,
      started_at: NOW - 59, ended_at: NOW - 30, error_category: 'user',
      error_message: 'ValueError: bad muon' }),
    attempt({ id: 5, job_index: 1, attempt: 2, site: 'LOCAL-HPC', pilot_id: 2,
      started_at: NOW - 29, ended_at: NOW - 20 })
  ];
  const newest = [attempts[0], attempts[4], attempts[2], attempts[3]];
  return {
    id: 12, name: 'dimuon', owner: 'alice', state: 'finished', site: 'ANY',
    options: { kind: 'analysis', dataset: 'DoubleMuon' }, open: false, lease_until: null,
    n_jobs: 4, n_done: 2, attempts_by_state: { finished: 2, failed: 3 },
    created_at: NOW - 100, modified_at: NOW - 20, ended_at: NOW - 20,
    message: 'finished: 2 of 4 jobs failed', summary: LOST,
    jobs_by_site: { 'LOCAL-GRID': { finished: 1 }, 'LOCAL-HPC': { finished: 1, failed: 2 } },
    errors: [], n_jobs_listed: 4, attempts,
    jobs: newest.map(a => ({ ...a, attempts: a.job_index === 1 ? 2 : 1 }))
      .sort((a, b) => a.job_index - b.job_index),
    report: [range(0, 'a.root', 0, 1000, 'finished'),
      range(1, 'a.root', 1000, 2000, 'finished', { attempts: 2,
        sites: ['LOCAL-GRID', 'LOCAL-HPC'] }),
      range(2, 'b.root', 0, 1000, 'failed', { error_category: 'user', error: 'bad muon' }),
      range(3, 'b.root', 1000, 2000, 'failed', { error_category: 'user', error: 'bad muon' }),
      { ...range(0, 'bad.root', 0, 0, ''), job_index: null, start: null, stop: null,
        state: null, attempts: 0, sites: [], error_category: 'input',
        error: 'skipped at registration: not a ROOT file' }],
    ...over
  };
}

function recorder(): { actions: DetailActions; calls: string[] } {
  const calls: string[] = [];
  const log = (what: string) => (x?: unknown) => { calls.push(`${what} ${String(x)}`); };
  return {
    calls, actions: {
      select: log('select'), openJob: log('openJob'), kill: log('kill'), retry: log('retry'),
      insert: log('insert'), acknowledge: log('acknowledge'), start: log('start'),
      sortBy: log('sortBy'), show: log('show'), filter: log('filter')
    }
  };
}

describe('the header of a task', () => {
  test('a final task that lost jobs: its summary, what was lost and where to look', () => {
    const { actions, calls } = recorder();
    const head = renderTaskHeader(analysis(), VOCABULARY, actions);
    assert.equal(text(one(head, 'panda-task-label')), LOST.label);
    assert.ok(one(head, 'panda-task-label').attrs.className?.includes('panda-tone-warning'));
    assert.equal(text(one(head, 'panda-dataset')), 'datasetDoubleMuon');
    assert.equal(text(one(head, 'panda-events')), 'events2,000 of 4,000 processed');
    assert.equal(text(one(head, 'panda-wall')), 'wall time80 s');
    assert.equal(text(one(head, 'panda-rate')), 'mean rate25 events/s');
    assert.match(text(one(head, 'panda-lost')),
      /^Lost: 2 of 4 jobs, 2,000 events not processed\. Where to look: the failed jobs/);
    assert.doesNotMatch(text(head), /ETA|so far|running for/);
    click(one(head, 'panda-show-failed'));
    assert.deepEqual(calls, ['show failed']);
  });

  test('a running task: elapsed time and the rate so far, no loss box, no mean rate', () => {
    const running = analysis({ state: 'running', ended_at: null, summary: {
      label: 'running: 2 of 4 jobs done', tone: 'active', jobs_lost: 0, events_lost: 0,
      wall_s: 40, rate: null } });
    const head = renderTaskHeader(running, VOCABULARY, recorder().actions);
    assert.equal(text(one(head, 'panda-wall')), 'running for40 s');
    assert.equal(text(one(head, 'panda-rate')), 'rate so far50 events/s');
    assert.equal(byClass(head, 'panda-lost').length, 0);
  });

  test('a final task: no Kill; "Mark failures seen" only when it lost jobs', () => {
    const { actions, calls } = recorder();
    const box = renderTaskDetail(analysis(), VOCABULARY, null, DEFAULT_VIEW, null, NOW, actions);
    assert.equal(byClass(box, 'panda-kill').length, 0);
    click(one(box, 'panda-ack'));
    assert.deepEqual(calls, ['acknowledge 12']);
    const clean = analysis({ state: 'done', summary: { ...LOST, jobs_lost: 0, tone: 'success',
      label: 'done: all 4 jobs finished' } });
    const done = renderTaskDetail(clean, VOCABULARY, null, DEFAULT_VIEW, null, NOW, actions);
    assert.equal(byClass(done, 'panda-ack').length, 0);
    const running = renderTaskDetail(analysis({ state: 'running', summary: { ...LOST,
      tone: 'active' } }), VOCABULARY, null, DEFAULT_VIEW, null, NOW, actions);
    assert.equal(byClass(running, 'panda-kill').length, 1);
    assert.equal(byClass(running, 'panda-ack').length, 0);
  });
});

describe('the job table', () => {
  const view = (over: Partial<JobView>): JobView => ({ ...DEFAULT_VIEW, ...over });
  const indices = (v: JobView): number[] =>
    jobRows(analysis(), VOCABULARY, v, NOW).rows.map(r => r.job.job_index);

  test('failures first, then by index; the newest attempt, not one a retry recovered', () => {
    assert.deepEqual(indices(DEFAULT_VIEW), [2, 3, 0, 1]);
    const rows = jobRows(analysis(), VOCABULARY, DEFAULT_VIEW, NOW).rows;
    const one1 = rows.find(r => r.job.job_index === 1);
    assert.equal(one1?.job.state, 'finished');
    assert.equal(one1?.job.attempts, 2);
    assert.deepEqual([stateRank('failed', VOCABULARY), stateRank('running', VOCABULARY),
      stateRank('activated', VOCABULARY), stateRank('finished', VOCABULARY),
      stateRank('zombie', VOCABULARY)], [0, 1, 2, 3, 4]);
  });

  test('sorted by input, site, attempts or duration, either way', () => {
    assert.deepEqual(indices(view({ sort: 'duration' })), [1, 0, 2, 3]);   // 9, 10, 29, 29 s
    assert.deepEqual(indices(view({ sort: 'duration', descending: true })), [2, 3, 0, 1]);
    assert.deepEqual(indices(view({ sort: 'attempts', descending: true })), [1, 0, 2, 3]);
    assert.deepEqual(indices(view({ sort: 'site' })), [0, 1, 2, 3]);
    assert.deepEqual(indices(view({ sort: 'input', descending: true })), [3, 2, 1, 0]);
  });

  test('filtered by state and by text (file, site, error, #index)', () => {
    assert.deepEqual(indices(view({ show: 'failed' })), [2, 3]);
    assert.deepEqual(indices(view({ show: 'unfinished' })), []);
    assert.deepEqual(indices(view({ text: 'b.root' })), [2, 3]);
    assert.deepEqual(indices(view({ text: 'GRID' })), [0]);
    assert.deepEqual(indices(view({ text: 'bad muon' })), [2, 3]);
    assert.deepEqual(indices(view({ text: '#1' })), [1]);
    assert.deepEqual(indices(view({ text: '1000–' })), [3, 1]);   // the range shown
  });

  test('rows: index, state, input range, site, tries, time; headers sort, rows open', () => {
    const { actions, calls } = recorder();
    const box = renderJobTable(analysis(), VOCABULARY, DEFAULT_VIEW, 3, NOW, actions);
    const rows = byClass(box, 'panda-job-row');
    assert.deepEqual(rows[0].children.map(text), ['2', 'failed', 'b.root 0–1000',
      'LOCAL-HPC', '1', '29 s']);
    assert.ok(rows[0].attrs.className?.includes('panda-selected'));   // job 3 is open
    assert.equal(text(one(box, 'panda-job-counts')), '4 of 4 jobs shown');
    const sortable = byClass(box, 'panda-sortable');
    assert.equal(text(sortable[1]), 'state ▲');
    click(sortable[5]);
    click(rows[1]);
    assert.deepEqual(calls, ['sortBy duration', 'openJob 4']);
    // a task without a report has no input column
    const plain = renderJobTable(analysis({ report: null }), VOCABULARY, DEFAULT_VIEW, null,
      NOW, actions);
    assert.deepEqual(byClass(plain, 'panda-sortable').map(text),
      ['#', 'state ▲', 'site', 'tries', 'time']);
  });

  test("input ranges as a person reads them; a running job's time runs to now", () => {
    assert.equal(inputText(range(0, 'x.root', 5, 10, 'finished')), 'x.root 5–10');
    assert.equal(inputText(null), '');
    const running = analysis({ jobs: [{ ...attempt({ state: 'running', ended_at: null,
      started_at: NOW - 7 }), attempts: 1 }] });
    assert.equal(jobRows(running, VOCABULARY, DEFAULT_VIEW, NOW).rows[0].seconds, 7);
  });
});

describe('the task stream', () => {
  test('one row per pilot by site, bars from start to end, failures marked', () => {
    const lay = layout(analysis().attempts, NOW, ['failed']);
    assert.deepEqual(lay.rows, ['LOCAL-GRID · pilot 1', 'LOCAL-HPC · pilot 2']);
    assert.equal(lay.t0, NOW - 90);
    assert.equal(lay.span, 70);
    const bars = lay.bars.map(b => [b.job, b.row, b.x0, b.x1, b.failed]);
    assert.deepEqual(bars, [[1, 0, 0, 10, false], [2, 0, 10, 15, true],
      [3, 1, 1, 30, true], [4, 1, 31, 60, true], [5, 1, 61, 70, false]]);
    assert.match(lay.bars[2].title,
      /^job #2 attempt 1: failed, 29 s \(ValueError: bad muon\) · memory and CPU not measured$/);
  });

  test("each pilot's row says its memory and CPU; a bar what its job used, or not measured",
    () => {
      // Kind: resource numbers that read 0 or the pilot's own instead of the payload's.
      const lay = layout([
        attempt({ peak_rss_mb: 231.4, cpu_s: 3.94 }),
        attempt({ id: 2, pilot_id: 2, site: 'LOCAL-HPC' }),
        attempt({ id: 3, state: 'running', ended_at: null, started_at: NOW - 5 })],
      NOW, ['failed'], [{ id: 1, site: 'LOCAL-GRID', state: 'running', rss_mb: 412,
        cpu_s: 12, cpu_pct: 97, usage: 'now 412 MB, CPU 97 %; jobs here: peak 231 MB' }]);
      assert.deepEqual(lay.usage, ['now 412 MB, CPU 97 %; jobs here: peak 231 MB',
        'pilot usage unknown']);
      assert.match(lay.bars[0].title, / · peak 231 MB, CPU 3.9 s$/);
      assert.match(lay.bars[1].title, / · memory and CPU not measured$/);
      assert.doesNotMatch(lay.bars[2].title, /memory|MB/);  // still running
      const box = renderUsage(lay) as VirtualElement;
      assert.equal(text(box), 'LOCAL-GRID · pilot 1: now 412 MB, CPU 97 %; jobs here: ' +
        'peak 231 MBLOCAL-HPC · pilot 2: pilot usage unknown');
      assert.equal(renderUsage(layout([], NOW)), null);
    });

  test('an attempt still running ends now; one never started is counted, not drawn', () => {
    const lay = layout([attempt({ state: 'running', ended_at: null, started_at: NOW - 5 }),
      attempt({ id: 2, state: 'activated', pilot_id: null, started_at: null,
        ended_at: null })], NOW);
    assert.deepEqual(lay.bars.map(b => [b.x0, b.x1, b.open]), [[0, 5, true]]);
    assert.equal(lay.notStarted, 1);
    assert.deepEqual(layout([], NOW).bars, []);
  });
});

describe('the brokerage in words', () => {
  test('a retry sent away from the site that failed, to the least loaded', () => {
    const e = explainBrokerage({ picked: 'LOCAL-HPC', weights: { 'LOCAL-HPC': 2, 'LOCAL-CLOUD': 1 },
      rejected: { 'LOCAL-GRID': 'avoided: an earlier attempt failed there' } }, 'LOCAL-HPC');
    assert.equal(e.sentence, 'Sent to LOCAL-HPC: LOCAL-GRID avoided, an earlier attempt ' +
      'failed there; LOCAL-HPC the least loaded (weight 2 of 3, 67 % chance).');
    assert.deepEqual(e.weights.map(w => [w.site, w.chance.toFixed(2), w.picked]),
      [['LOCAL-HPC', '0.67', true], ['LOCAL-CLOUD', '0.33', false]]);
  });

  test('a pick by chance, near the data, offline sites, a note, no record at all', () => {
    const e = explainBrokerage({ picked: 'B', weights: { A: 3, B: 1 }, near_data: ['B'],
      rejected: { C: 'offline: sbatch failed' } }, 'B');
    assert.equal(e.sentence, 'Sent to B: C offline, sbatch failed; B is near the input data ' +
      '(weight ×9); picked at random by weight: B had a 25 % chance, A the most (75 %).');
    assert.equal(explainBrokerage({ picked: 'A', rejected: {},
      note: 'every candidate offline; queued anyway' }, 'A').sentence,
    'Sent to A: every candidate offline; queued anyway.');
    assert.equal(explainBrokerage({ picked: 'A', weights: { A: 1 } }, 'A').sentence,
      'Sent to A: A the only site left.');
    assert.equal(explainBrokerage({}, null).sentence, 'Not brokered yet: no site chosen.');
    assert.equal(explainBrokerage({}, 'A').sentence, 'Sent to A.');
    assert.deepEqual([percent(0.004), percent(0), percent(1)], ['<1 %', '0 %', '100 %']);
  });

  test("the server's own sentence, and the candidates the brokerage records", () => {
    const info = { picked: 'A', policy: 'network', weights: { A: 3, B: 1 },
      candidates: [
        { site: 'A', passed: true, filter: null, reason: 'weighted random pick', weight: 3,
          factors: { free: 1, network: 2 }, est: { queue_s: 0, read_s: 4, compute_s: 6,
            total_s: 10 }, access: 'local', picked: true },
        { site: 'B', passed: true, filter: null, reason: 'passed', weight: 1,
          factors: { free: 1, network: 0.5 }, est: { total_s: 30 }, access: 'remote',
          picked: false },
        { site: 'C', passed: false, filter: 'offline', reason: 'offline: sbatch failed',
          factors: null, est: null, access: null, weight: 0, picked: false }] };
    const box = renderBrokerage(info, 'A', 'sent to A: A better connected to the data than B');
    assert.equal(text(one(box, 'panda-broker-sentence')),
      'sent to A: A better connected to the data than B');
    assert.equal(text(one(box, 'panda-broker-policy')), 'policy: network');
    const rows = one(box, 'panda-broker-candidates').children.slice(1) as VirtualElement[];
    assert.deepEqual(rows.map(r => r.children.map(text)), [
      ['A', 'picked', '3', '75 %', '10 s', 'local'],
      ['B', 'passed', '1', '25 %', '30 s', 'remote'],
      ['C', 'offline: sbatch failed', '', '', '', '']]);
    assert.equal(rows[0].attrs.title,
      'free 1, network 2, queue_s 0, read_s 4, compute_s 6, total_s 10');
    assert.equal(byClass(box, 'panda-broker-weights').length, 0);
    assert.match(text(one(box, 'panda-broker-meaning')), /^each site the brokerage considered/);
    // without the server's sentence, the one made here
    assert.match(explainBrokerage(info, 'A').sentence, /^Sent to A: /);
  });

  test('the weights table says which was picked and which is near the data', () => {
    const box = renderBrokerage({ picked: 'B', weights: { A: 1, B: 9 }, near_data: ['B'] }, 'B');
    const rows = one(box, 'panda-broker-weights').children.slice(1).map(r => text(r));
    assert.deepEqual(rows, ['B990 %picked, near data', 'A110 %']);
  });
});

describe('the report (task.report())', () => {
  test("each range's fate in task.report()'s words", () => {
    const t = analysis();
    const s = (r: ReportRow, skip = false, merge = false) =>
      reportStatus(r, skip, merge, VOCABULARY);
    const [done, retried, failed] = t.report as ReportRow[];
    assert.deepEqual([s(done), s(retried), s(failed)], ['done', 'done after retry', 'failed']);
    assert.equal(s({ ...failed, error_category: 'input' }, true), 'skipped');
    assert.equal(s({ ...done, merged: false }, false, true), 'not merged');
    assert.equal(s({ ...done, error_category: 'merge' }), 'merge failed');
    assert.equal(s((t.report as ReportRow[])[4]), 'skipped');
    assert.equal(s({ ...done, state: 'running' }), 'running');
    assert.deepEqual(reportEvents(t.report as ReportRow[]), { total: 4000, done: 2000 });
  });

  test('drawn as a table, one row per range, with the status as a data attribute', () => {
    const rows = byClass({ type: 'element', tag: 'div', attrs: {}, children:
      renderReport(analysis(), VOCABULARY) } as never, 'panda-report-row');
    assert.deepEqual(rows.map(r => r.attrs.dataset?.status),
      ['done', 'done after retry', 'failed', 'failed', 'skipped']);
    assert.equal(text(rows[4].children[1]), 'bad.root');
    assert.deepEqual(renderReport(analysis({ report: null }), VOCABULARY), []);
  });
});
