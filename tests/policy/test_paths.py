"""Lexical path rules: absoluteness, normalisation, containment."""

from __future__ import annotations

import pytest

from coact.policy.paths import components, flavor, is_within, path_problem


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/a", "posix"),
        ("C:\\Users", "windows"),
        ("c:/Users", "windows"),
        ("\\\\server\\share\\x", "windows"),
        ("relative/path", None),
        ("C:relative", None),
        ("\\rooted-without-drive", None),
        ("", None),
    ],
)
def test_flavor(path: str, expected: str | None) -> None:
    assert flavor(path) == expected


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/a\x00b", "NUL"),
        ("a/b", "not an absolute path"),
        ("", "not an absolute path"),
        ("//host/share", "leading '//'"),
        ("\\\\?\\C:\\x", "device"),
        ("\\\\.\\PhysicalDrive0", "device"),
        ("\\\\server", "server and a share"),
        ("C:\\x\\file.txt:stream", "':'"),
        ("C:\\x\\a<b", "does not allow"),
        ("C:\\sandbox.\\x", "dot or a space"),
        ("C:\\sandbox \\x", "dot or a space"),
    ],
)
def test_path_problem(path: str, fragment: str) -> None:
    problem = path_problem(path)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    "path",
    ["/", "/a/b", "///a", "/a/../b", "C:\\", "C:/a\\b", "\\\\srv\\share", "C:\\a\\..\\b", "/a:b"],
)
def test_acceptable_paths(path: str) -> None:
    assert path_problem(path) is None


def test_components_normalise() -> None:
    assert components("/a//b/./c/../d/") == ("posix", ("a", "b", "d"))
    assert components("/../../etc") == ("posix", ("etc",))
    assert components("C:/Users\\Alice\\..\\Bob") == ("windows", ("c:", "users", "bob"))
    assert components("\\\\Srv\\Share\\x") == ("windows", ("\\\\srv\\share", "x"))
    assert components("relative") is None


@pytest.mark.parametrize(
    ("path", "root", "inside"),
    [
        ("/sandbox", "/sandbox", True),
        ("/sandbox/", "/sandbox", True),
        ("/sandbox/a/b", "/sandbox/", True),
        ("/sandbox/a/../b", "/sandbox", True),
        ("///sandbox//a", "/sandbox", True),
        ("/sandbox2", "/sandbox", False),
        ("/sandbox2/x", "/sandbox", False),
        ("/sandbox/../etc/passwd", "/sandbox", False),
        ("/sandbox/..", "/sandbox", False),
        ("/", "/sandbox", False),
        ("/anything", "/", True),
        ("/Sandbox/x", "/sandbox", False),  # POSIX is case-sensitive
        ("sandbox/x", "/sandbox", False),
        ("/sandbox/\x00", "/sandbox", False),
        ("/sandbox/x", "sandbox", False),
        ("C:\\Sandbox\\x", "c:/sandbox", True),  # Windows is not
        ("C:\\sandbox2", "C:\\sandbox", False),
        ("D:\\sandbox\\x", "C:\\sandbox", False),
        ("C:\\sandbox\\..\\..\\x", "C:\\sandbox", False),
        ("\\\\srv\\share\\x", "\\\\SRV\\share", True),
        ("\\\\srv\\share2\\x", "\\\\srv\\share", False),
        ("/sandbox/x", "C:\\sandbox", False),  # flavours never mix
        ("C:\\sandbox\\x", "/sandbox", False),
        ("/sandbox/a\\..\\..\\etc", "/sandbox", True),  # a backslash is a name char on POSIX
    ],
)
def test_is_within(path: str, root: str, inside: bool) -> None:
    assert is_within(path, root) is inside
