"""A pilot of short jobs holds one ahead only while its site has jobs to spare.  Both
backends.

The kind of fault: dispatch that trades late binding away for fewer round trips, so a job
held behind a running one is a job an idle pilot cannot take at a task's end; or, the
other way, dispatch that never lets a pilot hold a job ahead, so short jobs pay an
acquisition each.  Members: extras are given while the site keeps ``KEEP_PER_SLOT``
activated jobs per running slot, and not one more (the boundary, each side); the slots
are those of the site's running pilots only (another site's, or an ended pilot's, do not
count); a pilot asking no extra gets exactly ``n`` as before; a pilot that asks more
extras than can be spared gets what can; and, played through to the end of a task by two
pilots, the last jobs go out one per acquisition while the bulk went two at a time.
"""

from __future__ import annotations

from panda_lab.store.rows.jobs import KEEP_PER_SLOT

SITES = [{"name": "A", "kind": "local", "provisioner": "local", "pilots": 2, "slots": 1},
         {"name": "B", "kind": "local", "provisioner": "local", "pilots": 1, "slots": 1}]


def queued(store, n: int, site: str = "A") -> list[int]:
    return store.create_task("t", [{"payload": b"x"}] * n, site=site)[1]


def pilots(store, k: int, site: str = "A", slots: int = 1) -> list[int]:
    return [store.register_pilot(site, "h", 100 + i, slots, {}) for i in range(k)]


def test_extras_are_given_while_two_jobs_per_slot_stay_and_not_one_more(store):
    a, _b = pilots(store, 2)                    # 2 running slots: 4 jobs are kept
    keep = KEEP_PER_SLOT * 2
    queued(store, 1 + keep + 1)                 # one to start, those kept, one to spare
    got, _ = store.acquire(a, "A", 1, extra=1)
    assert len(got) == 2
    # now exactly n + keep are activated: nothing to spare
    got, _ = store.acquire(a, "A", 1, extra=1)
    assert len(got) == 1


def test_a_pilot_asking_no_extra_gets_n_and_one_asking_many_gets_what_can_be_spared(store):
    (a,) = pilots(store, 1)                     # 1 slot: 2 jobs kept
    queued(store, 10)
    got, _ = store.acquire(a, "A", 1)
    assert len(got) == 1
    got, _ = store.acquire(a, "A", 2, extra=50)  # 9 left: 2 now, 2 kept, 5 to spare
    assert len(got) == 2 + 5
    assert len(store.acquire(a, "A", 1, extra=1)[0]) == 1   # 2 left, both kept


def test_only_the_running_slots_of_the_site_count(store):
    (a,) = pilots(store, 1)
    pilots(store, 3, site="B", slots=4)         # another site's slots: not A's
    gone = pilots(store, 2, slots=8)
    for p in gone:
        store.end_pilot(p)                      # ended pilots take nothing any more
    queued(store, 1 + KEEP_PER_SLOT * 1 + 1)
    assert len(store.acquire(a, "A", 1, extra=1)[0]) == 2


def test_to_the_end_of_a_task_the_bulk_goes_two_at_a_time_and_the_end_one_by_one(store):
    a, b = pilots(store, 2)
    jobs = 30
    queued(store, jobs)
    keep = KEEP_PER_SLOT * 2
    left, turn, sizes = jobs, 0, []
    while left:
        got, _ = store.acquire((a, b)[turn % 2], "A", 1, extra=1)
        # one ahead exactly while the site keeps ``keep`` besides the one started now
        assert len(got) == (2 if left >= 1 + keep + 1 else 1), (left, sizes)
        sizes.append(len(got))
        left -= len(got)
        turn += 1
    assert sum(sizes) == jobs
    assert sizes[-keep:] == [1] * keep          # an idle pilot finds the last ones
    assert len(sizes) < jobs * 0.7              # the bulk: half the acquisitions
