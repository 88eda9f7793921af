"""A synthetic NanoAOD-like dimuon dataset, so demos and tests never depend on downloads.

The files look like CMS NanoAOD to the code that reads them: a TTree ``Events`` with ``run``,
``luminosityBlock``, ``event``, the counter ``nMuon`` and the jagged ``Muon_pt``, ``Muon_eta``,
``Muon_phi``, ``Muon_mass``, ``Muon_charge``. The physics is simple but right where an analysis
looks: most events carry an opposite-charge muon pair whose invariant mass is a Z peak
(Breit-Wigner at 91.19 GeV, width 2.5 GeV, plus resolution) over a falling continuum; some events
have 0, 1 or 3 muons and some pairs have the same charge, so selections matter. The muons are built
by decaying the dimuon system in its rest frame and boosting it, so the mass computed from the
written ``pt, eta, phi, mass`` is the generated one (up to float32 rounding).

What a caller may rely on:

* Content is a pure function of ``(seed, file index, entry)``: random numbers are drawn in fixed
  units of ``GENERATION_UNIT`` events, each from its own ``numpy`` generator seeded by
  ``SeedSequence(seed, spawn_key=(file, unit))``. Re-running gives equal arrays, and changing
  ``basket_events`` changes the file layout but never the events.
* Every ``basket_events`` entries is one ``TTree.extend`` call, hence one basket per branch, so the
  common basket boundaries (the chunking clusters) are exactly the multiples of ``basket_events``.
* Memory stays bounded by a block, whatever ``events`` is; no per-event Python loops.
* ``format="rntuple"`` writes the same events as an RNTuple ``Events`` instead (what uproot's
  ``f["Events"] = {...}`` writes): the fields ``run``, ``luminosityBlock``, ``event``, ``nMuon``
  and the collection ``Muon`` of records ``{pt, eta, phi, mass, charge}``, one cluster per
  ``basket_events`` entries (one ``extend`` call each), so the cluster boundaries are the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

GENERATION_UNIT = 50_000
"""Events drawn from one seeded generator; fixed so content does not depend on the layout."""

TREE_NAME = "Events"
MUON_MASS = 0.1056583755
Z_MASS = 91.1876
Z_WIDTH = 2.4952
MASS_RESOLUTION = 1.2
"""Gaussian smearing (GeV) of the Z line shape standing in for detector resolution."""

DEFAULT_COMPRESSION = uproot.ZLIB(1)
"""Fast zlib, as uproot's own default: real files are compressed, so reading them costs what a
real file costs."""

MUON_FIELDS = ("pt", "eta", "phi", "mass", "charge")

FORMATS = ("ttree", "rntuple")
"""What :func:`write_file` can write: a TTree, or an RNTuple (uproot 5.7's default)."""


@dataclass
class _Block:
    """Events ``[entry0, entry0 + len(counts))`` of one file: per-event and per-muon columns."""

    run: np.ndarray
    lumi: np.ndarray
    event: np.ndarray
    counts: np.ndarray
    muons: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.counts)

    def split(self, n: int) -> tuple[_Block, _Block]:
        """The first ``n`` events and the rest, so generation units can be re-cut into baskets."""
        cut = int(self.counts[:n].sum())
        head = _Block(
            self.run[:n],
            self.lumi[:n],
            self.event[:n],
            self.counts[:n],
            {k: v[:cut] for k, v in self.muons.items()},
        )
        tail = _Block(
            self.run[n:],
            self.lumi[n:],
            self.event[n:],
            self.counts[n:],
            {k: v[cut:] for k, v in self.muons.items()},
        )
        return head, tail

    @staticmethod
    def concat(blocks: list[_Block]) -> _Block:
        if len(blocks) == 1:
            return blocks[0]
        return _Block(
            np.concatenate([b.run for b in blocks]),
            np.concatenate([b.lumi for b in blocks]),
            np.concatenate([b.event for b in blocks]),
            np.concatenate([b.counts for b in blocks]),
            {k: np.concatenate([b.muons[k] for b in blocks]) for k in MUON_FIELDS},
        )


