"""Remote read or stage-in: how a job at a site gets the input that is not stored there.

Two ways, as PanDA's pilot has them (a queue's ``direct_access_lan``/``direct_access_wan``
in CRIC choose direct I/O; otherwise the pilot's copytool, Rucio's download, copies each
input file whole to the job's scratch first):

* ``remote``: read the job's ranges of its files where they are (uproot over HTTP or
  XRootD): only the bytes the job needs, in many requests, each paying the link's latency;
* ``stage-in``: copy each whole file over the link first (one request per file, as an
  FTS or Rucio transfer moves a whole file, and as ``rucio download`` does), then read
  it from the site's disk.  The copy is kept in the site's cache, so a later job at the
  site over the same file reads it there (``cache``) and moves nothing.

Here the choice is made per job, by the estimated time of each (PanDA chooses per queue,
not per job): a remote read costs ``read bytes / throughput + latency x requests``; a
stage-in costs ``missing file bytes / throughput + latency x missing files + read bytes
/ local disk rate``.  So stage-in wins where the link's latency makes many small reads
dear (a WAN link) or where the job reads most of each file anyway; a remote read wins
where the job reads a small part of large files.  Stage-in is only chosen at a site with
a cache (``cache_bytes`` in ``sites.toml``), and never for files larger than it.

Pure: sizes and a link in, a choice out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from panda_lab.model.network import Link


class Access(StrEnum):
    """How a job reads its input at its site."""

    #: Every input is stored at the site's own endpoint.
    LOCAL = "local"
    #: Read over the network where it is stored (direct I/O).
    REMOTE = "remote"
    #: Copied whole into the site's cache first, then read there.
    STAGE_IN = "stage-in"
    #: Every input is in the site's cache already.
    CACHE = "cache"


#: The endpoint name under which a job's reads of its site's cache are metered: not a
#: link (nothing is learned from it), but shown with what the job read.
CACHE_ENDPOINT = "(cache)"

#: MB/s a job reads a file from its site's own disk (the cache): a local disk or a
#: site's shared file system serves a single reader some hundreds of MB/s.
LOCAL_MBPS = 300.0


@dataclass(frozen=True, slots=True)
class AccessCost:
    """The estimates a choice rests on, seconds: ``remote_s`` (read the job's bytes over
    the link) and ``stage_s`` (copy the missing files whole, then read locally; None
    where stage-in is not possible), and the ``access`` chosen."""

    access: Access
    remote_s: float
    stage_s: float | None


def stage_in_s(link: Link, file_bytes: int, files: int, read_bytes: int,
               local_mbps: float = LOCAL_MBPS) -> float:
    """Seconds to copy ``files`` whole files of ``file_bytes`` bytes together over
    ``link`` (one request each), then read ``read_bytes`` of them from local disk at
    ``local_mbps`` MB/s.  ``inf`` over an unusable link when there is something to copy."""
    copy = link.read_s(file_bytes, max(files, 1)) if file_bytes > 0 else 0.0
    return copy + (read_bytes / (local_mbps * 1e6) if read_bytes > 0 else 0.0)


def choose_access(link: Link, read_bytes: int, requests: int, file_bytes: int, files: int,
                  cache_bytes: int, local_mbps: float = LOCAL_MBPS) -> AccessCost:
    """How a job reads ``read_bytes`` bytes in ``requests`` requests from ``files`` files
    not at its site (``file_bytes`` bytes whole) over ``link``, at a site whose cache
    holds ``cache_bytes`` bytes at most (0: no cache, remote only).  Stage-in is chosen
    when it is estimated strictly faster and the files fit in the cache; ``file_bytes``
    0 (sizes unknown) keeps the remote read."""
    remote = link.read_s(read_bytes, requests)
    if cache_bytes <= 0 or file_bytes <= 0 or file_bytes > cache_bytes:
        return AccessCost(Access.REMOTE, remote, None)
    stage = stage_in_s(link, file_bytes, files, read_bytes, local_mbps)
    return AccessCost(Access.STAGE_IN if stage < remote else Access.REMOTE, remote, stage)


def staged_cost(link: Link, read_bytes: int, requests: int, file_bytes: int, files: int,
                cached_files: int, cache_bytes: int) -> tuple[float, float, float] | None:
    """A job reading ``read_bytes`` in ``requests`` requests of its ``files`` files
    (``file_bytes`` whole; ``cached_files`` of them in the site's cache already) over
    ``link``: ``None`` when reading remotely is the cheaper (or stage-in cannot be
    done), else the stage-in's ``(seconds, transfer seconds, latency seconds)``, the
    transfer counting the local read."""
    missing = files - cached_files if files else 1
    copy = file_bytes * missing // files if files else file_bytes
    how = choose_access(link, read_bytes, requests, copy, missing, cache_bytes)
    if how.access is not Access.STAGE_IN or how.stage_s is None:
        return None
    return (how.stage_s, copy / (link.mbps * 1e6) + read_bytes / (LOCAL_MBPS * 1e6),
            missing * link.latency_ms / 1e3)
