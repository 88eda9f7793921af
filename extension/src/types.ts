/**
 * What the panel's REST API (panda_lab/jupyter/server_extension.py, under /panda-lab/)
 * answers, as typed records.  The fields are those of the panda-lab server's store
 * (panda_lab/store: tasks.py `_task_dict`, `get_task`, `_job_dict`; sites.py
 * `list_sites`) and event stream (panda_lab/server/events.py), passed through.
 *
 * State names are plain strings here on purpose: their meaning (which are final, which
 * may be retried, in which order they are shown) comes from the server's vocabulary
 * (`Vocabulary`, GET /panda-lab/states), never from literals retyped in this package.
 */

/** `panda_lab.model.states.vocabulary()`: every state and named set, in life-cycle order. */
export interface Vocabulary {
  task_states: string[];
  job_states: string[];
  pilot_states: string[];
  site_states: string[];
  task_final: string[];
  task_retryable: string[];
  task_active: string[];
  job_final: string[];
  job_queued: string[];
  job_active: string[];
  job_unsuccessful: string[];
  job_retryable: string[];
  pilot_final: string[];
  /** The tones a task's outcome is shown in, least urgent first (absent from servers
   * older than the outcome). */
  tones?: string[];
}

/** GET status while a panda-lab server answers (its /api/info, plus where it is). */
export interface ServerUp {
  running: true;
  url: string;
  home: string;
  version: string;
  time: number;
  database: string;
  sites: string[];
  heartbeat_timeout: number;
  task_lease: number;
}

/** What any endpoint answers (HTTP 503) while no panda-lab server answers. */
export interface ServerDownBody {
  running: false;
  message: string;
  hint: string;
}

/**
 * A task's outcome as the server says it (`panda_lab.model.outcome.task_outcome`): the
 * one label every surface shows, the tone it is coloured in, and what was lost.
 */
export interface TaskSummary {
  /** One line, e.g. "finished: 10 of 40 jobs failed (1,234 events not processed)". */
  label: string;
  /** "success" | "warning" | "danger" | "active" | "neutral". */
  tone: string;
  /** Logical jobs that ended (or end) without a result. */
  jobs_lost: number;
  /** Input events of those jobs; null for a task without an input dataset. */
  events_lost: number | null;
  /** Seconds from submission to the end (to now while active); null when unknown. */
  wall_s: number | null;
  /** Mean events per second over `wall_s` of a final task; null otherwise. */
  rate: number | null;
}

/** One task as GET tasks lists it (newest first). Times are Unix seconds. */
export interface Task {
  id: number;
  name: string;
  owner: string;
  state: string;
  /** The site (or site expression) the task asked for, e.g. "ANY". */
  site: string;
  options: Record<string, unknown>;
  open: boolean;
  lease_until: number | null;
  n_jobs: number;
  /** Logical jobs with a result. */
  n_done: number;
  /** Every attempt's count by job state. */
  attempts_by_state: Record<string, number>;
  created_at: number;
  modified_at: number;
  ended_at: number | null;
  /** Why the task is where it is (how it ended, why it was closed). */
  message: string;
  /** The sites its jobs went to, sorted. */
  sites: string[];
  /** Its outcome; absent from servers older than the outcome. */
  summary?: TaskSummary;
}

/** Failed attempts sharing a category and message (panda_lab/jupyter/snapshot.py). */
export interface ErrorGroup {
  category: string;
  message: string;
  count: number;
  example_job: number;
  traceback: string;
}

/** One attempt as the task stream and the job table read it. Times are Unix seconds. */
export interface Attempt {
  id: number;
  job_index: number;
  attempt: number;
  state: string;
  site: string | null;
  pilot_id: number | null;
  created_at: number;
  /** When its pilot started it; null before (or when the pilot never said). */
  started_at: number | null;
  ended_at: number | null;
  error_category: string | null;
  error_message: string | null;
  /** What its payload used, measured by its pilot: peak resident memory during the job
   * (MB) and CPU seconds; null (or absent) when not measured, never 0. */
  peak_rss_mb?: number | null;
  cpu_s?: number | null;
}

/** A pilot that ran a task's attempts, with its memory and CPU (its latest report). */
export interface PilotUsage {
  id: number;
  site: string;
  state: string;
  /** Resident memory of the pilot and its workers (MB), CPU seconds since it started,
   * CPU lately in % of one core; null before its first report. */
  rss_mb: number | null;
  cpu_s: number | null;
  cpu_pct: number | null;
  /** The server's words: its usage now and its attempts' here. */
  usage: string;
}