def _dimuon_masses(rng: np.random.Generator, is_z: np.ndarray) -> np.ndarray:
    """Z line shape (truncated Breit-Wigner + resolution) or a falling continuum per pair."""
    n = len(is_z)
    lo, hi = 70.0, 112.0
    half = Z_WIDTH / 2
    f_lo, f_hi = np.arctan((lo - Z_MASS) / half), np.arctan((hi - Z_MASS) / half)
    bw = Z_MASS + half * np.tan(f_lo + (f_hi - f_lo) * rng.random(n))
    z = bw + MASS_RESOLUTION * rng.standard_normal(n)
    scale, m_min, m_max = 25.0, 12.0, 160.0
    tail = 1.0 - np.exp(-(m_max - m_min) / scale)
    continuum = m_min - scale * np.log1p(-tail * rng.random(n))
    return np.where(is_z, z, continuum)


def _decay(
    rng: np.random.Generator, mass: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two muons from parents of ``mass``: rest-frame decay, then a boost to the lab.

    Returns ``(pt1, eta1, phi1, pt2, eta2, phi2)``; the pair's invariant mass is ``mass``.
    """
    n = len(mass)
    pt = rng.exponential(12.0, n)
    rapidity = np.clip(rng.normal(0.0, 1.2, n), -2.5, 2.5)
    phi = rng.uniform(-np.pi, np.pi, n)
    mt = np.sqrt(mass**2 + pt**2)
    energy = mt * np.cosh(rapidity)
    beta = np.stack([pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(rapidity)]) / energy
    gamma = energy / mass

    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    phi_star = rng.uniform(-np.pi, np.pi, n)
    p_star = np.sqrt(np.maximum(mass**2 / 4 - MUON_MASS**2, 0.0))
    direction = np.stack([sin_t * np.cos(phi_star), sin_t * np.sin(phi_star), cos_t])
    e_star = mass / 2

    out = []
    for sign in (1.0, -1.0):
        p = sign * p_star * direction
        bp = (beta * p).sum(axis=0)
        lab = p + (gamma**2 / (gamma + 1.0) * bp + gamma * e_star) * beta
        pt_lab = np.hypot(lab[0], lab[1])
        out += [pt_lab, np.arcsinh(lab[2] / pt_lab), np.arctan2(lab[1], lab[0])]
    return tuple(out)  # type: ignore[return-value]


def _generate(rng: np.random.Generator, file_index: int, entry0: int, n: int) -> _Block:
    """Draw ``n`` events starting at entry ``entry0``, vectorised over events."""
    u = rng.random(n)
    counts = np.select([u < 0.03, u < 0.15, u < 0.93], [0, 1, 2], 3).astype(np.int32)

    pair = counts >= 2
    n_pair = int(pair.sum())
    is_z = rng.random(n_pair) < 0.4
    pt1, eta1, phi1, pt2, eta2, phi2 = _decay(rng, _dimuon_masses(rng, is_z))
    q1 = rng.choice(np.array([-1, 1], np.int32), n_pair)
    same_sign = ~is_z & (rng.random(n_pair) < 0.2)
    q2 = np.where(same_sign, q1, -q1)

    n_single = int((counts == 1).sum())
    n_extra = int((counts == 3).sum())
    loose_pt = np.concatenate(
        [5.0 + rng.exponential(20.0, n_single), 3.0 + rng.exponential(8.0, n_extra)]
    )
    loose_eta = rng.uniform(-2.4, 2.4, n_single + n_extra)
    loose_phi = rng.uniform(-np.pi, np.pi, n_single + n_extra)
    loose_q = rng.choice(np.array([-1, 1], np.int32), n_single + n_extra)

    # Three muon slots per event; slot validity is decided by counts, then slots are sorted by
    # pt (descending, as NanoAOD does) and the valid ones flattened in event order.
    slots = {
        "pt": np.full((n, 3), -np.inf),
        "eta": np.zeros((n, 3)),
        "phi": np.zeros((n, 3)),
        "charge": np.zeros((n, 3), np.int32),
    }
    single, extra = counts == 1, counts == 3
    for name, first, second in (
        ("pt", pt1, pt2),
        ("eta", eta1, eta2),
        ("phi", phi1, phi2),
        ("charge", q1, q2),
    ):
        slots[name][pair, 0] = first
        slots[name][pair, 1] = second
    for name, values in (
        ("pt", loose_pt),
        ("eta", loose_eta),
        ("phi", loose_phi),
        ("charge", loose_q),
    ):
        slots[name][single, 0] = values[:n_single]
        slots[name][extra, 2] = values[n_single:]
    order = np.argsort(-slots["pt"], axis=1, kind="stable")
    valid = np.arange(3) < counts[:, None]
    muons = {name: np.take_along_axis(a, order, axis=1)[valid] for name, a in slots.items()}

    entries = np.arange(entry0, entry0 + n, dtype=np.int64)
    return _Block(
        run=np.full(n, 1000 + file_index, np.int32),
        lumi=(1 + entries // 1000).astype(np.int32),
        event=(entries + 1).astype(np.uint64),
        counts=counts,
        muons={
            "pt": muons["pt"].astype(np.float32),
            "eta": muons["eta"].astype(np.float32),
            "phi": muons["phi"].astype(np.float32),
            "mass": np.full(len(muons["pt"]), MUON_MASS, np.float32),
            "charge": muons["charge"].astype(np.int32),
        },
    )


def _blocks(seed: int, file_index: int, events: int, basket_events: int) -> Iterator[_Block]:
    """Yield the file's events in blocks of exactly ``basket_events`` (the last may be short).

    Events are drawn per ``GENERATION_UNIT`` with their own generator and re-cut here, which is
    what makes content independent of ``basket_events``.
    """
    pending: list[_Block] = []
    have = 0
    for unit, entry0 in enumerate(range(0, events, GENERATION_UNIT)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(file_index, unit)))
        piece: _Block | None = _generate(
            rng, file_index, entry0, min(GENERATION_UNIT, events - entry0)
        )
        while piece is not None and len(piece):
            need = basket_events - have
            if len(piece) <= need:
                head, piece = piece, None
            else:
                head, piece = piece.split(need)
            pending.append(head)
            have += len(head)
            if have == basket_events:
                yield _Block.concat(pending)
                pending, have = [], 0
    if pending:
        yield _Block.concat(pending)


def _muon_records(block: _Block) -> ak.Array:
    """The block's muons as ``var * {pt, eta, ...}``, which uproot writes as ``Muon_*``."""
    offsets = np.zeros(len(block) + 1, np.int64)
    np.cumsum(block.counts, out=offsets[1:])
    content = ak.contents.RecordArray(
        [ak.contents.NumpyArray(block.muons[k]) for k in MUON_FIELDS], list(MUON_FIELDS)
    )
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), content))


