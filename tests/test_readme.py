"""README.md runs: every ```python block is executed, each in a fresh interpreter, and every command of a
```bash block names an entry point, make target, script, preset, option and config key that exist.

A Python block runs as written (the README keeps its shapes and steps CPU-sized), from an empty
folder, with a data dir shared by the blocks of one session. A block that cannot run on a CPU is
marked by an HTML comment on the line before its fence, and reported as skipped with the reason:

    <!-- readme-test: skip, needs a GPU -->
    <!-- readme-test: slow -->            (runs, under the `slow` marker: more than ~20 s on a CPU)

Test ids are the block's heading (with -2, -3, ... for later blocks under the same heading).
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests._util import REPO_ROOT

README = REPO_ROOT / "README.md"
_FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
_MARK = re.compile(r"^<!--\s*readme-test:\s*(?P<kind>skip|slow)\s*(?:,\s*(?P<reason>.*?))?\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    heading: str
    language: str
    code: str
    line: int  # 1-based line of the opening fence
    mark: str | None = None  # "skip", "slow" or None
    reason: str = ""


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "top"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with their heading, language and readme-test mark.
    A mark must be the last non-blank line before the fence; a malformed one is an error."""
    blocks, heading, lines = [], "top", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        fence = _FENCE.match(line)
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 1}: a fence that is never closed")
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark, reason = None, ""
        if "readme-test" in previous:
            match = _MARK.match(previous.strip())
            if not match:
                raise ValueError(
                    f"README.md:{i}: unreadable mark {previous.strip()!r}; write "
                    "<!-- readme-test: skip, REASON --> or <!-- readme-test: slow -->"
                )
            mark, reason = match["kind"], match["reason"] or ""
        blocks.append(Block(heading, fence[1].lower(), "\n".join(lines[i + 1 : end]) + "\n", i + 1, mark, reason))
        i = end + 1
    return blocks


def _with_ids(blocks: list[Block]) -> list[tuple[str, Block]]:
    seen: dict[str, int] = {}
    out = []
    for block in blocks:
        slug = _slug(block.heading)
        seen[slug] = seen.get(slug, 0) + 1
        out.append((slug if seen[slug] == 1 else f"{slug}-{seen[slug]}", block))
    return out


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = _with_ids([b for b in BLOCKS if b.language == "python"])
BASH = [b for b in BLOCKS if b.language in ("bash", "sh", "shell")]


def _param(block_id: str, block: Block):
    marks = []
    if block.mark == "skip":
        marks.append(pytest.mark.skip(reason=f"README.md:{block.line} ({block.heading}): {block.reason}"))
    elif block.mark == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block_id, marks=marks)


# ------------------------------------------------------------------------------------------ the parser


