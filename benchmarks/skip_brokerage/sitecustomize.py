"""Measurement only (``bench_broker_share.py``): with ``PANDA_LAB_BENCH_SKIP_BROKERAGE=1``
in a server's environment and this directory first on its ``PYTHONPATH``, the server's
brokerage does no per-job work: each job goes to the least-loaded site, and its record
names only the picked site (no candidates, weights or rejections).  The links, the site
statistics and their learning are untouched.  Never used outside that benchmark."""

import os

if os.environ.get("PANDA_LAB_BENCH_SKIP_BROKERAGE") == "1":
    import panda_lab.store.base as base
    from panda_lab.model.brokerage import Choice

    def choose(self, requests, loads, **context):
        out = []
        for _ in requests:
            s = min(loads, key=lambda s: s.queued + s.running)
            s.queued += 1
            out.append(Choice(s.name, {"picked": s.name, "policy": "skipped"}))
        return out

    base.DefaultBroker.choose = choose
