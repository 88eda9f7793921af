"""Brokerage decisions in words and in counts.

* :func:`explain`: one sentence for one job's decision (its ``broker_info``), naming every
  candidate: why each filtered one was left out, and what set the pick apart from each
  other one (the factor where the pick does best against it).
* :func:`filter_summary`: how many candidates each filter removed over many decisions, as
  PanDA's JEDI brokers keep in a task's diagnostics (``dump_summary`` of
  ``AtlasProdJobBroker``: one count per check).

Both read the plain ``info`` dicts :func:`panda_lab.model.brokerage.choose` makes (also
as they come back from the database), so they never import the brokerage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: How each factor reads when the pick does better on it than another site.
PHRASES = {"free": "less loaded", "speed": "faster", "locality": "nearer the data",
           "network": "better connected to the data", "reliability": "more reliable"}
#: A ratio below this is no difference worth naming.
TIE = 1.05


def _info(x: Any) -> Mapping:
    return x.info if hasattr(x, "info") else x


def filter_summary(choices: Iterable[Any]) -> dict[str, int]:
    """``{filter name: candidates it removed}`` over ``choices`` (Choice objects or
    their ``info`` dicts), filters in the order first met; decisions recorded before
    candidates were kept (no ``"candidates"``) count their ``rejected`` sites by the
    reason's first word."""
    n: Counter[str] = Counter()
    for c in choices:
        info = _info(c)
        cands = info.get("candidates")
        if cands is None:
            for reason in (info.get("rejected") or {}).values():
                n[str(reason).split(":")[0].split()[0]] += 1
            continue
        for cand in cands:
            if not cand.get("passed") and cand.get("filter"):
                n[cand["filter"]] += 1
    return dict(n)


def _versus(pick: Mapping, other: Mapping) -> str:
    pf, of = pick.get("factors") or {}, other.get("factors") or {}
    best, ratio = None, TIE
    for name in PHRASES:
        a, b = pf.get(name), of.get(name)
        if a is None or b is None or b <= 0:
            continue
        if a / b > ratio:
            best, ratio = name, a / b
    if best is not None:
        return f"{PHRASES[best]} than {other['site']}"
    if other.get("weight", 0) > pick.get("weight", 0):
        return (f"{other['site']} weighed more ({other['weight']:g} against "
                f"{pick['weight']:g}) but lost the draw")
    return f"{other['site']} weighed about the same"


#: How a job reads its input, in words (``{endpoint}``: the one it reads from).
ACCESS_PHRASES = {"remote": "reads its input remotely from {endpoint}",
                  "stage-in": "stages its input in from {endpoint} to the site's cache",
                  "cache": "reads its input from the site's cache"}


def access_phrase(info: Mapping | Any) -> str:
    """How the decision has the job read its input (``access``, see
    :mod:`panda_lab.model.staging`), in words; ``""`` for input at the site (``local``)
    or none, and for decisions recorded before the access was."""
    info = _info(info)
    phrase = ACCESS_PHRASES.get(str(info.get("access")))
    return phrase.format(endpoint=info.get("read_from") or "its storage") if phrase else ""


def explain(info: Mapping | Any) -> str:
    """One sentence for one decision (a Choice or its ``info``), e.g. ``"sent to
    LOCAL-HPC: LOCAL-GRID avoided, an earlier attempt failed there; LOCAL-HPC less
    loaded than LOCAL-CLOUD"``.  Every candidate is named, then how the job reads its
    input where it is not at the site (:func:`access_phrase`); sites the task does not
    accept are grouped at the end."""
    info = _info(info)
    picked = info.get("picked")
    cands = info.get("candidates")
    if cands is None:  # a decision recorded before candidates were kept
        parts = [f"{s} {r}" for s, r in (info.get("rejected") or {}).items()]
        return f"sent to {picked}" + (": " + "; ".join(parts) if parts else "") + _moved(info)
    pick = next((c for c in cands if c.get("picked")), None)
    parts, unaccepted, versus, others = [], [], [], []
    for c in cands:
        if c is pick:
            continue
        if not c.get("passed"):
            if c.get("filter") == "task":
                unaccepted.append(c["site"])
            elif c.get("filter") == "avoided":
                parts.append(f"{c['site']} avoided, an earlier attempt failed there")
            else:
                parts.append(f"{c['site']} {c.get('reason') or c.get('filter')}")
        elif pick is not None and pick.get("passed"):
            others.append(c["site"])
            versus.append(_versus(pick, c))
    policy = info.get("policy")
    if others and policy in ("round-robin", "least-loaded"):
        parts.append(f"{picked} {pick.get('reason')} ({policy}); "
                     f"{', '.join(others)} passed too")
    elif versus:
        wins = [v for v in versus if " than " in v]
        if wins:
            parts.append(f"{picked} " + ", ".join(wins))
        parts += [v for v in versus if " than " not in v]
    elif pick is not None and pick.get("passed"):
        parts.append(f"{picked} the only candidate left")
    if info.get("note"):
        parts.append(str(info["note"]))
    how = access_phrase(info)
    if how:
        parts.append(how)
    if unaccepted:
        parts.append(f"not accepted by the task: {', '.join(unaccepted)}")
    return f"sent to {picked}" + (": " + "; ".join(parts) if parts else "") + _moved(info)


def _moved(info: Mapping) -> str:
    """``"; then ..."`` for a job a core sibling's pilot took from the queue it was sent
    to (store/rows/jobs.py, ``dispatch``), else ``""``."""
    moved = info.get("moved")
    return f"; then {moved['why']}" if isinstance(moved, Mapping) and moved.get("why") else ""
