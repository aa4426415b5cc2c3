"""What ``coact agent run`` loads stays lean: the resident agent idles at <= 40 MB RSS.

The figure itself is measured by ``tests/perf/bench_footprint.py``; this checks the
cause, in a fresh interpreter: the libraries the agent was freed of stay out of the
modules its ``run`` command imports (decisions 32 and 33).
"""

from __future__ import annotations

import os
import subprocess
import sys

from coact.agent import executors
from coact.agent.executors import files

KEPT_OUT = (
    "pydantic",  # the agent speaks the protocol with coact.agent.frames
    # sqlite_utils is the outbox itself (the mission names it for the agent buffer)
    "pandas", "numpy",
    "coact.agent.executors.files",  # loaded by the first file action
)


def test_the_agent_run_command_imports_none_of_the_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from coact.cli.main import cli\n"
        "cli.get_command(None, 'agent').get_command(None, 'run')\n"
        "from coact.agent.cli import keep_unused_libraries_out\n"
        "keep_unused_libraries_out()  # what `agent run` does first\n"
        "import coact.agent.runtime\n"
        f"print(sorted(m for m in {KEPT_OUT!r} if sys.modules.get(m) is not None))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.stdout.strip() == "[]"


def test_the_registry_names_every_file_action() -> None:
    assert executors.FILE_ACTIONS == files.FILE_ACTIONS
