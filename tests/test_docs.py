"""The documentation matches the code.

- Every `megaeeve` subcommand has a page, docs/COMMAND.md, and README's command list links it.
- Every flag a command's page names is one that command's argparse defines, and every flag it defines is on
  its page (aliases included), so a flag added without docs, or docs naming a flag that is gone, fail here.
- Every relative link in README.md and docs/ leads to a file that exists (and to a heading, for `#anchor`s).
- README's test command is the one `.ci/run` runs.

The parsers come from the code, `megaeeve.cli.<module>.build_parser(prog)`, not from `--help` output.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from megaeeve.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")  # `--flag`, not the tail of `a--b` or of a `---` rule
HELP = {"-h", "--help"}  # argparse's own, on every parser

# Flags of other programs that a command's page names beside the command's own (launch lines and the like).
OTHER_PROGRAMS = {
    "train": {"--nproc_per_node": "torchrun"},
}
# Flags README names that belong to the top-level `megaeeve` parser rather than to a subcommand.
TOP_LEVEL = {"--version", "--help"}


def page(command: str) -> Path:
    return DOCS / f"{command}.md"


def parser_of(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"megaeeve.cli.{COMMANDS[command][0]}")
    return module.build_parser(f"megaeeve {command}")


def defined_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string the parser accepts, aliases and hidden ones included, except -h/--help."""
    return {s for action in parser._actions for s in action.option_strings} - HELP


def named_flags(text: str) -> set[str]:
    return set(FLAG.findall(text)) - HELP


def mentions(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def flag_drift(parser: argparse.ArgumentParser, text: str, others: set[str] = frozenset()
               ) -> tuple[set[str], set[str]]:
    """(flags the text names that the parser lacks, flags the parser defines that the text never names)."""
    defined = defined_flags(parser)
    unknown = named_flags(text) - defined - set(others)
    undocumented = {flag for flag in defined if not mentions(text, flag)}
    return unknown, undocumented


def test_every_command_has_a_page_and_readme_links_it():
    readme = README.read_text(encoding="utf-8")
    for command in COMMANDS:
        assert page(command).is_file(), f"`megaeeve {command}` has no page {page(command).relative_to(ROOT)}"
        row = next((line for line in readme.splitlines() if line.startswith(f"| `megaeeve {command}` |")), None)
        assert row is not None, f"README's command list has no row for `megaeeve {command}`"
        assert f"(docs/{command}.md)" in row, f"README's row for `megaeeve {command}` does not link docs/{command}.md"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_page_names_exactly_the_flags_of_its_command(command):
    text = page(command).read_text(encoding="utf-8")
    others = OTHER_PROGRAMS.get(command, {})
    for flag, program in others.items():  # keep the list of foreign flags honest
        assert mentions(text, flag), f"OTHER_PROGRAMS lists {flag} ({program}) but docs/{command}.md never names it"
    parser = parser_of(command)
    assert not set(others) & defined_flags(parser), f"OTHER_PROGRAMS[{command!r}] lists a flag of the command itself"
    unknown, undocumented = flag_drift(parser, text, set(others))
    assert not unknown, f"docs/{command}.md names flags `megaeeve {command}` does not define: {sorted(unknown)}"
    assert not undocumented, f"`megaeeve {command}` defines flags docs/{command}.md leaves out: {sorted(undocumented)}"


def test_the_flag_check_fails_on_drift():
    """The check above can fail: a flag added to the parser without docs, and docs naming a flag that the
    parser does not define, are both reported, on a real command's parser and page."""
    parser = parser_of("merge")
    text = page("merge").read_text(encoding="utf-8")
    assert flag_drift(parser, text) == (set(), set())
    parser.add_argument("--shiny-new-flag", action="store_true")
    assert flag_drift(parser, text) == (set(), {"--shiny-new-flag"})
    assert flag_drift(parser, text + "\nUse `--gone-flag`.\n") == ({"--gone-flag"}, {"--shiny-new-flag"})
    parser = parser_of("train")  # an alias counts as a flag of its own
    text = page("train").read_text(encoding="utf-8").replace("`--deepspeed_config`", "`--ds_config`")
    assert flag_drift(parser, text, set(OTHER_PROGRAMS["train"]))[1] == {"--deepspeed_config"}


def test_every_flag_readme_names_exists():
    defined = set(TOP_LEVEL)
    for command in COMMANDS:
        defined |= defined_flags(parser_of(command))
    unknown = named_flags(README.read_text(encoding="utf-8")) - defined
    assert not unknown, f"README names flags no megaeeve command defines: {sorted(unknown)}"


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _without_code(path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_existing_files(doc):
    text = _without_code(doc.read_text(encoding="utf-8"))
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    broken = []
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_readme_shows_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# README's test command:") + 1].strip()
    readme = README.read_text(encoding="utf-8")
    assert re.search(rf"^```bash\n{re.escape(command)}\n```$", readme, flags=re.M), \
        f"README's test command is not `{command}`, the one .ci/run runs"
