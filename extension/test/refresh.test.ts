/** The refresh rule: which parts of the panel an event of the stream makes stale, and how
 * a burst of events becomes one round of requests. */
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { ALL_PARTS, COALESCE_MS, Coalescer, Part, Selection, affected, shownParts } from '../src/refresh';
import type { JobChangeEvent, PandaEvent } from '../src/types';

/** Task 7 is open in the panel, and its job (attempt) 101. */
const OPEN: Selection = { task: 7, job: 101 };
const NOTHING_OPEN: Selection = { task: null, job: null };

/** One job change as the stream carries it (`JobChange.as_event`). */
function job(id: number, task: number, state = 'running'): JobChangeEvent {
  return { id, task, index: id % 100, attempt: 1, site: 'LOCAL-GRID', state };
}

/** A batch of changes as the server publishes it. */
function changes(over: Partial<PandaEvent>): PandaEvent {
  return { seq: 3, time: 1_700_000_000, ...over };
}

/** The parts, sorted, so that two sets compare by their members. */
function sorted(parts: Iterable<Part>): Part[] {
  return [...parts].sort();
}

describe('what an event makes stale', () => {
  test('the stream beginning, overflowing or the server shutting down: everything', () => {
    const every = sorted(ALL_PARTS);
    assert.deepEqual(every, ['counts', 'job', 'sites', 'status', 'task', 'tasks']);
    const events: PandaEvent[] = [
      { hello: true, time: 1_700_000_000 },
      { seq: 9, overflow: true },
      changes({ shutdown: {} })  // the server's shutdown message has an empty body
    ];
    for (const event of events) {
      for (const open of [OPEN, NOTHING_OPEN]) {
        const parts = affected(event, open);
        assert.deepEqual(sorted(parts), every, JSON.stringify(event));
        assert.notEqual(parts, ALL_PARTS);  // a set of its own: the caller may change it
      }
    }
  });

  test('jobs of another task: the task list, the sites and the counts, not the open views', () => {
    const parts = affected(changes({ jobs: [job(201, 8), job(202, 8, 'finished')] }), OPEN);
    assert.deepEqual(sorted(parts), ['counts', 'sites', 'tasks']);
    assert.deepEqual(sorted(affected(changes({ jobs: [job(201, 8)] }), NOTHING_OPEN)),
      ['counts', 'sites', 'tasks']);
  });

  test('a job of the open task that is not the open job: also the open task', () => {
    const parts = affected(changes({ jobs: [job(201, 8), job(102, 7, 'failed')] }), OPEN);
    assert.deepEqual(sorted(parts), ['counts', 'sites', 'task', 'tasks']);
  });

  test('the open job: also the job (and its task)', () => {
    const parts = affected(changes({ jobs: [job(101, 7, 'finished')] }), OPEN);
    assert.deepEqual(sorted(parts), ['counts', 'job', 'sites', 'task', 'tasks']);
    // the job part follows the open job's id alone
    assert.deepEqual(sorted(affected(changes({ jobs: [job(101, 7)] }), { task: 9, job: 101 })),
      ['counts', 'job', 'sites', 'tasks']);
  });

  test('task state changes: the task list and the counts; the open task if it is one', () => {
    const other = changes({ tasks: [{ id: 8, state: 'done' }] });
    assert.deepEqual(sorted(affected(other, OPEN)), ['counts', 'tasks']);
    const mine = changes({ tasks: [{ id: 8, state: 'done' }, { id: 7, state: 'failed' }] });
    assert.deepEqual(sorted(affected(mine, OPEN)), ['counts', 'task', 'tasks']);
    assert.deepEqual(sorted(affected(mine, NOTHING_OPEN)), ['counts', 'tasks']);
  });

  test('jobs and tasks in one batch: the union of both', () => {
    const event = changes({ jobs: [job(301, 9)], tasks: [{ id: 7, state: 'done' }] });
    assert.deepEqual(sorted(affected(event, OPEN)), ['counts', 'sites', 'task', 'tasks']);
  });

  test('another kind naming a task (partial, merge_error): the open task if it is that one', () => {
    const partial = changes({ partial: { task: 7, events: 1000 } });
    assert.deepEqual(sorted(affected(partial, OPEN)), ['task']);
    assert.deepEqual(sorted(affected(changes({ merge_error: { task: 7, job: 101 } }), OPEN)),
      ['task']);
    assert.deepEqual(sorted(affected(changes({ partial: { task: 8, events: 10 } }), OPEN)), []);
    assert.deepEqual(sorted(affected(partial, NOTHING_OPEN)), []);
    // an event naming no task never matches a panel with nothing open (null is not an id)
    assert.deepEqual(sorted(affected(changes({ partial: { task: null } }), NOTHING_OPEN)), []);
  });

  test('an event with no changes, or empty batches: nothing', () => {
    assert.deepEqual(sorted(affected(changes({}), OPEN)), []);
    assert.deepEqual(sorted(affected(changes({ jobs: [], tasks: [] }), OPEN)), []);
  });
});

/** A run that waits until the test ends it, and what each run was asked for. */
function recordedRuns(): { runs: Part[][]; finish: () => void; fail: () => void;
  run: (parts: Set<Part>) => Promise<void>; } {
  const runs: Part[][] = [];
  let end: { resolve: () => void; reject: (e: Error) => void } | null = null;
  return {
    runs,
    run: parts => {
      runs.push(sorted(parts));
      return new Promise<void>((resolve, reject) => { end = { resolve, reject }; });
    },
    finish: () => end?.resolve(),
    fail: () => end?.reject(new Error('the server did not answer'))
  };
}

