"""Brokerage: choose a site for each job.  Filter, then weight, then a weighted random pick.

PanDA's brokerage rule: drop the sites that cannot take the job (offline, not in the
job's list), weigh the rest by their free capacity (more where the job's input data is
stored), pick at random by weight.  Every decision is kept on the job (``broker_info``)
so a user can see why a job went where it went.

The module is pure: it takes a snapshot (the requests, and the site loads the store
read in the same transaction) and returns the decisions with their explanation; it
never sees the database.  The store calls it inside the transaction that inserts the
attempts it places; the simulator may call the same function.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from panda_lab.model.states import SiteState

#: The site name that lets brokerage choose among every site.
ANY = "ANY"


def sites_of(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The sites a job or task accepts, from what a user gave: ``None``, ``""`` or an
    empty list mean any site (``("ANY",)``); a string is a comma-separated list."""
    if value is None or value == "":
        return (ANY,)
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip()) or (ANY,)
    return tuple(value) or (ANY,)


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


@dataclass
class Request:
    """One job to place: the sites it accepts and the sites to avoid if possible."""

    sites: tuple[str, ...] = (ANY,)
    avoid: frozenset[str] = field(default_factory=frozenset)
    #: Storage endpoints holding the job's input: sites near one of them are preferred.
    near: frozenset[str] = field(default_factory=frozenset)


#: How much more a site near the job's data weighs than one that would read it remotely.
#: PanDA sends jobs to their data; a factor rather than a filter keeps the other sites
#: working when the near one is busy.  Weights are recomputed as a bulk submission is
#: placed, so over equally loaded sites a near site's share grows as the square root of
#: the factor: 9 gives it three times the jobs of each other site.
DATA_NEAR = 9.0


@dataclass
class Choice:
    """Where one request goes (``site``; never None from :func:`choose`) and why:
    ``info`` is ``{"picked", "weights": {site: weight}, "rejected": {site: reason},
    optional "near_data": [site], optional "note"}``, kept on the job as ``broker_info``."""

    site: str | None
    info: dict


class BrokerageError(ValueError):
    """No site can take the job; the message says why."""


def _weight(load: SiteLoad) -> float:
    # PanDA weighs sites by how much of their capacity is free: a site with many
    # idle slots and a short queue gets more of the work.
    cap = max(load.capacity, 1)
    return cap / (1.0 + load.queued + load.running)


def choose(
    requests: list[Request],
    loads: list[SiteLoad],
    rng: random.Random | None = None,
) -> list[Choice]:
    """Place each request: one :class:`Choice` per request, in order.

    ``loads`` are updated as jobs are placed (``queued`` grows), so a bulk submission
    spreads over the sites instead of piling onto the one that looked emptiest.  Raises
    :class:`BrokerageError` for a request naming an unknown site, or when there is no
    site at all."""
    rng = rng or random.Random()
    by_name = {s.name: s for s in loads}
    out: list[Choice] = []
    for req in requests:
        wanted = [s for s in loads] if ANY in req.sites else []
        for name in req.sites:
            if name == ANY:
                continue
            if name not in by_name:
                raise BrokerageError(
                    f"unknown site {name!r}; known sites: {', '.join(sorted(by_name)) or 'none'}"
                )
            if by_name[name] not in wanted:
                wanted.append(by_name[name])
        rejected = {s.name: f"offline: {s.reason}" for s in wanted
                    if s.state != SiteState.ONLINE}
        ok = [s for s in wanted if s.state == SiteState.ONLINE]
        if not ok:
            # Keep the job: it waits for a site of its list to come back.
            fallback = wanted[0].name if wanted else None
            if fallback is None:
                raise BrokerageError("no site to choose from")
            out.append(Choice(fallback, {"picked": fallback, "rejected": rejected,
                                         "note": "every candidate offline; queued anyway"}))
            by_name[fallback].queued += 1
            continue
        preferred = [s for s in ok if s.name not in req.avoid] or ok
        for s in ok:
            if s not in preferred:
                rejected[s.name] = "avoided: an earlier attempt failed there"
        near = [s.name for s in preferred if s.endpoint and s.endpoint in req.near]
        weights = [_weight(s) * (DATA_NEAR if s.name in near else 1.0) for s in preferred]
        pick = rng.choices(preferred, weights=weights, k=1)[0]
        pick.queued += 1
        info = {"picked": pick.name,
                "weights": {s.name: round(w, 4) for s, w in zip(preferred, weights, strict=True)},
                "rejected": rejected}
        if req.near:
            info["near_data"] = near
        out.append(Choice(pick.name, info))
    return out