/** A job as listed with its task: the latest attempt of one logical job. */
export interface JobSummary extends Attempt {
  /** How many attempts the logical job had. */
  attempts: number;
}

/** One input range of an analysis task and the fate of its job (GET
 * /api/tasks/{id}/report, what `task.report()` shows); a file no job reads has
 * `job_index` null. */
export interface ReportRow {
  job_index: number | null;
  file_index: number;
  path: string;
  tree: string;
  /** Entry numbers, stop exclusive; null for a file found bad at registration. */
  start: number | null;
  stop: number | null;
  scout: boolean;
  state: string | null;
  attempts: number;
  sites: string[];
  error_category: string | null;
  error: string | null;
  /** Whether its result is in the merged result. */
  merged?: boolean;
}

/** GET tasks/{id}: the task, its latest attempts by site and state, its error groups. */
export interface TaskDetail extends Omit<Task, 'sites'> {
  /** site ("-" before brokerage) → job state → latest attempts. */
  jobs_by_site: Record<string, Record<string, number>>;
  errors: ErrorGroup[];
  /** The latest attempt of the first logical jobs (500 by default). */
  jobs: JobSummary[];
  /** How many logical jobs the task has listed in all. */
  n_jobs_listed: number;
  /** Every attempt (the first 2000), oldest first: the task stream. */
  attempts: Attempt[];
  /** The pilots of those attempts, with their memory and CPU (older servers: absent). */
  pilots?: PilotUsage[];
  /** An analysis task's input ranges (`task.report()`); null for other tasks. */
  report: ReportRow[] | null;
}

/** GET jobs/{id}: one attempt, its brokerage decision, history and output tails. */
export interface Job {
  id: number;
  task_id: number;
  job_index: number;
  attempt: number;
  state: string;
  site: string | null;
  pilot_id: number | null;
  priority: number;
  cores: number;
  memory_mb: number;
  walltime_s: number;
  max_attempts: number;
  created_at: number;
  modified_at: number;
  heartbeat_at: number | null;
  started_at: number | null;
  ended_at: number | null;
  error_category: string | null;
  error_message: string | null;
  error_traceback: string | null;
  error_exception: string | null;
  stdout_tail: string | null;
  stderr_tail: string | null;
  /** Brokerage's record: candidates, weights, "picked". */
  broker_info: Record<string, unknown>;
  retry_of: number | null;
  history: { state: string; time: number; info: string }[];
  /** Ids of every attempt of this logical job, oldest first. */
  attempts: number[];
  /** The brokerage's own sentence for the decision, where the server gives one. */
  explanation?: string | null;
  /** What its payload used: peak memory (MB) and CPU seconds, null when not measured. */
  peak_rss_mb?: number | null;
  cpu_s?: number | null;
  /** The same in words ("peak memory 231 MB, CPU 4.10 s (98 % of its 4.20 s run)"). */
  usage?: string;
}

/** One site as GET sites lists it. */
export interface Site {
  name: string;
  kind: string;
  provisioner: string;
  /** Its health: one of the vocabulary's site_states. */
  state: string;
  reason: string;
  pilots: number;
  queued: number;
  running: number;
  description: string;
}

/** GET counts: what the status bar shows (panda_lab/store/rows/counts.py). */
export interface Counts {
  /** Jobs started on a pilot. */
  running: number;
  /** Jobs dispatched to a pilot that has not started them yet. */
  prefetched: number;
  /** Jobs waiting for a pilot. */
  waiting: number;
  /** Logical jobs whose newest attempt failed, in tasks not aborted, not acknowledged. */
  failed: number;
  /** The tasks those failed jobs belong to. */
  failed_tasks: number;
}

/** One job change of an event (`JobChange.as_event` in panda_lab/store/base.py). */
export interface JobChangeEvent {
  id: number;
  task: number;
  index: number;
  attempt: number;
  site: string | null;
  state: string;
  error_category?: string;
  error?: string;
}

/**
 * One message of the event stream (GET events).  Each carries one batch of changes, or
 * says the stream began (`hello`), overflowed or the server shuts down; other kinds
 * (`merge_error`, `partial`) name the task they concern.
 */
export interface PandaEvent {
  seq?: number;
  time?: number;
  hello?: boolean;
  jobs?: JobChangeEvent[];
  tasks?: { id: number; state: string }[];
  overflow?: boolean;
  shutdown?: Record<string, unknown>;
  [kind: string]: unknown;
}