/** Let the promises settle that a finished run left (setImmediate is not mocked). */
function settle(): Promise<void> {
  return new Promise(resolve => setImmediate(resolve));
}

function fakeTimers(t: TestContext): (ms: number) => void {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  return ms => t.mock.timers.tick(ms);
}

describe('coalescing refreshes', () => {
  test('a burst within the window is one run, with the union of the parts', async t => {
    const tick = fakeTimers(t);
    const { runs, run, finish } = recordedRuns();
    const coalescer = new Coalescer<Part>(run);
    coalescer.add(['tasks']);
    tick(100);
    coalescer.add(['sites', 'tasks']);
    tick(COALESCE_MS - 101);
    coalescer.add(['counts']);
    assert.deepEqual(runs, []);  // 249 ms after the first event: not yet
    tick(1);  // the window counts from the first event, a later one does not push it back
    assert.deepEqual(runs, [['counts', 'sites', 'tasks']]);
    finish();
    await settle();
    tick(10 * COALESCE_MS);
    assert.equal(runs.length, 1);  // nothing left over: no second run
  });

  test('the window is COALESCE_MS (250 ms) by default, or the delay given', t => {
    assert.equal(COALESCE_MS, 250);
    const tick = fakeTimers(t);
    const { runs, run } = recordedRuns();
    const coalescer = new Coalescer<Part>(run, 40);
    coalescer.add(['job']);
    tick(39);
    assert.deepEqual(runs, []);
    tick(1);
    assert.deepEqual(runs, [['job']]);
  });

  test('asked while a run goes on: kept, and run after it ends, never alongside', async t => {
    const tick = fakeTimers(t);
    const { runs, run, finish } = recordedRuns();
    const coalescer = new Coalescer<Part>(run);
    coalescer.add(['tasks', 'counts']);
    tick(COALESCE_MS);
    assert.deepEqual(runs, [['counts', 'tasks']]);
    coalescer.add(['task']);
    tick(COALESCE_MS);
    coalescer.add(['job', 'tasks']);
    tick(10 * COALESCE_MS);
    assert.equal(runs.length, 1);  // the first run has not ended: no second one beside it
    finish();
    await settle();
    tick(COALESCE_MS - 1);
    assert.equal(runs.length, 1);  // after a run, the next one waits a window too
    tick(1);
    assert.deepEqual(runs[1], ['job', 'task', 'tasks']);  // all asked meanwhile, once
    finish();
    await settle();
    tick(10 * COALESCE_MS);
    assert.equal(runs.length, 2);
  });

  test('a run that fails does not stop the next one', async t => {
    const tick = fakeTimers(t);
    const { runs, run, fail } = recordedRuns();
    const coalescer = new Coalescer<Part>(run);
    coalescer.add(['status']);
    tick(COALESCE_MS);
    coalescer.add(['sites']);
    fail();
    await settle();
    tick(COALESCE_MS);
    assert.deepEqual(runs, [['status'], ['sites']]);
  });

  test('asking for no parts starts no run', t => {
    const tick = fakeTimers(t);
    const { runs, run } = recordedRuns();
    const coalescer = new Coalescer<Part>(run);
    coalescer.add([]);
    coalescer.add(new Set<Part>());
    tick(10 * COALESCE_MS);
    assert.deepEqual(runs, []);
  });

  test('after dispose nothing runs: not what was pending, not what is asked later', t => {
    const tick = fakeTimers(t);
    const { runs, run } = recordedRuns();
    const coalescer = new Coalescer<Part>(run);
    coalescer.add(['tasks']);
    tick(COALESCE_MS - 1);
    coalescer.dispose();
    tick(10 * COALESCE_MS);
    coalescer.add(['sites']);
    tick(10 * COALESCE_MS);
    assert.deepEqual(runs, []);
  });

  test('disposed while a run goes on: nothing asked before or after dispose runs', async t => {
    const tick = fakeTimers(t);
    const { runs, run, finish } = recordedRuns();
    const coalescer = new Coalescer<Part>(run);
    coalescer.add(['tasks']);
    tick(COALESCE_MS);
    coalescer.add(['counts']);
    coalescer.dispose();
    coalescer.add(['sites']);
    finish();
    await settle();
    tick(10 * COALESCE_MS);
    assert.deepEqual(runs, [['tasks']]);
  });
});

describe('what the visible views show', () => {
  const list: ReadonlySet<Part> = new Set<Part>(['tasks', 'counts']);
  const detail: ReadonlySet<Part> = new Set<Part>(['task', 'job']);

  test('the union of the visible views, not of the others', () => {
    assert.deepEqual(sorted(shownParts([[true, list], [false, detail]], false)),
      ['counts', 'tasks']);
    assert.deepEqual(sorted(shownParts([[true, list], [true, detail]], false)),
      ['counts', 'job', 'task', 'tasks']);
    assert.deepEqual(sorted(shownParts([], false)), []);
  });

  test('a hidden browser tab: nothing, however many views are visible in it', () => {
    // the model fetches only what is shown, so a refresh pending when the tab was
    // hidden fetches nothing and reopens no event stream
    assert.deepEqual(sorted(shownParts([[true, list], [true, detail]], true)), []);
  });
});
