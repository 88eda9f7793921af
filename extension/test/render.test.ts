/** The panel's render functions: what a person sees for given answers of the server. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { DEFAULT_VIEW } from '../src/jobs';
import { DetailActions, renderJob, renderTaskDetail } from '../src/detail';
import {
  age, canKill, canRetry, count, duration, renderServerDown, renderSites,
  renderTasks, statesShown, statusText, statusTooltip
} from '../src/render';
import type { Attempt, Job, Site, Task, TaskDetail, Vocabulary } from '../src/types';
import { byClass, click, disabled, elements, one, text } from './vdom';

/** The server's vocabulary as `GET /api/states` answers it (a Python test keeps this
 * file equal to panda_lab.model.vocabulary()). */
const VOCABULARY: Vocabulary = JSON.parse(
  readFileSync(join(__dirname, '..', '..', 'test', 'fixtures', 'vocabulary.json'), 'utf8'));

const NOW = 1_700_000_000;

function task(over: Partial<Task> = {}): Task {
  return {
    id: 7, name: 'dimuon', owner: 'alice', state: 'running', site: 'ANY', options: {},
    open: false, lease_until: null, n_jobs: 12, n_done: 5,
    attempts_by_state: { finished: 5, running: 7 }, created_at: NOW - 90,
    modified_at: NOW, ended_at: null, message: '', sites: ['LOCAL-GRID', 'LOCAL-HPC'],
    ...over
  };
}

function attempt(over: Partial<Attempt> = {}): Attempt {
  return { id: 101, job_index: 0, attempt: 1, state: 'finished', site: 'LOCAL-GRID',
    pilot_id: 1, created_at: NOW - 60, started_at: NOW - 50, ended_at: NOW - 40,
    error_category: null, error_message: null, ...over };
}

function detail(over: Partial<TaskDetail> = {}): TaskDetail {
  const { sites: _sites, ...base } = task();
  return {
    ...base,
    jobs_by_site: { 'LOCAL-GRID': { finished: 3, failed: 1 }, 'LOCAL-HPC': { running: 2 } },
    errors: [],
    jobs: [{ ...attempt(), attempts: 1 },
      { ...attempt({ id: 102, job_index: 1, attempt: 2, state: 'failed' }), attempts: 2 }],
    n_jobs_listed: 2,
    attempts: [attempt()],
    report: null,
    ...over
  };
}

function open(t: TaskDetail, vocabulary: Vocabulary | null = VOCABULARY,
  refused: string | null = null, actions = recorder().actions) {
  return renderTaskDetail(t, vocabulary, refused, DEFAULT_VIEW, null, NOW, actions);
}

/** Actions that record what was asked of them. */
function recorder(): { actions: DetailActions; calls: string[] } {
  const calls: string[] = [];
  const actions: DetailActions = {
    sortBy: key => calls.push(`sortBy ${key}`),
    show: which => calls.push(`show ${which}`),
    filter: text => calls.push(`filter ${text}`),
    acknowledge: id => calls.push(`acknowledge ${id}`),
    select: id => calls.push(`select ${id}`),
    openJob: id => calls.push(`openJob ${id}`),
    kill: id => calls.push(`kill ${id}`),
    retry: id => calls.push(`retry ${id}`),
    insert: id => calls.push(`insert ${id}`),
    start: () => calls.push('start')
  };
  return { actions, calls };
}

