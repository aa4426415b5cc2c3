"""The README's first command keeps working: `coact quickstart` end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness import coact_command, free_port


def test_quickstart_runs_allowed_and_denied_tasks_and_verifies_audit(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    first = subprocess.run(
        [*coact_command("quickstart", "--data-dir", str(data), "--port", str(port), "--exit-after-demo")],
        capture_output=True, text=True, timeout=180,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "succeeded:" in first.stdout
    assert "failed: denied by local policy" in first.stdout
    assert "/etc/passwd" in first.stdout + first.stderr
    assert f"http://127.0.0.1:{port}/docs" in first.stdout
    assert (data / "sandbox" / "hello.txt").read_text() == "Hello from Coact\n"
    assert (data / "admin.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((data / "admin.json").read_text())["email"] == "admin@coact.local"

    # Running it again reuses the relay, the admin and the enrolled agent.
    again = subprocess.run(
        [*coact_command("quickstart", "--data-dir", str(data), "--port", str(port), "--exit-after-demo")],
        capture_output=True, text=True, timeout=180,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "enrolling" not in again.stderr