def write_file(
    path: str | Path,
    file_index: int = 0,
    events: int = 2_000_000,
    seed: int = 2024,
    basket_events: int = 100_000,
    compression: uproot.compression.Compression | None = DEFAULT_COMPRESSION,
    format: str = "ttree",
) -> Path:
    """Write one file of the dataset (see :func:`make_sample`); returns its path as given
    (a ``Path``, not resolved).  ``events`` is the number of entries, ``basket_events`` the
    entries per basket (an RNTuple: per cluster); file ``file_index`` has run
    ``1000 + file_index``; ``format`` is ``"ttree"`` or ``"rntuple"``.

    Raises ``ValueError`` when ``events`` < 0, ``basket_events`` < 1 or ``format`` is
    unknown (before anything is written), and ``OSError`` when the file cannot be written."""
    if events < 0 or basket_events < 1:
        raise ValueError("events must be >= 0 and basket_events >= 1")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, not {format!r}")
    path = Path(path)
    if format == "rntuple":
        return _write_rntuple(path, file_index, events, seed, basket_events, compression)
    muon_type = ak.types.from_datashape(
        "var * {pt: float32, eta: float32, phi: float32, mass: float32, charge: int32}",
        highlevel=False,
    )
    with uproot.recreate(path, compression=compression) as out:
        # mktree + extend writes a TTree (plain assignment would write an RNTuple in uproot 5.7),
        # and each extend call is one basket per branch.
        tree = out.mktree(
            TREE_NAME,
            {
                "run": np.int32,
                "luminosityBlock": np.int32,
                "event": np.uint64,
                "Muon": muon_type,
            },
        )
        for block in _blocks(seed, file_index, events, basket_events):
            tree.extend(
                {
                    "run": block.run,
                    "luminosityBlock": block.lumi,
                    "event": block.event,
                    "Muon": _muon_records(block),
                }
            )
    return path


