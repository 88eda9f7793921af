"""``%%panda``: a notebook cell run as a job, and ``%panda_attach`` to bring one back.

``%load_ext panda_lab`` registers them.  The cell's output appears while it runs (the
pilot sends it every half second), the names it binds come back into the notebook, an
exception shows the remote traceback, and interrupting the kernel kills the task (with
``--detach`` it is left running, for ``%panda_attach`` later, even from a new kernel).

The rule of ``--parallel N``: the cell runs as N jobs.  Each sees ``PANDA_INDEX``
(0 to N-1) and ``PANDA_COUNT`` (N).  With ``--over NAME`` the notebook sequence ``NAME``
is cut into N contiguous chunks and job i sees only chunk i under that name; every other
variable is sent whole.  Each name the cell binds comes back as a list of N values, in
job order, for the notebook to combine (``sum(counts)``, ``hist_a + hist_b``).

Output travels as tails of 4000 characters: what a cell prints faster than it is looked
at shows as a marker line, ``[... N lines (M characters) not shown; full output:
`panda-lab output JOB` or lab.job_output(JOB)]``, never as a line cut without a word.
The full output is kept up to ``--output-limit`` characters per stream (see
:mod:`panda_lab.output`).

Which names travel (:mod:`panda_lab.jupyter.cells`): the notebook variables the cell
reads go to the job, whatever they look like (``_k``, ``__x``, a rebound ``sum``), and the
names it binds come back; a name it deletes (by every job) is deleted from the notebook.
IPython's own names (``_``, ``__``, ``___``, ``_i``, ``_ii``, ``_iii``, ``_iN``, ``_N``,
``_ih``, ``_oh``, ``_dh``, ``In``, ``Out``, and ``get_ipython``, ``exit``, ``quit``,
``open`` unless rebound) go neither way.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from panda_lab.client.futures import exception_from_job
from panda_lab.jupyter.cells import CellError, bound_names, capture, new_output, run_cell, split
from panda_lab.model import TASK_FINAL, TaskState

if TYPE_CHECKING:  # pragma: no cover
    from panda_lab.client.session import Lab


#: Seconds between two looks at a running cell's state and output.
POLL = 0.5


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%panda", add_help=False, exit_on_error=False,
                                description="Run this cell as a panda-lab job.")
    p.add_argument("--site", default="ANY", help="a site, or ANY for brokerage (default)")
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--memory", type=int, default=0, help="MB the job needs")
    p.add_argument("--walltime", type=float, default=0.0, help="seconds before it is killed")
    p.add_argument("--retries", type=int, default=2, help="retries of system failures")
    p.add_argument("--name", default="cell", help="the task's name")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run the cell as N jobs (PANDA_INDEX tells each which it is)")
    p.add_argument("--over", default=None, metavar="NAME",
                   help="with --parallel: cut the sequence NAME into N chunks, one per job")
    p.add_argument("--output-limit", type=int, default=None, metavar="CHARS",
                   help="characters of each job's stdout/stderr kept in full (for "
                        "panda-lab output JOB); the cell shows the last 4000")
    p.add_argument("--detach", action="store_true",
                   help="an interrupt leaves the task running (attach with %%panda_attach)")
    return p


def parse(line: str) -> argparse.Namespace:
    """Parse the magic's line; bad options are a ``UsageError`` (IPython shows it short).

    Returns the options as an ``argparse.Namespace`` (``site``, ``cores``, ``name``,
    ``parallel``, ``over``, ``output_limit``, ``detach``...).  Raises
    ``IPython.core.error.UsageError`` naming the option for an unknown option, a value
    of the wrong type, unbalanced quotes, ``--parallel`` < 1, ``--over`` without
    ``--parallel N`` > 1, or a negative ``--output-limit``; the message ends with the
    usage line."""
    parser = _parser()
    try:
        args, rest = parser.parse_known_args(shlex.split(line))
    except (argparse.ArgumentError, ValueError) as exc:
        raise UsageError(f"%%panda: {exc}\n{parser.format_usage()}") from None
    if rest:
        raise UsageError(f"%%panda: unknown option(s) {' '.join(rest)}\n"
                         f"{parser.format_usage()}")
    if args.parallel < 1:
        raise UsageError("%%panda: --parallel needs at least 1 job")
    if args.over and args.parallel == 1:
        raise UsageError("%%panda: --over needs --parallel N (N > 1)")
    if args.output_limit is not None and args.output_limit < 0:
        raise UsageError("%%panda: --output-limit needs a number of characters, 0 or more")
    return args


class CellFollower:
    """Prints a cell task's new output as it comes, job by job and attempt by attempt."""

    def __init__(self, lab: Lab, task: int, count: int) -> None:
        self.lab, self.task, self.count = lab, task, count
        self.seen: dict[tuple[int, int, str], str] = {}

    def show(self) -> None:
        """Write what each job's stdout/stderr tail adds since the last look to this
        process's stdout/stderr (each line tagged ``[job_index]`` with several jobs).
        Raises what ``lab.jobs`` raises (``ApiError``, ``ServerUnreachable``)."""
        for job in sorted(self.lab.jobs(self.task), key=lambda j: j["job_index"]):
            for stream, key in ((sys.stdout, "stdout_tail"), (sys.stderr, "stderr_tail")):
                text = job.get(key) or ""
                spot = (job["job_index"], job["attempt"], key)
                old = self.seen.get(spot, "")
                if text == old:
                    continue
                self.seen[spot] = text
                delta = new_output(old, text)
                if self.count > 1:
                    tag = f"[{job['job_index']}] "
                    delta = "".join(tag + ln for ln in delta.splitlines(keepends=True))
                stream.write(delta)
                stream.flush()

    def follow(self) -> dict:
        """Show output until the task is final; returns its record (the server's task
        dict, ``state`` in ``TASK_FINAL``).  Asks the server to wait up to
        :data:`POLL` seconds per look.  Raises what the client raises (``ApiError``,
        ``ServerUnreachable``); ``KeyboardInterrupt`` propagates."""
        while True:
            info = self.lab.api.get(f"/api/tasks/{self.task}/wait", timeout=POLL)
            self.show()
            if info["state"] in TASK_FINAL:
                return info