describe('the task list', () => {
  test('shows each task with its outcome, progress, sites and age', () => {
    const { actions } = recorder();
    const tasks = [task(), task({ id: 6, name: 'old', state: 'done', n_done: 12, sites: [],
      site: 'LOCAL-CLOUD', created_at: NOW - 7200 })];
    const list = renderTasks(tasks, null, NOW, actions);
    const rows = byClass(list, 'panda-task-row');
    assert.equal(rows.length, 2);
    assert.deepEqual(rows.map(r => r.attrs.dataset), [
      { 'task-id': '7', state: 'running', tone: 'neutral' },
      { 'task-id': '6', state: 'done', tone: 'neutral' }]);
    assert.equal(text(one(rows[0], 'panda-progress')), '5/12');
    assert.equal(text(one(rows[0], 'panda-task-sites')), 'LOCAL-GRID LOCAL-HPC');
    // before any job is brokered: the site the task asked for
    assert.equal(text(one(rows[1], 'panda-task-sites')), 'LOCAL-CLOUD');
    assert.equal(text(one(rows[1], 'panda-progress')), '12/12');
    assert.equal(text(rows[0]), '7 dimuon2 minrunning5/12LOCAL-GRID LOCAL-HPC');
    assert.equal(text(one(rows[1], 'panda-age')), '2 h');
    const fill = one(rows[0], 'panda-bar-fill');
    assert.deepEqual(fill.attrs.style, { width: '42%' });  // 5 of 12
  });

  test("a task's label and tone are the server's: a finished task that lost jobs warns",
    () => {
      const lost = task({ id: 9, state: 'finished', n_done: 30, n_jobs: 40, summary: {
        label: 'finished: 10 of 40 jobs failed (250,000 events not processed)',
        tone: 'warning', jobs_lost: 10, events_lost: 250_000, wall_s: 80, rate: 3000 } });
      const row = one(renderTasks([lost], null, NOW, recorder().actions), 'panda-task-row');
      const label = one(row, 'panda-label');
      assert.equal(text(label), 'finished: 10 of 40 jobs failed (250,000 events not processed)');
      assert.ok(label.attrs.className?.split(' ').includes('panda-tone-warning'));
      assert.equal(row.attrs.dataset?.tone, 'warning');
      // never the success colour for it, whatever its state's name
      assert.ok(!/success/.test(label.attrs.className ?? ''));
    });

  test('a tone that is not a word falls back to neutral (no class injection)', () => {
    const odd = task({ summary: { label: 'x', tone: 'a b', jobs_lost: 0, events_lost: null,
      wall_s: null, rate: null } });
    const label = one(renderTasks([odd], null, NOW, recorder().actions), 'panda-label');
    assert.ok(label.attrs.className?.includes('panda-tone-neutral'));
  });

  test('marks the selected task and selects one on click', () => {
    const { actions, calls } = recorder();
    const list = renderTasks([task(), task({ id: 6 })], 6, NOW, actions);
    const rows = byClass(list, 'panda-task-row');
    assert.deepEqual(byClass(list, 'panda-selected'), [rows[1]]);
    click(rows[0]);
    assert.deepEqual(calls, ['select 7']);
  });

  test('a task with no jobs yet shows 0/0 and an empty bar; no task at all says so', () => {
    const list = renderTasks([task({ n_jobs: 0, n_done: 0 })], null, NOW, recorder().actions);
    assert.equal(text(one(list, 'panda-progress')), '0/0');
    assert.deepEqual(one(list, 'panda-bar-fill').attrs.style, { width: '0%' });
    assert.equal(text(one(renderTasks([], null, NOW, recorder().actions), 'panda-empty')),
      'no task yet');
  });
});

