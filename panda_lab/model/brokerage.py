"""Brokerage: choose a site for each job.  Filter, then weigh by a cost model, then a
weighted random pick; every decision is kept on the job with its reasons.

The rules, and where they come from:

* Filters (PanDA's JEDI brokers drop candidates with a reason and count them per check):
  ``task`` (the site is not among those the job accepts), ``offline``, ``avoided`` (an
  earlier attempt failed there; dropped only while another site is left), ``link`` (the
  job's input can only be read over a link marked unusable, 0 MB/s).
* Weight (PanDA weighs by free capacity; JEDI's production broker adds a network weight
  from FTS throughput but, by default, only logs it: ``NW_ACTIVE`` false).  Here the
  weight is a product of factors, each shown on the decision:

  - ``free``: capacity / (1 + queued + running), PanDA's free-capacity weight, where the
    network term is not weighed; with it (policy ``network``), capacity x (prior job
    time / estimated time to finish the job there: queue wait + read + compute), the
    cost model.  Why the change: under a weighted random pick rechecked as jobs are
    placed, a weight ``f / (1 + n)`` gives a site a share of a bulk that grows only as
    ``sqrt(f)`` (``n dn ~ f``), so a site reading over a link ten times slower still got
    a third of the jobs a fast one got, and a queue building at the fast site soon
    outweighed the slow link.  A weight ``throughput x g(queue wait)`` (throughput =
    capacity x speed x network, jobs per unit time; g falling with the wait) gives
    shares in proportion to throughput, since loads in that proportion mean equal
    waits; g = prior / (wait + job time) also lets a slow job's own length count, so
    the weight falls with the estimated time the issue defines (roughly as its square
    for a site of given slots);
  - ``speed``: the time a job takes on a prior slot over the time it takes on this
    site's slots (``slot_rate``, events/s, measured from scouts and past jobs);
  - ``network``: the share of the job's time that is not spent reading remote input
    (compute / (compute + read), the CPU efficiency the link allows); read time = bytes
    not at the site / the best replica's link throughput + latency x requests.  A link
    never measured gets at least :data:`PROBE_FLOOR` for its first :data:`PROBE_JOBS`
    jobs, so that it is tried and learned.  A link is shared: its throughput is divided
    among the site's jobs reading over it at once (``readers``, at most its slots, each
    reading for its share of the job's time), as JEDI's network weight counts the files
    queued on a link;
  - ``locality``: :data:`DATA_NEAR` for a site near the job's data, where the network
    term is not used (policy ``locality``/``passive``, or input sizes unknown);
  - ``reliability``: 1 - f for a site failing a fraction f of its recent attempts
    (PanDA's site classes): only (1 - f) of its slot time yields results, so its share
    follows its useful capacity.  (Squaring it, to count the expected 1/(1 - f) attempts
    as well, under-used such a site in the simulator: bulks finished a job length later.)

  ``speed x network`` is (prior job time) / (job time here), so with free capacity
  alike the weight falls as the estimated job time grows; ``free`` carries the queue
  (and, with the network term weighed, the job's whole estimated time).
* Access: input not at a candidate is read remotely or staged in, whichever is
  estimated faster (:mod:`panda_lab.model.staging`); a file in the site's cache counts
  as local, so a site that holds the data wins the next job over it.
* Pick: at random by weight with the caller's generator (seeded: reproducible); the
  loads are updated as jobs are placed, so a bulk submission spreads, and the bulk's
  draws are spread evenly over [0, 1) (:class:`_Draws`), so its shares follow the
  weights instead of scattering around them.  A placement changes the picked site's
  load only, so in a call the candidates of each request shape are kept with their
  weights and only the picked site is weighed again (the same numbers as weighing all,
  so the same draws; 28 -> 7 us a placement for 20 sites).

Pure: a snapshot in (requests, loads, links), decisions out; the store calls it inside
the transaction that inserts the attempts it places, the simulator calls the same code.
The explanation helpers are in :mod:`panda_lab.model.explain`.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from panda_lab.model.network import PRIOR, Link, LinkEstimate, effective
from panda_lab.model.staging import Access, staged_cost
from panda_lab.model.states import SiteState

#: The site name that lets brokerage choose among every site.
ANY = "ANY"


class Policy(StrEnum):
    """How brokerage weighs the candidates that pass the filters."""

    #: The cost model with the network term applied (the default).
    NETWORK = "network"
    #: The network term computed and shown, not applied (PanDA's ``NW_ACTIVE`` false).
    PASSIVE = "passive"
    #: No network term: free capacity, speed, reliability and the data-locality factor.
    LOCALITY = "locality"
    #: Each passing candidate in turn, for comparison.
    ROUND_ROBIN = "round-robin"
    #: The passing candidate with the fewest jobs per slot, for comparison.
    LEAST_LOADED = "least-loaded"


#: The network switch of a server or a task (``active``/``passive``/``off``) as a policy.
NETWORK_MODES: dict[str, Policy] = {"active": Policy.NETWORK, "passive": Policy.PASSIVE,
                                    "off": Policy.LOCALITY}

#: How much more a site near the job's data weighs than one that would read it remotely,
#: where the network term is not used.  Over equally loaded sites a near site's share of a
#: bulk grows as the square root of the factor (weights are rechecked as jobs are
#: placed): 9 gives it three times the jobs of each other site.
DATA_NEAR = 9.0
#: Events per second of a slot never measured, when no site of the snapshot was measured
#: either (else their median is the prior): a coffea columnar analysis of NanoAOD reads
#: some 10^4-10^5 events/s per core; the low end keeps an unmeasured site modest.
PRIOR_SLOT_RATE = 20_000.0
#: Seconds a job costs before it reads or computes (payload start, imports); it keeps the
#: speed and network factors finite for jobs of unknown size.
JOB_START_S = 1.0
#: Least network factor of a link never measured.  One quarter of a local site's weight:
#: enough that the first bulk over such a link sends it a few jobs (whose reports then
#: replace the prior), little enough that a really slow link costs only those few.
PROBE_FLOOR = 0.25
#: Jobs an unmeasured link gets at the probing floor: once this many are queued or
#: running over it, it is weighed on its prior like any other until their reports come.
PROBE_JOBS = 2
#: Least reliability factor: a site failing every attempt still gets an occasional job,
#: so its recovery is noticed.
RELIABILITY_FLOOR = 0.02


def sites_of(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The sites a job or task accepts, from what a user gave: ``None``, ``""`` or an
    empty list mean any site (``("ANY",)``); a string is a comma-separated list."""
    if value is None or value == "":
        return (ANY,)
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip()) or (ANY,)
    return tuple(value) or (ANY,)



