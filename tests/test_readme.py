"""The README's commands as written: every `avemo` line names a real command and real options (with valid
choices), every script and make target exists, and the Recognizer example runs on a model made here.

Not executed here (they need CMU-MOSEI, a GPU, TensorRT, a Jetson, a camera or network server, Docker, or
tens of minutes): `avemo prepare`, `avemo build`, `--backend trt`, the Jetson script, live sources,
`avemo triton-serve` (its own tests start it), `make demo` / `make study` (run by hand, timed in the README).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from avemo.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)


def _command_lines() -> list[list[str]]:
    lines = []
    for language, body in BLOCKS:
        if language:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


COMMANDS = [w for w in _command_lines() if w[0] in ("avemo", "avemo-export")]


def _options(command: click.Command) -> dict[str, click.Parameter]:
    return {name: p for p in command.params for name in (*p.opts, *p.secondary_opts) if name.startswith("-")}


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w[:2]) for w in COMMANDS])
def test_every_avemo_command_in_the_readme_has_its_options(words):
    name, args = ("export", words[1:]) if words[0] == "avemo-export" else (words[1], words[2:])
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"`avemo {name}` does not exist"
    options = _options(command) | {"-h": None, "--help": None}
    for i, word in enumerate(args):
        if not word.startswith("-"):
            continue
        flag, _, inline = word.partition("=")
        assert flag in options, f"`{' '.join(words)}`: {flag} is not an option of `avemo {name}`"
        param = options[flag]
        value = inline or (args[i + 1] if i + 1 < len(args) else "")
        if isinstance(param, click.Option) and isinstance(param.type, click.Choice):
            assert value in param.type.choices, f"`{' '.join(words)}`: {flag} {value}"


def test_scripts_and_make_targets_the_readme_names_exist_and_none_is_run_under_sudo():
    lines = _command_lines()
    makefile = (ROOT / "Makefile").read_text()
    for words in lines:
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.M), words
        if words[0] == "sudo":
            assert not words[1].startswith("scripts/"), f"{words}: our scripts refuse sudo"
        for word in words:
            if word.startswith("scripts/") and (word.endswith((".py", ".sh"))):
                assert (ROOT / word).is_file(), word
    assert "pip install 'avemo[" not in README  # avemo is not on PyPI: the README installs the wheel


def test_the_recognizer_example_runs(colearn_export, tmp_path, monkeypatch):
    from avemo.runtime.media.sample import write_sample

    (example,) = [body for language, body in BLOCKS if language == "python" and "Recognizer(" in body]
    (tmp_path / "models").symlink_to(colearn_export[0])
    write_sample(tmp_path / "clip.mp4", seconds=2)
    write_sample(tmp_path / "talk.mp4", seconds=7)
    monkeypatch.chdir(tmp_path)
    printed: list[tuple] = []
    scope = {"print": lambda *args: printed.append(args)}
    exec(compile(example, "README.md", "exec"), scope)  # the README's own example
    assert scope["result"].modality == "av" and len(printed) == 3  # windows of 5 s every 1 s over 7 s