describe('a task opened', () => {
  test('counts its latest attempts per site, in the life-cycle order of job states', () => {
    const box = open(detail());
    assert.deepEqual(box.attrs.dataset, { 'task-id': '7' });  // data-task-id
    const table = one(box, 'panda-jobs-by-site');
    const rows = table.children.map(r => text(r));
    // header: running before finished before failed, as in the vocabulary's job_states
    assert.deepEqual(elements(table).filter(e => e.tag === 'th').map(th => text(th)),
      ['site', 'running', 'finished', 'failed']);
    assert.deepEqual(rows.slice(1), ['LOCAL-GRID31', 'LOCAL-HPC2']);
  });

  test('the retry button is enabled for a ready task with failed jobs', () => {
    const { actions, calls } = recorder();
    const box = open(detail({ state: 'ready' }), VOCABULARY, null, actions);
    const retry = one(box, 'panda-retry');
    assert.equal(disabled(retry), false);
    assert.equal(disabled(one(box, 'panda-kill')), false);
    click(retry);
    assert.deepEqual(calls, ['retry 7']);
  });

  for (const state of ['running', 'finished', 'failed']) {
    test(`the retry button is enabled for a ${state} task`, () => {
      assert.equal(disabled(one(open(detail({ state })), 'panda-retry')), false);
    });
  }

  for (const state of ['aborted', 'done', 'defined', 'paused', 'scouting']) {
    test(`the retry button is disabled for a ${state} task`, () => {
      assert.equal(disabled(one(open(detail({ state })), 'panda-retry')), true);
    });
  }

  for (const state of ['done', 'finished', 'failed', 'aborted']) {
    test(`a ${state} task has no kill button`, () => {
      assert.equal(byClass(open(detail({ state })), 'panda-kill').length, 0);
    });
  }

  test('without the vocabulary yet, neither kill nor retry is offered', () => {
    const box = open(detail(), null);
    assert.equal(byClass(box, 'panda-kill').length, 0);
    assert.equal(disabled(one(box, 'panda-retry')), true);
    assert.equal(disabled(one(box, 'panda-insert')), false);
  });

  test('kill, insert and the job rows call their actions with the right ids', () => {
    const { actions, calls } = recorder();
    const box = open(detail(), VOCABULARY, null, actions);
    click(one(box, 'panda-kill'));
    click(one(box, 'panda-insert'));
    const rows = byClass(box, 'panda-job-row');
    // failures first
    assert.deepEqual(rows.map(r => r.attrs.dataset?.['job-id']), ['102', '101']);
    click(rows[0]);
    assert.deepEqual(calls, ['kill 7', 'insert 7', 'openJob 102']);
  });

  test('error groups: count, category, message, and a job to open', () => {
    const { actions, calls } = recorder();
    const errors = [{ category: 'merge', message: 'histograms differ', count: 1,
      example_job: 0, traceback: '' },
    { category: 'user', message: 'ValueError: two is bad', count: 3, example_job: 102,
      traceback: 'Traceback …' }];
    const box = open(detail({ errors }), VOCABULARY, null, actions);
    const groups = byClass(box, 'panda-error-group');
    assert.deepEqual(groups.map(g => text(g)), [
      '1 × [merge] histograms differ job 0', '3 × [user] ValueError: two is bad job 102']);
    click(one(groups[1], 'panda-open-job'));
    assert.deepEqual(calls, ['openJob 102']);
  });

  test("the task's message and a refused command are shown", () => {
    const box = open(detail({ message: 'closed: its client went away' }),
      VOCABULARY, 'task 7 is done: nothing to kill');
    assert.equal(text(one(box, 'panda-task-message')), 'closed: its client went away');
    assert.equal(text(one(one(box, 'panda-buttons'), 'panda-error')),
      'task 7 is done: nothing to kill');
  });

  test('error text is shown as text, never as markup', () => {
    const evil = '<img src=x onerror="alert(1)"><script>alert(2)</script>';
    const errors = [{ category: 'user', message: evil, count: 1, example_job: 5,
      traceback: '' }];
    const box = open(detail({ errors, message: evil, name: evil }), VOCABULARY, evil);
    assert.ok(text(one(box, 'panda-error-group')).includes(evil));
    assert.equal(text(one(box, 'panda-task-message')), evil);
    const tags = new Set(elements(box).map(e => e.tag));
    assert.ok(!tags.has('img') && !tags.has('script'), [...tags].join(' '));
  });
});

describe('a job opened', () => {
  const job: Job = {
    id: 102, task_id: 7, job_index: 1, attempt: 2, state: 'failed', site: 'LOCAL-GRID',
    pilot_id: 3, priority: 0, cores: 1, memory_mb: 0, walltime_s: 0, max_attempts: 3,
    created_at: NOW, modified_at: NOW, heartbeat_at: NOW, started_at: NOW - 4, ended_at: NOW,
    error_category: 'user', error_message: 'ValueError: <b>two</b> is bad',
    error_traceback: 'Traceback (most recent call last):\n  ValueError',
    error_exception: null, stdout_tail: 'hello\n', stderr_tail: null,
    broker_info: { picked: 'LOCAL-GRID' }, retry_of: 101, history: [], attempts: [101, 102]
  };

  test('shows its attempt, state, site, brokerage, error and logs it has', () => {
    const { actions, calls } = recorder();
    const box = renderJob(job, NOW, actions);
    assert.equal(text(elements(box).find(e => e.tag === 'h4') ?? null),
      'Job 102 · #1 attempt 2 · failed at LOCAL-GRID');
    assert.equal(text(one(box, 'panda-broker-sentence')), 'Sent to LOCAL-GRID.');
    assert.equal(text(one(box, 'panda-job-ran')), 'ran 4 s on pilot 3');
    assert.equal(byClass(box, 'panda-job-usage').length, 0);  // an older server: no words
    const measured = renderJob({ ...job, peak_rss_mb: 231.4, cpu_s: 3.9,
      usage: 'peak memory 231 MB, CPU 3.90 s (98 % of its 4.00 s run)' }, NOW, actions);
    assert.equal(text(one(measured, 'panda-job-usage')),
      'used: peak memory 231 MB, CPU 3.90 s (98 % of its 4.00 s run)');
    assert.equal(text(one(box, 'panda-error')), '[user] ValueError: <b>two</b> is bad');
    assert.ok(!elements(box).some(e => e.tag === 'b' && text(e) === 'two'));
    assert.match(text(one(box, 'panda-traceback')), /^Traceback/);
    assert.equal(text(one(box, 'panda-stdout')), 'hello\n');
    assert.equal(byClass(box, 'panda-stderr').length, 0);  // nothing printed there
    // its other attempt opens from here
    click(one(box, 'panda-attempt'));
    assert.deepEqual(calls, ['openJob 101']);
  });
});