def passed_at(info: dict, site: str) -> bool:
    """Whether a decision's ``info`` (:class:`Choice`) let ``site`` pass its filters: a
    candidate it weighed (``weights``), or, for a decision recorded without them, a site
    the job accepts (``sites``) that it did not reject (``rejected``).  What a job waiting
    at one site needs before another site's pilot may take it (store/rows/jobs.py,
    ``dispatch``, the sites sharing a machine's cores)."""
    weights = info.get("weights")
    if weights is not None:
        return site in weights
    accepted = info.get("sites") or [ANY]
    return (ANY in accepted or site in accepted) and site not in (info.get("rejected") or {})

@dataclass
class SiteLoad:
    """What brokerage knows of a site when it decides."""

    name: str
    kind: str
    state: str            # a SiteState: "online" or "offline"
    capacity: int         # slots of live pilots, or the slots the site is configured for
    queued: int = 0       # assigned + activated jobs waiting there
    running: int = 0      # jobs on pilots there
    reason: str = ""
    endpoint: str = ""    # the storage endpoint near the site, if it names one
    #: Events per second per slot measured there (scouts, past jobs); None: a prior.
    slot_rate: float | None = None
    #: Fraction of recent attempts that failed there, 0..1.
    failure_rate: float = 0.0
    #: Input files held in the site's stage-in cache (they count as local).
    cached: frozenset[str] = frozenset()
    #: Mean seconds of a job there, for the queue-wait estimate; None: this job's own.
    mean_job_s: float | None = None
    #: Endpoint -> jobs queued or running there that read their input from it: they share
    #: the link (JEDI's network weight counts the files queued on a link likewise).
    #: Brokerage adds the jobs it places.
    readers: dict[str, int] = field(default_factory=dict)
    #: Bytes the site's stage-in cache holds at most (0: no cache; its jobs read remote
    #: input over the network, never stage it in): :mod:`panda_lab.model.staging`.
    cache_bytes: int = 0