def test_blocks_are_found_with_their_heading_language_and_mark():
    text = (
        "# Title\n\n```python\nx = 1\n```\n\n## Use it\n\n<!-- readme-test: skip, needs a GPU -->\n"
        "```python\ny = 2\n```\n```bash\nmake run\n```\n<!-- readme-test: slow -->\n\n```\nplain\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.heading, b.language, b.code, b.mark, b.reason) for b in blocks] == [
        ("Title", "python", "x = 1\n", None, ""),
        ("Use it", "python", "y = 2\n", "skip", "needs a GPU"),
        ("Use it", "bash", "make run\n", None, ""),
        ("Use it", "", "plain\n", "slow", ""),
    ]
    assert [i for i, _ in _with_ids(blocks)] == ["title", "use-it", "use-it-2", "use-it-3"]
    with pytest.raises(ValueError, match="unreadable mark"):
        readme_blocks("<!-- readme-test: later -->\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        readme_blocks("```python\nx = 1\n")


def test_the_readme_has_python_blocks_and_each_skip_says_why():
    assert len(PYTHON) >= 6
    for block_id, block in PYTHON:
        assert block.mark != "skip" or block.reason, f"{block_id}: a skipped block must say why"
        ast.parse(block.code, filename=f"README.md:{block.line}")  # skipped blocks parse too


# ------------------------------------------------------------------------------------------ running them


@pytest.fixture(scope="session")
def readme_data_dir(tmp_path_factory):
    """One data dir for the session's README blocks: the Shakespeare corpus is prepared once."""
    return tmp_path_factory.mktemp("readme-data")


@pytest.mark.parametrize("block", [_param(i, b) for i, b in PYTHON])
def test_python_block_runs(block, tmp_path, readme_data_dir):
    script = tmp_path / "block.py"
    script.write_text("\n" * (block.line) + block.code, encoding="utf-8")  # tracebacks give README lines
    env = {
        **os.environ,
        "COTTENTION_DATA_DIR": str(readme_data_dir),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"README.md:{block.line} ({block.heading}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


# ------------------------------------------------------------------------------------------ shell blocks


def _commands(block: Block) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, split like a shell."""
    joined = re.sub(r"\\\n", " ", block.code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _entry_points() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def _make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def _config_keys(config) -> set[str]:
    """Every `--set` key of a training config: its dataclass fields, dotted."""
    keys = set()
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        keys.add(field.name)
        if dataclasses.is_dataclass(value):
            keys |= {f"{field.name}.{k}" for k in _config_keys(value)}
    return keys


_HELP: dict[tuple[str, ...], str] = {}


def _help(argv: tuple[str, ...]) -> str:
    """The --help text of a command (cached): its options are what the README may name."""
    if argv not in _HELP:
        result = subprocess.run(
            [*argv, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        assert result.returncode == 0, f"{' '.join(argv)} --help failed:\n{result.stderr[-2000:]}"
        _HELP[argv] = result.stdout
    return _HELP[argv]


def _check_command(words: list[str], where: str) -> list[str]:
    """What is wrong with one README command (empty when nothing): its program, script or make target,
    and the options, presets and --set keys it names."""
    from cottention_jax.configs import TRAIN_PRESETS  # noqa: PLC0415

    head = words[0]
    if head == "srun":  # SLURM runs the rest
        return _check_command(words[1:], where)
    if head == "make":
        return [f"{where}: no make target {t!r}" for t in words[1:] if t not in _make_targets()]
    if head in ("pip", "bash"):
        return []
    problems = []
    if head == "python":
        script = REPO_ROOT / words[1]
        if not script.is_file():
            return [f"{where}: no file {words[1]}"]
        command: tuple[str, ...] = (sys.executable, str(script))
    elif head.startswith("cottention-"):
        scripts = _entry_points()
        if head not in scripts:
            return [f"{where}: no entry point {head!r} in setup.cfg"]
        module, function = scripts[head].split(":")
        command = (
            sys.executable,
            "-c",
            f"import sys; sys.argv[0] = {head!r}; from {module} import {function}; {function}()",
        )
        if head == "cottention-launch" and "--" in words:  # launch -- the command it runs
            problems += _check_command(words[words.index("--") + 1 :], where)
            words = words[: words.index("--")]
        if head == "cottention-data" and len(words) > 1:
            command = (*command, words[1])
    else:
        return [f"{where}: unknown command {head!r}"]
    options = set(re.findall(r"(?<![\w-])(--[\w-]+)", _help(command)))
    keys = _config_keys(next(iter(TRAIN_PRESETS.values())))
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word.startswith("--") and word.split("=")[0] not in options:
            problems.append(f"{where}: {word.split('=')[0]} is not an option of {head}")
        if word == "--preset" and following not in TRAIN_PRESETS:
            problems.append(f"{where}: no training preset {following!r}")
        if word == "--set" and following.split("=")[0] not in keys:
            problems.append(f"{where}: no config key {following.split('=')[0]!r}")
    return problems


def test_shell_blocks_name_commands_targets_presets_and_keys_that_exist():
    assert BASH, "the README's commands are in ```bash blocks"
    problems = [
        problem
        for block in BASH
        for words in _commands(block)
        for problem in _check_command(words, f"README.md:{block.line} `{' '.join(words)}`")
    ]
    assert not problems, "\n".join(problems)


def test_the_shell_check_sees_a_wrong_target_option_preset_and_key():
    where = "README.md:1"
    assert _check_command(["make", "no-such-target"], where)
    assert _check_command(["python", "experiments/no_such_script.py"], where)
    assert _check_command(["cottention-nothing"], where)
    wrong = _check_command(["cottention-train", "--preset", "gpt-huge", "--set", "model.widht=3", "--colour"], where)
    assert len(wrong) == 3 and all(where in w for w in wrong)
    assert not _check_command(
        [
            "cottention-launch",
            "--nproc",
            "2",
            "--",
            "cottention-train",
            "--preset",
            "gpt-tiny",
            "--set",
            "sharding=data",
        ],
        where,
    )
