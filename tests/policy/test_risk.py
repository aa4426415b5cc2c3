"""Risk assessment: levels, scores and reasons."""

from __future__ import annotations

from typing import Any

import pytest

from coact.policy.actions import ACTIONS
from coact.policy.risk import BASE_SCORES, Risk, assess, level_for

SANDBOX = "/home/alice/sandbox"


@pytest.mark.parametrize(
    ("score", "level"),
    [(0, "low"), (29, "low"), (30, "medium"), (59, "medium"), (60, "high"), (84, "high"),
     (85, "critical"), (100, "critical")],
)
def test_level_thresholds(score: int, level: str) -> None:
    assert level_for(score) == level


def test_base_levels_agree_with_scores() -> None:
    for level, score in BASE_SCORES.items():
        assert level_for(score) == level


@pytest.mark.parametrize(
    ("action", "params", "level"),
    [
        ("file.list", {"path": SANDBOX, "recursive": True}, "low"),
        ("file.stat", {"path": f"{SANDBOX}/a"}, "low"),
        ("file.read", {"path": f"{SANDBOX}/a"}, "low"),
        ("file.hash", {"path": f"{SANDBOX}/a"}, "low"),
        ("file.read", {"path": "/home/alice/.ssh/id_ed25519"}, "medium"),
        ("file.write", {"path": f"{SANDBOX}/a.txt", "content": "x"}, "medium"),
        ("file.write", {"path": f"{SANDBOX}/a.txt", "content": "x", "overwrite": True}, "medium"),
        ("file.write", {"path": "/etc/hosts", "content": "x"}, "high"),
        ("file.write", {"path": "/usr/local/bin/tool", "content": "x"}, "high"),
        ("file.write", {"path": "C:\\Windows\\System32\\drivers\\etc\\hosts", "content": "x"},
         "high"),
        ("file.write", {"path": "D:\\Program Files\\App\\config.ini", "content": "x"}, "high"),
        ("file.write", {"path": "/home/alice/.bashrc", "content": "x"}, "high"),
        ("file.write", {"path": "/home/alice/.ssh/authorized_keys", "content": "x"}, "high"),
        ("file.write", {"path": f"{SANDBOX}/run.sh", "content": "x"}, "high"),
        ("file.write", {"path": "C:\\Users\\a\\run.PS1", "content": "x"}, "high"),
        ("file.write", {"path": f"{SANDBOX}/a", "content": "x", "mode": 0o755}, "medium"),
        ("file.write", {"path": f"{SANDBOX}/run", "content": "x", "mode": 0o755,
                        "overwrite": True}, "high"),
        ("file.write", {"path": "/etc/cron.d/job.sh", "content": "x", "overwrite": True},
         "critical"),
        ("file.copy", {"src": f"{SANDBOX}/a", "dst": f"{SANDBOX}/b"}, "medium"),
        ("file.move", {"src": f"{SANDBOX}/a", "dst": f"{SANDBOX}/b"}, "medium"),
        ("file.move", {"src": f"{SANDBOX}/a", "dst": "/etc/b", "overwrite": True}, "high"),
        ("file.delete", {"path": f"{SANDBOX}/a"}, "high"),
        ("file.delete", {"path": f"{SANDBOX}/dir", "recursive": True}, "critical"),
        ("app.launch", {"argv": ["notepad.exe"]}, "high"),
        ("app.launch", {"argv": ["C:\\Windows\\System32\\cmd.exe", "/c", "dir"]}, "high"),
        ("app.close", {"pid": 42}, "medium"),
        ("app.list", {}, "low"),
        ("input.move", {"x": 1, "y": 2}, "high"),
        ("input.click", {}, "high"),
        ("input.type", {"text": "hi"}, "high"),
        ("input.hotkey", {"keys": ["ctrl", "s"]}, "high"),
        ("screen.capture", {}, "medium"),
        ("serial.list", {}, "low"),
        ("serial.write", {"port": "COM3", "data": "x"}, "high"),
        ("serial.query", {"port": "COM3", "data": "x"}, "high"),
        ("watch.add", {"path": SANDBOX, "recursive": True}, "low"),
        ("watch.remove", {"watch_id": "w1"}, "low"),
        ("system.info", {}, "low"),
    ],
)
def test_levels(action: str, params: dict[str, Any], level: str) -> None:
    risk = assess(action, params)
    assert risk.level == level, risk
    assert risk.level == level_for(risk.score)
    assert 0 <= risk.score <= 100
    assert risk.reasons


def test_scores_rise_with_danger() -> None:
    plain = assess("file.write", {"path": f"{SANDBOX}/a", "content": "x"})
    over = assess("file.write", {"path": f"{SANDBOX}/a", "content": "x", "overwrite": True})
    assert over.score > plain.score
    assert "may overwrite an existing file" in over.reasons


def test_reasons_are_readable() -> None:
    risk = assess("file.delete", {"path": "/etc/nginx", "recursive": True})
    assert risk == Risk(
        "critical",
        100,
        (
            "deletes data, which cannot be undone",
            "changes /etc/nginx, inside system location /etc",
            "deletes a whole directory tree",
        ),
    )
    win = assess("file.write", {"path": "c:\\windows\\x.txt", "content": ""})
    assert "changes c:\\windows\\x.txt, inside system location C:\\Windows" in win.reasons


def test_interpreter_reason() -> None:
    risk = assess("app.launch", {"argv": ["/bin/bash", "-c", "rm -rf ~"]})
    assert "bash runs arbitrary code from its arguments" in risk.reasons
    assert risk.score > assess("app.launch", {"argv": ["/usr/bin/gedit"]}).score


def test_every_action_has_a_base_reason() -> None:
    samples: dict[str, dict[str, Any]] = {
        "file.write": {"path": "/a", "content": ""},
        "file.copy": {"src": "/a", "dst": "/b"},
        "file.move": {"src": "/a", "dst": "/b"},
        "app.launch": {"argv": ["x"]},
        "app.close": {"pid": 1},
        "input.move": {"x": 0, "y": 0},
        "input.type": {"text": ""},
        "input.hotkey": {"keys": ["a"]},
        "serial.write": {"port": "p", "data": ""},
        "serial.query": {"port": "p", "data": ""},
        "watch.remove": {"watch_id": "w"},
    }
    for action, spec in ACTIONS.items():
        params = samples.get(action, {"path": "/a"} if "path" in spec.params else {})
        risk = assess(action, params)
        assert risk.score == BASE_SCORES[spec.base_risk], action
        assert len(risk.reasons) == 1


def test_bad_input_is_critical() -> None:
    assert assess("nope", {}) == Risk("critical", 100, ("unknown action 'nope'",))
    risk = assess("file.read", {})
    assert risk == Risk("critical", 100, ("invalid params: params.path: required",))


def test_deterministic() -> None:
    params = {"path": "/home/a/.config/autostart/x.desktop", "content": "x", "overwrite": True}
    assert assess("file.write", params) == assess("file.write", dict(params))