@dataclass
class Request:
    """One job to place: the sites it accepts, the sites to avoid if possible, and what
    it reads."""

    sites: tuple[str, ...] = (ANY,)
    avoid: frozenset[str] = field(default_factory=frozenset)
    #: Storage endpoints holding the job's input: sites near one of them are preferred.
    near: frozenset[str] = field(default_factory=frozenset)
    #: Events the job processes (0: unknown).
    events: int = 0
    #: Endpoint -> bytes of this job's input stored there (replicas: the same bytes at
    #: several endpoints).
    input_bytes: dict[str, int] = field(default_factory=dict)
    #: The job's input files (names as in a site's ``cached``).
    files: tuple[str, ...] = ()
    #: Read requests the job makes (each costs the link's latency).
    read_requests: int = 1
    #: Bytes of the job's input files whole (what a stage-in copies; 0: unknown).
    file_bytes: int = 0


@dataclass
class Choice:
    """Where one request goes (``site``; never None from :func:`choose`) and why.

    ``info`` (kept on the job as ``broker_info``, JSON, floats rounded) is ``{"picked",
    "policy", optional "read_from": the endpoint whose replica the job should read when
    it reads remotely (the best link's), "access" (the pick's candidate's), "weights":
    {site: weight} of the candidates that passed, "rejected": {site: reason} (offline,
    avoided, link), optional "near_data": [site], optional "note", "candidates":
    [{"site", "passed", "filter", "reason", "factors": {"free", "speed", "locality",
    "network", "reliability"}, "est": {"queue_s", "read_s", "compute_s", "total_s"},
    "access": "local"|"remote"|"stage-in"|"cache" (:class:`~.staging.Access`), optional
    "link": {"endpoint", "mbps", "source", "observations"}, "weight", "picked"}]}``; a
    candidate that failed a filter has ``factors`` and ``est`` None and weight 0."""

    site: str | None
    info: dict


class BrokerageError(ValueError):
    """No site can take the job; the message says why."""


class _Link:
    """Link lookup: the caller's links (or estimates), else the prior."""

    def __init__(self, links: Mapping[tuple[str, str], Link | LinkEstimate] | None,
                 now: float | None) -> None:
        self.links = links or {}
        self.now = now
        self.cache: dict[tuple[str, str], Link] = {}

    def get(self, endpoint: str, site: str) -> Link:
        key = (endpoint, site)
        link = self.cache.get(key)
        if link is None:
            got = self.links.get(key)
            if isinstance(got, LinkEstimate):
                link = effective(got, None, self.now if self.now is not None else 0.0)
            elif got is None:
                link = Link(endpoint, site, PRIOR.mbps, PRIOR.latency_ms)
            else:
                link = got
            self.cache[key] = link
        return link


class _Static:
    """What a candidate costs a job whatever its queue: kept per request shape in a call
    (a bulk of like jobs computes it once per site)."""

    __slots__ = ("access", "compute_s", "fixed", "lat_s", "link", "locality", "near",
                 "prior_s", "read_s", "remote", "speed", "use_net", "work", "xfer_s")


class _Cost:
    """The factors and estimates of one passing candidate."""

    __slots__ = ("free", "network", "queue_s", "read_s", "reliability", "st", "weight")


_INF = float("inf")


def _sig(x: float) -> float:
    """``x`` to 4 significant digits, for the record (a weight over a slow link can be
    far below 1e-4)."""
    return float(f"{x:.4g}")


