"""The README tells the truth: its commands parse, its tables name every control, its advice is
on the first screen, and its build commands work in the environment it sets up."""

from __future__ import annotations

import functools
import inspect
import re
import shlex
from pathlib import Path

import pytest

import gpt2gen
from gpt2gen import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {name: (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "benchmarks/README.md")}
FIRST_SCREEN = "\n".join(README.splitlines()[:30])


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_the_first_screen_says_what_to_do_on_a_busy_machine():
    assert "busy" in FIRST_SCREEN and "--threads 1" in FIRST_SCREEN
    assert "set_num_threads(1)" in FIRST_SCREEN and "OMP_NUM_THREADS=1" in FIRST_SCREEN


def test_the_first_screen_says_how_the_torch_pin_gets_the_cpu_build():
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in FIRST_SCREEN


def _cli_lines():
    for block in code_blocks(README):
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            if line.startswith("$ gpt2gen") or line.startswith("gpt2gen "):
                yield line.removeprefix("$ ").split("  #")[0].strip()
            elif "| gpt2gen " in line:
                yield "gpt2gen " + line.split("| gpt2gen ", 1)[1].split("  #")[0].strip()


@pytest.mark.parametrize("line", sorted(set(_cli_lines())))
def test_every_readme_command_line_parses(line, capsys):
    words = shlex.split(line)[1:]
    parse_args = cli.parse_args
    if words[:1] == ["serve"]:  # the server's own command line
        parse_args = pytest.importorskip("gpt2gen.server.cli").parse_args
        words = words[1:]
    elif words[:1] == ["batch"]:  # the batch command's own command line
        from gpt2gen import batch_cli

        parse_args = batch_cli.parse_args
        words = words[1:]
    if words == ["--help"]:
        with pytest.raises(SystemExit) as exit_:
            parse_args(words)
        assert exit_.value.code == 0
    else:
        parse_args(words)  # argparse exits (status 2) on an unknown option or a bad value
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("function", [gpt2gen.generate, gpt2gen.GPT2.generate],
                         ids=["generate", "GPT2.generate"])
def test_the_controls_table_names_every_control(function):
    controls = section(README, "Generation controls")
    keywords = [p.name for p in inspect.signature(function).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords
    first_cells = [line.split("|")[1] for line in controls.splitlines() if line.startswith("| `")]
    missing = [k for k in keywords if not any(re.search(rf"`{k}[`=]", c) for c in first_cells)]
    assert not missing, f"rows missing from README's controls table: {missing}"


@pytest.mark.parametrize("name", DOCS)
def test_builds_without_isolation_install_their_build_tools_first(name):
    for block in code_blocks(DOCS[name]):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("pip install") and "--no-build-isolation" in line:
                before = "\n".join(lines[:i])
                assert re.search(r"^pip install [^\n]*scikit-build-core[^\n]*pybind11", before,
                                 flags=re.M), block


def test_every_variable_a_skipped_test_asks_for_is_documented():
    asked = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for reason in re.findall(r"pytest\.skip\((f?\"[^\"]*\")", path.read_text(encoding="utf-8")):
            asked.update(re.findall(r"\bGPT2GEN_[A-Z0-9_]+", reason))
    assert "GPT2GEN_GPT2_DIR" in asked
    assert not [v for v in asked if v not in README]


def test_one_speed_table():
    speed_tables = [line for line in README.splitlines() if line.startswith("| size |") and "tok/s" in line]
    assert len(speed_tables) == 1
    assert "PASS" not in README and "FAIL" not in README  # run-by-run logs are in benchmarks/


@functools.cache
def file_anchors(path: Path) -> set[str]:
    return heading_anchors(path.read_text(encoding="utf-8"))


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces as
    hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


# The hand-written docs (benchmarks/results holds the benchmarks' own reports).
MARKDOWN = sorted(p for p in ROOT.rglob("*.md")
                  if not {".git", "node_modules", "results"} & set(p.relative_to(ROOT).parts))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_between_the_docs_finds_its_file_and_section(path):
    # An edit that cuts a section (or renames a file) must not leave links to it behind.
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in file_anchors(linked):
            broken.append(target)
    assert not broken, broken


def test_heading_anchors_follow_github():
    assert heading_anchors("## Batch jobs: `gpt2gen batch` and Ray Data\n### Real GPT-2: a, b\n") == {
        "batch-jobs-gpt2gen-batch-and-ray-data", "real-gpt-2-a-b"}