def _write_rntuple(path: Path, file_index: int, events: int, seed: int, basket_events: int,
                   compression: uproot.compression.Compression | None) -> Path:
    """The RNTuple form of :func:`write_file`: the first block by assignment (which is what
    makes an RNTuple), each further one an ``extend`` (a cluster)."""
    empty = _Block(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint64),
                   np.zeros(0, np.int32),
                   {k: np.zeros(0, np.int32 if k == "charge" else np.float32)
                    for k in MUON_FIELDS})
    with uproot.recreate(path, compression=compression) as out:
        ntuple = None
        for block in _blocks(seed, file_index, events, basket_events) if events else [empty]:
            data = {"run": block.run, "luminosityBlock": block.lumi, "event": block.event,
                    "nMuon": block.counts, "Muon": _muon_records(block)}
            if ntuple is None:
                out[TREE_NAME] = data
                ntuple = out[TREE_NAME]
            else:
                ntuple.extend(data)
    return path


def make_sample(
    outdir: str | Path,
    files: int = 4,
    events: int = 2_000_000,
    seed: int = 2024,
    basket_events: int = 100_000,
    compression: uproot.compression.Compression | None = DEFAULT_COMPRESSION,
    format: str = "ttree",
) -> list[Path]:
    """Write ``files`` files ``dimuon_000.root``, ... of ``events`` entries each into ``outdir``.

    Deterministic for a given ``seed``; file ``i`` has runs ``1000 + i``. ``basket_events`` sets
    the basket (and so the chunking cluster) size without changing the events. ``compression``
    is passed to ``uproot.recreate`` (``None`` writes uncompressed baskets: faster to write and
    read, about twice the size); compressing takes most of the writing time.  ``format``
    ``"rntuple"`` writes RNTuples instead of TTrees (see the module's docstring).  The paths
    returned are absolute: jobs read them from other working directories.

    A file already written by an earlier call with the same parameters (its record,
    ``.dimuon_000.root.json`` beside it, names them and the file's size and time) is
    kept, not written again: a notebook run twice reuses its data.

    Returns the ``files`` paths in file order (``[]`` for ``files=0``); ``outdir`` is
    created if missing.  Raises ``ValueError`` as :func:`write_file` does (``events`` < 0,
    ``basket_events`` < 1), and ``OSError`` when ``outdir`` or a file cannot be written.
    """
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(files):
        path = outdir / f"dimuon_{i:03d}.root"
        record = path.with_name(f".{path.name}.json")
        wanted = {"file_index": i, "events": events, "seed": seed,
                  "basket_events": basket_events, "compression": repr(compression),
                  "format": format}
        if not _written_as(path, record, wanted):
            record.unlink(missing_ok=True)  # a half-written file never looks complete
            write_file(path, i, events, seed, basket_events, compression, format)
            st = path.stat()
            record.write_text(json.dumps({**wanted, "size": st.st_size,
                                          "mtime_ns": st.st_mtime_ns}))
        out.append(path)
    return out


def _written_as(path: Path, record: Path, wanted: dict) -> bool:
    """Whether ``path`` is the file an earlier :func:`make_sample` wrote with the
    parameters ``wanted``, untouched since (same size and modification time)."""
    try:
        kept = json.loads(record.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (kept.get("size"), kept.get("mtime_ns")) == (st.st_size, st.st_mtime_ns) and \
        all(kept.get(k) == v for k, v in wanted.items())