def _static(req: Request, s: SiteLoad, prior_rate: float, links: _Link, policy: Policy,
            nbytes: int) -> _Static:
    st = _Static()
    st.fixed = None
    ib = req.input_bytes
    local = ib.get(s.endpoint, 0) if s.endpoint and nbytes else 0
    in_cache = sum(f in s.cached for f in req.files) if req.files and s.cached else 0
    if in_cache:
        local = max(local, nbytes * in_cache // len(req.files))
    remote = nbytes - local if nbytes > local else 0
    read_s, best = 0.0, None
    if remote:
        read_s = _INF
        for ep, held in ib.items():
            if held > 0 and ep != s.endpoint:
                link = links.get(ep, s.name)
                t = link.read_s(remote, req.read_requests)
                if best is None or t < read_s:
                    read_s, best = t, link
    xfer_s = remote / (best.mbps * 1e6) if best is not None and best.mbps > 0 else 0.0
    lat_s = max(req.read_requests, 1) * best.latency_ms / 1e3 if best is not None else 0.0
    access = Access.CACHE if req.files and in_cache == len(req.files) else \
        Access.REMOTE if remote else Access.LOCAL
    if remote and best is not None and s.cache_bytes and req.file_bytes:
        staged = staged_cost(best, remote, req.read_requests, req.file_bytes, len(req.files),
                             in_cache, s.cache_bytes)
        if staged is not None:  # cheaper than reading remotely: model/staging.py
            access, (read_s, xfer_s, lat_s) = Access.STAGE_IN, staged
    if local and (s.endpoint, s.name) in links.links:
        # The site's own storage is read over a link too: free while nothing is known of
        # it, its declared or learned throughput once something is (a slow local disk
        # or a throttled door is then seen like a slow remote link).
        own = links.get(s.endpoint, s.name)
        read_s += own.read_s(local, req.read_requests)
        xfer_s += local / (own.mbps * 1e6) if own.mbps > 0 else 0.0
        lat_s = max(lat_s, max(req.read_requests, 1) * own.latency_ms / 1e3)
        best = best or own
    st.read_s, st.link, st.remote, st.access = read_s, best, remote, access
    st.xfer_s, st.lat_s = xfer_s, lat_s
    rate = s.slot_rate or prior_rate
    st.compute_s = compute_s = req.events / rate if req.events else 0.0
    st.work = work = compute_s + JOB_START_S
    st.prior_s = prior_s = req.events / prior_rate + JOB_START_S
    st.speed = prior_s / work if req.events else 1.0
    st.near = near = (bool(s.endpoint) and (s.endpoint in req.near or local > 0)) or (
        nbytes > 0 and remote == 0)
    st.use_net = use_net = policy is Policy.NETWORK and nbytes > 0
    st.locality = DATA_NEAR if near and not use_net else 1.0
    return st


def _read(st: _Static, s: SiteLoad, cap: int) -> float:
    """Seconds the job would read for at ``s``.  Its link is shared by the site's other
    jobs reading over it (``k``: at most its other slots), each reading for its share of
    the job's time, so ``r = x (1 + k r / (r + w)) + l`` (``x`` transfer alone, ``l``
    latency, ``w`` the rest of the job): the positive root of that quadratic."""
    readers = s.readers.get(st.link.endpoint, 0) if s.readers else 0
    k = readers if readers < cap - 1 else cap - 1
    x, lat, w = st.xfer_s, st.lat_s, st.work
    if k <= 0:
        return x + lat
    b = w - x * (1 + k) - lat
    return (-b + math.sqrt(b * b + 4 * (x + lat) * w)) / 2


def _network(st: _Static, s: SiteLoad, cap: int) -> tuple[float, float]:
    """``(read seconds, network factor)`` of a candidate with a remote read."""
    read_s = _read(st, s, cap)
    network = st.work / (st.work + read_s)
    if network < PROBE_FLOOR and st.link.observations == 0 and \
            (s.readers.get(st.link.endpoint, 0) if s.readers else 0) < PROBE_JOBS:
        network = PROBE_FLOOR
    return read_s, network


def _queue_s(st: _Static, s: SiteLoad, cap: int, job_s: float) -> float:
    """Seconds the job waits at ``s``, as the site's backlog: the jobs queued or running
    there over its slots, times the site's mean job time (or this job's, ``job_s``).
    The fluid estimate (a slot frees every job time / slots): it counts the jobs there
    while slots are still free, too, so the weight falls with every job placed (they
    share the site's links and its pilots' dispatch), as PanDA's free-capacity weight
    does."""
    busy = s.queued + s.running
    if busy <= 0:
        return 0.0
    return busy / cap * (s.mean_job_s if s.mean_job_s is not None else job_s)


def _timed(st: _Static, s: SiteLoad, cap: int) -> tuple[float, float, float]:
    """``(free factor, network factor, read seconds)`` of the cost model (policy
    ``network``): ``free`` = slots x (prior job time / estimated time to finish the job
    there, queue wait + read + compute)."""
    if st.link is not None:
        read_s, network = _network(st, s, cap)
    else:
        read_s, network = 0.0, 1.0
    # the job's time as the network factor has it (work / network: work + read, or the
    # probing floor's, so that a link never measured is tried)
    job_s = st.work / network
    total = _queue_s(st, s, cap, job_s) + job_s
    return cap * st.prior_s / total, network, read_s


def _weight(st: _Static, s: SiteLoad) -> float:
    cap = s.capacity if s.capacity > 1 else 1
    fr = 1.0 - s.failure_rate
    rel = fr if fr > RELIABILITY_FLOOR else RELIABILITY_FLOOR
    if st.use_net:
        free, network, _ = _timed(st, s, cap)
        return free * st.speed * network * rel
    w = cap / (1.0 + s.queued + s.running) * st.speed * st.locality * rel
    return w


def _cost(st: _Static, s: SiteLoad, policy: Policy, weight: float | None = None) -> _Cost:
    """The whole record of a candidate (its weight as :func:`_weight`, or ``weight``
    when the caller has it)."""
    c = _Cost()
    c.st = st
    cap = s.capacity if s.capacity > 1 else 1
    read_s, network = _network(st, s, cap) if st.link is not None else (0.0, 1.0)
    c.read_s = read_s
    c.network = None if policy is Policy.LOCALITY else network
    c.queue_s = _queue_s(st, s, cap, st.work + read_s)
    c.free = _timed(st, s, cap)[0] if st.use_net else cap / (1.0 + s.queued + s.running)
    fr = 1.0 - s.failure_rate
    c.reliability = fr if fr > RELIABILITY_FLOOR else RELIABILITY_FLOOR
    c.weight = _weight(st, s) if weight is None else weight
    return c


def _record(s: SiteLoad, c: _Cost, reason: str, picked: bool,
            weight: float | None = None) -> dict:
    """A passing candidate's record; ``weight``: :func:`_sig` of its weight when the
    caller has it."""
    st = c.st
    read, q, comp = c.read_s, c.queue_s, st.compute_s
    net = c.network
    fixed = st.fixed
    if fixed is None:  # what does not move with the site's queue, made once per call
        link = st.link
        st.fixed = fixed = (round(st.speed, 4), round(comp, 3), str(st.access), None
                            if link is None else {"endpoint": link.endpoint,
                                                  "mbps": round(link.mbps, 2),
                                                  "source": link.source,
                                                  "observations": link.observations})
    out = {"site": s.name, "passed": True, "filter": None, "reason": reason,
           "factors": {"free": round(c.free, 3), "speed": fixed[0],
                       "locality": st.locality,
                       "network": None if net is None else round(net, 4),
                       "reliability": round(c.reliability, 4)},
           "est": {"queue_s": round(q, 3), "read_s": round(read, 3),
                   "compute_s": fixed[1], "total_s": round(q + read + comp, 3)},
           "access": fixed[2], "weight": _sig(c.weight) if weight is None else weight,
           "picked": picked}
    if fixed[3] is not None:  # read only, as the records are: shared within a call
        out["link"] = fixed[3]
    return out


def choose(
    requests: list[Request],
    loads: list[SiteLoad],
    rng: random.Random | None = None,
    *,
    links: Mapping[tuple[str, str], Link | LinkEstimate] | None = None,
    policy: Policy | str = Policy.NETWORK,
    now: float | None = None,
    record: bool = True,
) -> list[Choice]:
    """Place each request: one :class:`Choice` per request, in order.

    ``links`` maps ``(endpoint, site)`` to a :class:`~panda_lab.model.network.Link` (as
    :func:`~panda_lab.model.network.effective` gives) or a raw ``LinkEstimate`` (made
    effective at ``now``); a pair not there is the prior.  ``policy`` is a
    :class:`Policy` or its value.  ``loads`` are updated as jobs are placed (``queued``
    grows), so a bulk submission spreads.  A job whose every candidate fails a filter is
    kept: it is queued at its first accepted site (an online one if any) with a note, to
    wait there.  ``record=False`` (the simulator) keeps only ``{"picked", "policy"}`` in
    ``info``; the decisions are the same.  Raises :class:`BrokerageError` for a request
    naming an unknown site, or when there is no site at all."""
    rng = rng or random.Random()
    policy = Policy(policy)
    if not loads:
        raise BrokerageError("no site to choose from")
    by_name = {s.name: s for s in loads}
    measured = [s.slot_rate for s in loads if s.slot_rate]
    ctx = _Call(loads, statistics.median(measured) if measured else PRIOR_SLOT_RATE,
                _Link(links, now), policy, rng, record)
    everyone = ctx.everyone
    out: list[Choice] = []
    for req in requests:
        if ANY in req.sites:
            accepted = everyone
        else:
            for name in req.sites:
                if name not in by_name:
                    raise BrokerageError(f"unknown site {name!r}; known sites: "
                                         f"{', '.join(sorted(by_name)) or 'none'}")
            accepted = set(req.sites)
        out.append(ctx.place(req, accepted))
    return out


#: The golden ratio's conjugate: the step of the additive recurrence that spreads a
#: bulk's draws (the Weyl sequence, the most even of its kind; quasi-Monte Carlo's).
GOLDEN = (math.sqrt(5) - 1) / 2


class _Draws:
    """The uniform numbers behind one :func:`choose` call's weighted random picks.

    Each number is uniform on [0, 1), so each job alone is a weighted random pick, as
    PanDA's brokerage makes it.  Across the bulk they are not independent: the k-th is
    ``(u + k x GOLDEN) mod 1`` for one random ``u``, an additive recurrence, so the draws
    cover [0, 1) evenly and a bulk's shares follow the weights closely.  With independent
    draws, 8 jobs over three equal single-slot sites went 4/2/2 or 5/2/1 about half the
    time (a makespan of 4 or 5 jobs' time instead of 3); with these, 3/3/2 in 98 % of
    seeds, and 34 or 35 of 100 jobs at most on one of three (independent: up to 46)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.u, self.k = rng, None, 0

    def pick(self, weights: list[float]) -> int:
        """An index drawn with probability proportional to its weight (uniform if all
        are 0)."""
        total = sum(weights)
        if total <= 0:
            return self.rng.randrange(len(weights))
        if self.u is None:
            self.u = self.rng.random()
        r = (self.u + self.k * GOLDEN) % 1.0 * total
        self.k += 1
        for k, w in enumerate(weights):
            r -= w
            if r < 0:
                return k
        return len(weights) - 1


class _Shape:
    """The candidates of one request shape in the common case (every site accepted, none
    avoided), kept from one placement of a call to the next: the passing ones with their
    weights, and the filtered ones.  A placement changes the load of the site it picks
    only, so only that site's weight is weighed again (:meth:`_Call.refresh`); the
    weights are the same numbers the whole loop would give, so the draws are too."""

    __slots__ = ("at", "passing", "records", "rejected", "seen", "weights")

    def __init__(self) -> None:
        #: (load, static, index in ``loads``) of each candidate that passed
        self.passing: list[tuple[SiteLoad, _Static, int]] = []
        #: their weights, in the same order (empty where the policy does not weigh)
        self.weights: list[float] = []
        #: index in ``loads`` -> position in ``passing``
        self.at: dict[int, int] = {}
        #: site -> reason, of the offline sites and those behind an unusable link
        self.rejected: dict[str, str] = {}
        #: one entry per load: a filtered one's record, None for one that passed
        self.records: list[dict | None] = []
        #: placements of the call (``_Call.changes``) the weights account for
        self.seen = 0


class _Call:
    """One :func:`choose` call: its snapshot, and what it computed once for all jobs."""

    def __init__(self, loads: list[SiteLoad], prior_rate: float, links: _Link,
                 policy: Policy, rng: random.Random, record: bool) -> None:
        self.loads, self.prior_rate, self.links = loads, prior_rate, links
        self.policy, self.rng, self.record = policy, rng, record
        self.weigh = policy not in (Policy.ROUND_ROBIN, Policy.LEAST_LOADED) or record
        self.draws = _Draws(rng)
        #: the candidate records made in this call, by what they depend on (place())
        self.record_memo: dict[tuple, dict] = {}
        self.any_cache = any(s.cached for s in loads)
        self.everyone = {s.name for s in loads}
        self.online = [s for s in loads if s.state == SiteState.ONLINE]
        self.offline = {s.name: f"offline: {s.reason}" for s in loads
                        if s.state != SiteState.ONLINE}
        self.index = {s.name: i for i, s in enumerate(loads)}
        self.rejected_records: dict[tuple[str, str, str], dict] = {}
        self.shapes: dict[tuple, dict[str, _Static]] = {}
        self.common: dict[tuple, _Shape] = {}
        #: the index in ``loads`` of the site each placement of the call added a job to
        self.changes: list[int] = []
        #: weight -> :func:`_sig` of it: a bulk's records repeat a few weights many times
        self.sigs: dict[float, float] = {}

    def _rejected(self, s: SiteLoad, filt: str, reason: str) -> dict:
        # one record per (site, filter, reason) in a call: a bulk shares them
        key = (s.name, filt, reason)
        rec = self.rejected_records.get(key)
        if rec is None:
            self.rejected_records[key] = rec = {
                "site": s.name, "passed": False, "filter": filt, "reason": reason,
                "factors": None, "est": None, "access": None, "weight": 0.0, "picked": False}
        return rec

    def _static(self, statics: dict[str, _Static], req: Request, s: SiteLoad,
                nbytes: int) -> _Static:
        st = statics.get(s.name)
        if st is None:
            statics[s.name] = st = _static(req, s, self.prior_rate, self.links, self.policy,
                                           nbytes)
        return st

    def _common(self, req: Request, statics: dict[str, _Static], nbytes: int) -> _Shape:
        """Filter and weigh every online site for a request of a shape not seen yet in
        the common case (every site accepted, none avoided)."""
        e = _Shape()
        e.rejected = dict(self.offline)
        if self.record:
            e.records = [self._rejected(s, "offline", e.rejected[s.name])
                         if s.name in e.rejected else None for s in self.loads]
        for s in self.online:
            st = self._static(statics, req, s, nbytes)
            i = self.index[s.name]
            if st.read_s != _INF:
                e.at[i] = len(e.passing)
                e.passing.append((s, st, i))
                if self.weigh:
                    e.weights.append(_weight(st, s))
                continue
            e.rejected[s.name] = why = \
                f"link {st.link.endpoint} -> {s.name} unusable (0 MB/s)"
            if self.record:
                e.records[i] = self._rejected(s, "link", why)
        e.seen = len(self.changes)
        return e

    def refresh(self, e: _Shape) -> None:
        """Weigh again the candidates of ``e`` whose site took a job since it was last
        used in this call (all of them, if more placements than sites came between)."""
        changes, seen = self.changes, e.seen
        e.seen = len(changes)
        if seen == len(changes) or not e.weights:
            return
        passing, weights = e.passing, e.weights
        if len(changes) - seen > len(passing):
            for k, (s, st, _) in enumerate(passing):
                weights[k] = _weight(st, s)
            return
        at = e.at
        for i in set(changes[seen:]):
            k = at.get(i)
            if k is not None:
                s, st, _ = passing[k]
                weights[k] = _weight(st, s)

    def _filter(self, req: Request, accepted: set[str], statics: dict[str, _Static],
                nbytes: int, all_avoided: bool
                ) -> tuple[list[tuple[SiteLoad, _Static, int]], list[float], dict[str, str],
                           list[dict | None]]:
        """Filter and weigh every site for a request with sites to avoid or restricted to
        some: ``(passing, weights, rejected, records)``."""
        record, avoid = self.record, req.avoid
        rejected: dict[str, str] = {}
        records: list[dict | None] = []
        passing: list[tuple[SiteLoad, _Static, int]] = []
        weights: list[float] = []
        for s in self.loads:
            name = s.name
            if name not in accepted:
                why, filt = "not accepted by the task", "task"
            elif s.state != SiteState.ONLINE:
                why, filt = f"offline: {s.reason}", "offline"
            elif avoid and name in avoid and not all_avoided:
                why, filt = "avoided: an earlier attempt failed there", "avoided"
            else:
                st = self._static(statics, req, s, nbytes)
                if st.read_s != _INF:
                    passing.append((s, st, len(records)))
                    records.append(None)
                    if self.weigh:
                        weights.append(_weight(st, s))
                    continue
                why, filt = f"link {st.link.endpoint} -> {name} unusable (0 MB/s)", "link"
            if filt != "task":
                rejected[name] = why
            if record:
                records.append(self._rejected(s, filt, why))
        return passing, weights, rejected, records

    def place(self, req: Request, accepted: set[str]) -> Choice:
        loads, policy, record = self.loads, self.policy, self.record
        avoid = req.avoid
        all_avoided = not avoid or all(s.name in avoid for s in loads
                                       if s.name in accepted and s.state == SiteState.ONLINE)
        nbytes = max(req.input_bytes.values()) if req.input_bytes else 0
        shape = (req.events, tuple(req.input_bytes.items()), req.read_requests, req.near,
                 req.files if self.any_cache else None, req.file_bytes)
        statics = self.shapes.get(shape)
        if statics is None:
            self.shapes[shape] = statics = {}
        if not avoid and accepted is self.everyone:
            # the common case: every site accepted, none avoided; what a job of this
            # shape sees changes from one placement to the next by the picked site only
            e = self.common.get(shape)
            if e is None:
                self.common[shape] = e = self._common(req, statics, nbytes)
            else:
                self.refresh(e)
            passing, weights = e.passing, e.weights
            rejected = dict(e.rejected)
            records = list(e.records)
        else:
            passing, weights, rejected, records = self._filter(req, accepted, statics, nbytes,
                                                               all_avoided)
        if not passing:
            return self._fallback(req, accepted, rejected, records)
        if policy is Policy.ROUND_ROBIN:
            i = sum(s.queued + s.running for s in loads) % len(passing)
            reason = "next in turn"
        elif policy is Policy.LEAST_LOADED:
            per_slot = [(s.queued + s.running) / max(s.capacity, 1) for s, _, _ in passing]
            i = per_slot.index(min(per_slot))
            reason = "least loaded"
        else:
            i = self.draws.pick(weights)
            reason = "weighted random pick"
        pick, picked, _ = passing[i]
        info: dict = {"picked": pick.name, "policy": str(policy), "access": str(picked.access)}
        if record:  # each candidate as it was weighed, before the pick adds to its load
            memo, sigs = self.record_memo, self.sigs
            sig = []  # the weights as recorded (4 significant digits), remembered
            for w in weights:
                v = sigs.get(w)
                if v is None:
                    sigs[w] = v = _sig(w)
                sig.append(v)
            for k, (s, st, at) in enumerate(passing):
                # Within a call only a site's queue and its links' readers move, and only
                # the picked site's: the other candidates' records repeat the last job's
                # (the same dict, shared: records are read, never changed, once made).
                ep = st.link.endpoint if st.link is not None else None
                key = (id(st), s.queued, s.readers.get(ep, 0) if ep else 0, k == i, reason)
                rec = memo.get(key)
                if rec is None:
                    # the weight is the one just drawn on (same site, same load)
                    rec = memo[key] = _record(s, _cost(st, s, policy, weights[k]),
                                              reason if k == i else "passed", k == i,
                                              sig[k])
                records[at] = rec
            info.update(weights={s.name: v for (s, _, _), v
                                 in zip(passing, sig, strict=True)},
                        rejected=rejected, candidates=records)
        pick.queued += 1
        self.changes.append(self.index[pick.name])
        if picked.link is not None:
            info["read_from"] = ep = picked.link.endpoint
            pick.readers[ep] = pick.readers.get(ep, 0) + 1
        if not record:
            return Choice(pick.name, info)
        if avoid and all_avoided and avoid & {s.name for s, _, _ in passing}:
            info["note"] = "every accepted site was avoided; weighed them all"
        if req.near or req.input_bytes:
            info["near_data"] = [s.name for s, st, _ in passing if st.near]
        return Choice(pick.name, info)

    def _fallback(self, req: Request, accepted: set[str], rejected: dict[str, str],
                  records: list) -> Choice:
        named = {s.name: s for s in self.loads}
        order = sorted([named[n] for n in req.sites if n in named] or
                       [s for s in self.loads if s.name in accepted],
                       key=lambda s: s.state != SiteState.ONLINE)
        pick = order[0]
        pick.queued += 1
        self.changes.append(self.index[pick.name])
        info: dict = {"picked": pick.name, "policy": str(self.policy)}
        if self.record:
            info.update(weights={}, rejected=rejected,
                        candidates=[{**r, "picked": r["site"] == pick.name} for r in records],
                        note="no candidate passed the filters; queued anyway")
        return Choice(pick.name, info)


# The decisions in words and counts, importable with the brokerage itself.
from panda_lab.model.explain import explain, filter_summary  # noqa: E402, F401
