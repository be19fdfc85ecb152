"""Every `village-gateway ...` command in the docs is one the command line accepts, and
the other tools the docs tell an IT person to run do what the docs say, here where they
can: the commands are parsed by the real parser (a renamed flag fails this test), the
safe ones are run, and `mosquitto_passwd` and `jq` run as written on stand-in files."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import _parser
from tests.conftest import REPO, clean_env

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "hil" / "README.md"]
_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_INLINE = re.compile(r"`(?:sudo )?(village-gateway [^`]+)`")
_PLACEHOLDER = re.compile(r"\[|\]|\.\.\.|\(|\)|\|")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for each line of a code block that runs village-gateway."""
    found = []
    for path in DOCS:
        for block in _FENCE.findall(path.read_text(encoding="utf-8")):
            for line in block.splitlines():
                text = line.split("  #")[0].strip().removeprefix("sudo ")
                if not text.startswith("village-gateway "):
                    continue
                text = re.split(r"\s{3,}", text)[0]  # README's aligned description
                found.append((path.name, text))
        for text in _INLINE.findall(path.read_text(encoding="utf-8")):
            words = text.split()
            prose = len(words) < 3 or "/" in words or any(_is_placeholder(w) for w in words)
            if not prose:  # `village-gateway send` in a sentence names, it does not run
                found.append((path.name, text))
    return found


def _is_placeholder(word: str) -> bool:
    """PATH, FILE, ID, TYPE: a word the reader replaces."""
    return word.isupper() and word.isalpha()


COMMANDS = documented_commands()


def test_the_docs_have_commands() -> None:
    names = {shlex.split(cmd)[1] for _, cmd in COMMANDS}
    assert {"check-config", "watch", "send", "backup", "restore", "set-password"} <= names


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_each_documented_command_parses(doc: str, command: str) -> None:
    """Synopsis lines ([--config PATH], a | b) are skipped; real commands must parse."""
    if _PLACEHOLDER.search(command):
        pytest.skip("a synopsis, not a command")
    argv = ["x" if _is_placeholder(word) else word for word in shlex.split(command)[1:]]
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` is refused by the parser (exit {exc.code})")


def test_the_documented_check_config_runs() -> None:
    """`check-config /etc/village-gateway/config.toml` on the example the installer puts there."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(REPO / "config.example.toml")],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert ": ok" in result.stdout


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd")
def test_mosquitto_passwd_as_documented(tmp_path: Path) -> None:
    """The broker side of the login: mosquitto_passwd stores the user with a hash."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "ht.camxuyen.cambinh.dongtrung", "pw"],
        check=True,
        capture_output=True,
    )
    user, _, hashed = passwd.read_text().strip().partition(":")
    assert user == "ht.camxuyen.cambinh.dongtrung"
    assert hashed.startswith("$")  # a hash, not the password


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq")
def test_jq_filters_as_documented() -> None:
    """The three jq filters of "Read the log" work on lines as the daemon writes them."""
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    filters = re.findall(r"-o cat[^|]*\| jq (-\w+) '([^']+)'", operations)
    assert len(filters) == 3
    lines = "\n".join(
        json.dumps(line)
        for line in (
            {"ts": "t1", "level": "info", "event": "app.started", "component": "app"},
            {"ts": "t2", "level": "error", "event": "config.fallback", "component": "cli"},
            {"ts": "t3", "level": "warning", "event": "link.lost", "component": "link"},
        )
    )
    results = [
        subprocess.run(
            ["jq", flag, expression], input=lines, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        for flag, expression in filters
    ]
    assert [json.loads(line)["ts"] for line in results[0]] == ["t2", "t3"]
    assert results[1] == ["t1 info app.started", "t2 error config.fallback", "t3 warning link.lost"]
    assert [json.loads(line)["event"] for line in results[2]] == ["config.fallback"]