def bring_back(lab: Lab, task: int, info: dict, namespace: dict[str, Any]) -> list[str]:
    """Put the names a finished cell task bound into ``namespace`` and take out those it
    deleted (with ``--parallel``: deleted by every job); raise the remote exception of a
    failed one.  Returns the names set, in the order the jobs bound them; with several
    jobs each name is set to the list of the jobs' values, in job order (``None`` for a
    job that did not bind it).

    Raises, for a task that did not end ``done``, its first failed job's exception as
    :func:`~panda_lab.client.futures.exception_from_job` rebuilds it (the user's own
    type, or ``RemoteError``/``JobKilled``/``JobFailed``), ``RuntimeError`` when it has
    no failed job, and ``UsageError`` for a task that is not a ``%%panda`` cell's."""
    if info["state"] != TaskState.DONE:
        failures = lab.failures(task)
        if not failures:
            raise RuntimeError(f"task {task} ended {info['state']} without a failed job")
        if len(failures) > 1:
            print(f"panda: {len(failures)} of {info['n_jobs']} jobs failed; the first:",
                  file=sys.stderr)
        raise exception_from_job(failures[0])
    results = lab.results(task)
    if any(not (isinstance(r, dict) and "values" in r) for r in results.values()):
        raise UsageError(f"task {task} is not a %%panda cell (its results are not a "
                         "cell's names); use lab.task(...).results()")
    count = info["n_jobs"]
    unsent: dict[str, str] = {}
    for r in results.values():
        unsent.update(r["unsent"])
    if count == 1:
        values = results[0]["values"]
    else:
        names = list(dict.fromkeys(n for i in sorted(results) for n in results[i]["values"]))
        values = {n: [results[i]["values"].get(n) for i in range(count)] for n in names}
    deleted = set.intersection(*(set(r.get("deleted", ())) for r in results.values()))
    namespace.update(values)
    for name in deleted.difference(values):
        namespace.pop(name, None)
    for name, why in unsent.items():
        print(f"panda: {name} stayed on the pilot (it cannot be pickled: {why})",
              file=sys.stderr)
    return list(values)


