"""Garbage-collector policy for long-running processes that serve many connections
(the relay, the fleet simulator).

CPython's cyclic collector pauses the whole process while it runs. With the default
thresholds (700, 10, 10) a busy relay ran young collections constantly and full ones
every few seconds, each full pass walking every object the process holds: 40-140 ms
stops of the event loop under load, the largest part of the dispatch latency tail
(docs/performance.md). Two measures, measured together: p99 at 200 tasks/s with
1,000 agents went from ~150 to ~40 ms.

* ``gc.freeze()`` once start-up is done: modules, schemas, engines and the like live
  as long as the process and are never garbage, so no later pass walks them.
* Higher thresholds: a young collection after 20,000 net allocations instead of 700,
  and older generations examined proportionally less often. Short-lived cycles are
  still collected young; reference counting frees everything else at once.
"""

from __future__ import annotations

import gc

THRESHOLDS = (20_000, 20, 100)


def settle_long_lived_objects() -> None:
    """Call once start-up is done: collect, freeze what is left, raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
