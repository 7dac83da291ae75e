"""The README and docs/ as written: every `avemo` line names a real command and real options (with valid
choices), every script and make target exists, every relative link resolves (to a file, and to a heading
where it names one), and the Recognizer examples run on a model made here.

Not executed here (they need CMU-MOSEI, a GPU, TensorRT, a Jetson, a camera or network server, Docker, or
tens of minutes): `avemo prepare`, `avemo build`, `--backend trt`, the Jetson script, live sources,
`avemo triton-serve` (its own tests start it), `make demo` / `make study` (run by hand, timed in
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from avemo.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {path: path.read_text() for path in DOCS}
README = TEXTS[ROOT / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
# [text](target): the target up to the first space or ")"; images too. Not inside code fences.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _blocks(text: str) -> list[tuple[str, str]]:
    return FENCE.findall(text)


def _command_lines(text: str) -> list[list[str]]:
    lines = []
    for language, body in _blocks(text):
        if language:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


COMMANDS = [
    (path.relative_to(ROOT), words)
    for path, text in TEXTS.items()
    for words in _command_lines(text)
    if words[0] in ("avemo", "avemo-export")
]


def _options(command: click.Command) -> dict[str, click.Parameter]:
    return {name: p for p in command.params for name in (*p.opts, *p.secondary_opts) if name.startswith("-")}


def test_the_readme_and_the_command_reference_show_commands():
    where = {str(path) for path, _ in COMMANDS}
    assert {"README.md", "docs/COMMANDS.md"} <= where
    reference = [words for path, words in COMMANDS if path.name == "COMMANDS.md"]
    documented = {words[1] if words[0] == "avemo" else "export" for words in reference}
    assert documented >= set(main.list_commands(click.Context(main))), "a command missing from docs/COMMANDS.md"


@pytest.mark.parametrize(("path", "words"), COMMANDS, ids=[f"{p}: {' '.join(w[:2])}" for p, w in COMMANDS])
def test_every_avemo_command_in_the_docs_has_its_options(path, words):
    name, args = ("export", words[1:]) if words[0] == "avemo-export" else (words[1], words[2:])
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"{path}: `avemo {name}` does not exist"
    options = _options(command) | {"-h": None, "--help": None}
    for i, word in enumerate(args):
        if not word.startswith("-"):
            continue
        flag, _, inline = word.partition("=")
        assert flag in options, f"{path}: `{' '.join(words)}`: {flag} is not an option of `avemo {name}`"
        param = options[flag]
        value = inline or (args[i + 1] if i + 1 < len(args) else "")
        if isinstance(param, click.Option) and isinstance(param.type, click.Choice):
            assert value in param.type.choices, f"{path}: `{' '.join(words)}`: {flag} {value}"


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_scripts_and_make_targets_named_exist_and_none_is_run_under_sudo(path):
    makefile = (ROOT / "Makefile").read_text()
    for words in _command_lines(TEXTS[path]):
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.M), words
        if words[0] == "sudo":
            assert not words[1].startswith("scripts/"), f"{words}: our scripts refuse sudo"
        for word in words:
            if word.startswith("scripts/") and (word.endswith((".py", ".sh"))):
                assert (ROOT / word).is_file(), f"{path.name}: {word}"
    assert "pip install 'avemo[" not in TEXTS[path]  # avemo is not on PyPI: the docs install the wheel


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces to
    hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def broken_links(path: Path, text: str) -> list[str]:
    """Relative link targets in ``text`` (a Markdown file at ``path``) that name no existing file or folder,
    or a heading that a Markdown file does not have. Absolute URLs are left alone; links inside code
    fences are not links."""
    prose = FENCE.sub("", text)
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = path.parent / file
        if file and not linked.exists():
            broken.append(target)
        elif anchor and (not file or linked.suffix == ".md"):
            if anchor not in anchors(linked.read_text() if file else text):
                broken.append(target)
    return broken


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_points_to_an_existing_file(path):
    assert broken_links(path, TEXTS[path]) == []


def test_the_link_check_finds_a_broken_link():
    text = "See [the guide](docs/NOPE.md#x), [ok](docs/COMMANDS.md), [web](https://example.org/a.md).\n"
    text += "```\n[not a link](nowhere.md)\n```\n"
    assert broken_links(ROOT / "README.md", text) == ["docs/NOPE.md#x"]
    assert broken_links(ROOT / "docs" / "X.md", "[up](../README.md) [same](COMMANDS.md) [no](README.md)") == [
        "README.md"
    ]


def test_the_link_check_finds_a_missing_heading():
    text = "# Title\n## Does it help? (`avemo study`)\n## Twice\n## Twice\n"
    text += "[a](#does-it-help-avemo-study) [b](#twice-1) [c](#nope) [d](COMMANDS.md#avemo-infer) [e](COMMANDS.md#x)\n"
    assert broken_links(ROOT / "docs" / "X.md", text) == ["#nope", "COMMANDS.md#x"]


def _recognizer_examples() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(ROOT)), body)
        for path, text in TEXTS.items()
        for language, body in _blocks(text)
        if language == "python" and "Recognizer(" in body
    ]


def _run_example(example: str, where: str, models: Path, tmp_path: Path, monkeypatch) -> tuple[dict, list]:
    from avemo.runtime.media.sample import write_sample

    (tmp_path / "models").symlink_to(models)
    write_sample(tmp_path / "clip.mp4", seconds=2)
    write_sample(tmp_path / "talk.mp4", seconds=7)
    monkeypatch.chdir(tmp_path)
    printed: list[tuple] = []
    scope = {"print": lambda *args: printed.append(args)}
    exec(compile(example, where, "exec"), scope)  # the docs' own example
    return scope, printed


def test_the_readme_recognizer_example_runs(colearn_export, tmp_path, monkeypatch):
    (example,) = [body for where, body in _recognizer_examples() if where == "README.md"]
    scope, printed = _run_example(example, "README.md", colearn_export[0], tmp_path, monkeypatch)
    assert scope["result"].modality == "av" and len(printed) == 3  # windows of 5 s every 1 s over 7 s


def test_the_runtime_guide_recognizer_example_runs(colearn_export, tmp_path, monkeypatch):
    (example,) = [body for where, body in _recognizer_examples() if where == "docs/RUNTIME.md"]
    _, printed = _run_example(example, "docs/RUNTIME.md", colearn_export[0], tmp_path, monkeypatch)
    assert len(printed) == 2 + 1  # two clips, then the one whole 5-s window of the 7-s file (hop 2.5)
