"""The collector policy of long-running processes, checked in a fresh interpreter
(it changes process-wide state)."""

from __future__ import annotations

import json
import subprocess
import sys

from coact.shared.gcpolicy import THRESHOLDS


def test_settling_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    code = (
        "import gc, json\n"
        "from coact.shared.gcpolicy import settle_long_lived_objects\n"
        "before = gc.get_freeze_count()\n"
        "settle_long_lived_objects()\n"
        "print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, frozen, thresholds = json.loads(out.stdout)
    assert before == 0
    assert frozen > 1000  # the interpreter's and the modules' objects
    assert tuple(thresholds) == THRESHOLDS