describe('the sites and the header', () => {
  test('each site with its health, pilots, running and queued jobs', () => {
    const sites: Site[] = [
      { name: 'LOCAL-GRID', kind: 'grid', provisioner: 'local', state: 'online', reason: '',
        pilots: 2, queued: 4, running: 3, description: '' },
      { name: 'SLURM', kind: 'hpc', provisioner: 'slurm', state: 'offline',
        reason: 'sbatch failed', pilots: 0, queued: 1, running: 0, description: '' }];
    const box = renderSites(sites);
    const rows = byClass(box, 'panda-site-row');
    assert.deepEqual(rows.map(r => r.attrs.dataset), [{ site: 'LOCAL-GRID', health: 'online' },
      { site: 'SLURM', health: 'offline' }]);
    assert.deepEqual(rows[0].children.map(text), ['LOCAL-GRID', '2', '3', '4']);
    assert.equal(rows[1].attrs.title, 'SLURM: hpc site (slurm), offline (sbatch failed)');
    assert.equal(text(one(rows[1], 'panda-health-offline')), 'SLURMoffline: sbatch failed');
    assert.equal(byClass(rows[0], 'panda-site-health').length, 0);   // online: nothing more
  });

  test('with no server: why, and a button that starts one (disabled while starting)', () => {
    const { actions, calls } = recorder();
    const idle = renderServerDown('no panda-lab server has run for /home', null, actions);
    assert.ok(idle.attrs.className?.includes('panda-server-down'));
    assert.match(text(idle), /^no panda-lab server has run for \/homeStart the local server$/);
    click(one(idle, 'panda-start'));
    assert.deepEqual(calls, ['start']);
    const busy = renderServerDown('', 'starting…', actions);
    assert.equal(disabled(one(busy, 'panda-start')), true);
    assert.match(text(busy), /^no panda-lab server answers/);
    const failed = renderServerDown('x', 'could not start: port taken', actions);
    assert.equal(disabled(one(failed, 'panda-start')), false);
    assert.equal(text(one(failed, 'panda-start')), 'could not start: port taken');
  });
});

describe('the status bar', () => {
  const counts = { running: 3, prefetched: 31, waiting: 10, failed: 2, failed_tasks: 1 };

  test('running, prefetched and waiting apart; no server; nothing known yet', () => {
    assert.equal(statusText(counts, false),
      'PanDA: 3 running · 31 prefetched · 10 waiting · 2 failed');
    assert.equal(statusText(counts, true), 'PanDA: no server');
    assert.equal(statusText(null, false), 'PanDA');
  });

  test('the tooltip says what each number counts', () => {
    const lines = statusTooltip(counts, false).split('\n');
    assert.deepEqual(lines.slice(0, 3), ['3 running: jobs started on a pilot',
      '31 prefetched: jobs a pilot holds but has not started yet',
      '10 waiting: jobs not on any pilot yet']);
    assert.match(lines[3], /^2 failed: jobs whose last attempt failed \(in 1 task\), not retried/);
    assert.match(statusTooltip(null, true), /No panda-lab server/);
    assert.match(statusTooltip(null, false), /^running: jobs started on a pilot/);
  });
});

describe('the rules behind the buttons, from the vocabulary', () => {
  test('retry follows task_retryable, kill everything not final', () => {
    assert.deepEqual(VOCABULARY.task_states.filter(s => canRetry(s, VOCABULARY)),
      ['ready', 'running', 'finished', 'failed']);
    assert.deepEqual(VOCABULARY.task_states.filter(s => canKill(s, VOCABULARY)),
      ['defined', 'ready', 'scouting', 'running', 'paused']);
  });

  test('job states a vocabulary does not know still show, after the known ones', () => {
    assert.deepEqual(statesShown({ A: { zombie: 1, failed: 2, defined: 0 } }, VOCABULARY),
      ['failed', 'zombie']);
    assert.deepEqual(statesShown({ A: { running: 1, failed: 2 } }, null), ['failed', 'running']);
  });

  test('ages, durations and counts as a person reads them', () => {
    assert.deepEqual([age(NOW - 5, NOW), age(NOW - 600, NOW), age(NOW - 10800, NOW),
      age(NOW + 3, NOW)], ['5 s', '10 min', '3 h', '0 s']);
    assert.deepEqual([duration(0.42), duration(42), duration(185), duration(7800)],
      ['0.4 s', '42 s', '3 min 5 s', '2 h 10 min']);
    assert.deepEqual([count(0), count(999), count(1234567)], ['0', '999', '1,234,567']);
  });
});