@magics_class
class PandaMagics(Magics):
    """The ``%%panda`` cell magic and the ``%panda_attach`` line magic."""

    def _lab(self) -> Lab:
        """The notebook's own ``lab`` when it holds one, else the local server."""
        from panda_lab.client.session import Lab, connect

        mine = self.shell.user_ns.get("lab") if self.shell is not None else None
        return mine if isinstance(mine, Lab) else connect()

    @cell_magic
    def panda(self, line: str, cell: str) -> None:
        """Run the cell as a job: ``%%panda [--site S] [--cores N] [--name NAME]
        [--parallel N [--over VAR]] [--detach]``.

        Waits for the task, showing its output, then sets the names the cell bound in
        the notebook (:func:`bring_back`).  Raises ``UsageError`` for bad options
        (:func:`parse`), a cell that is not plain Python, a variable it reads that cannot
        be pickled, or an ``--over`` name that is missing or not a sequence; the failed
        job's exception as :func:`bring_back` raises it; ``KeyboardInterrupt`` kills the
        task (with ``--detach`` leaves it running and returns)."""
        args = parse(line)
        ns = self.shell.user_ns
        try:
            names = bound_names(cell)
            variables = capture(cell, ns, self.shell.user_ns_hidden)
            chunks: list[dict | None] = [None] * args.parallel
            if args.over:
                if args.over not in ns:
                    raise CellError(f"--over {args.over}: no such variable in the notebook")
                chunks = [{args.over: c} for c in split(ns[args.over], args.parallel)]
                variables.pop(args.over, None)
        except CellError as exc:
            raise UsageError(f"%%panda: {exc}") from None
        lab = self._lab()
        fn = functools.partial(run_cell, cell, variables, names)
        task = lab.submit(fn, [(i, args.parallel, chunks[i]) for i in range(args.parallel)],
                          name=args.name, site=args.site, cores=args.cores,
                          memory_mb=args.memory, walltime_s=args.walltime,
                          retries=args.retries, output_limit=args.output_limit)
        jobs = "1 job" if args.parallel == 1 else f"{args.parallel} jobs"
        print(f"panda: task {task} ({args.name}), {jobs} at {args.site}", file=sys.stderr)
        self._run(lab, task, args.parallel, detach=args.detach)

    @line_magic
    def panda_attach(self, line: str) -> None:
        """Bring a cell task's names back (waiting for it if it still runs), even from a
        new kernel: ``%panda_attach TASK`` (an id or a name).

        An interrupt leaves the task running.  Raises ``UsageError`` without a task,
        :class:`~panda_lab.http.ApiError` (404) for an unknown one, and what
        :func:`bring_back` raises."""
        ref = line.strip()
        if not ref:
            raise UsageError("%panda_attach TASK: give a task id or name")
        lab = self._lab()
        info = lab.task_info(int(ref) if ref.isdigit() else ref)
        self._run(lab, info["id"], info["n_jobs"], detach=True)

    def _run(self, lab: Lab, task: int, count: int, detach: bool) -> None:
        follower = CellFollower(lab, task, count)
        try:
            info = follower.follow()
        except KeyboardInterrupt:
            if detach:
                print(f"panda: task {task} left running; %panda_attach {task} brings it "
                      "back", file=sys.stderr)
                return
            lab.kill(task)
            print(f"panda: task {task} killed", file=sys.stderr)
            raise
        bring_back(lab, task, info, self.shell.user_ns)


def load_ipython_extension(ipython: Any) -> None:
    """Register :class:`PandaMagics` on ``ipython`` (IPython's extension protocol)."""
    ipython.register_magics(PandaMagics)
