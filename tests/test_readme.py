"""The README (and the docs it links to) keep their promises.

- Every command in a code block that runs one of the repository's Python scripts (`python X.py`,
  `.venv/bin/python X.py`, `torchrun ... X.py`, `srun ... python X.py`, `VAR=.. python X.py`,
  `\\` line continuations joined) parses with that script's own argparse parser. The script is run
  with `runpy` and `sys.argv` set, and `ArgumentParser.parse_args` is patched to stop the script
  right after a successful parse, so nothing is trained, read or written. Placeholders such as DIR,
  CKPT, `<run>` and shell variables (`$i`, `$DATA`) are plain strings to the parser.
- `bash scripts/x.sh` names a script that exists (`scripts/cluster/sweep_subjects.sh` also passes its
  fine-tuning flags through `fine-tune_CVSCL.py`'s parser).
- Python fed to `python - <<'EOF'` compiles, and the names it imports from the repository exist.
- Every repository file or folder the text names (`scripts/foo.py`, `docs/x.md`,
  `models/LinearModel.py`, top-level `*.py`, `LICENSE`, ...) exists, and every link to a local file
  or heading resolves.
- Every docstring, comment or other string of the repository's Python files (and every comment of
  its shell scripts) that names a section of the README or of a doc names one that exists: a
  Markdown file followed by `#anchor`, by a quoted title (`, "Title"` or ` "Title"`), or, inside
  parentheses, by a comma and a bare title.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import runpy
import shlex
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/casme3-preparation.md", "docs/design.md", "docs/options.md",
        "docs/distributed.md", "docs/synthetic-data.md", "docs/benchmarks.md",
        "docs/differences-from-published.md", "docs/megc2019.md", "docs/gpu.md", "docs/evaluation-recipe.md",
        "data/README.md"]
FENCE = re.compile(r"^\s*(```|~~~)")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
SHELL_VALUE = re.compile(r"\$\([^()]*\)|\$\{[^}]*\}|\$\w+")  # $(...), ${...}, $VAR
ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z][\w .-]*>")  # <run>, <run name>, <subject>
SEPARATORS = {";", ";;", "&", "&&", "|", "||", "(", ")", "{", "}"}
REDIRECTS = {">", ">>", "<", "2>", "&>", "2>&1", ">&"}
SHELL_KEYWORDS = {"do", "then", "else", "time", "exec", "nohup"}
# Launchers whose environment `--shard auto` reads.
LAUNCH_ENV = {"torchrun": {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"},
              "srun": {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}}
# Paths the text may name that are not repository files: outputs and dataset layout.
REPO_DIRS = ("scripts", "docs", "models", "NCE", "tests", ".ci")
REPO_PATH = re.compile(r"(?<![\w./<>$*-])((?:%s)/[\w./-]*)" % "|".join(re.escape(d) for d in REPO_DIRS))
TOP_FILE = re.compile(r"(?<![\w./<>$*-])([\w-]+\.(?:py|sh|md|cff|ini)|LICENSE|requirements\.txt)(?![\w/-])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Files the scripts write into an output folder, which the docs name bare (docs/gpu.md's report).
OUTPUT_FILES = {"bench_gpu.md"}
LAUNCHER_WORD = re.compile(r"(^|[\s/;&|(])(python(3(\.\d+)?)?|torchrun|bash|sh)(\s|$)")
# Folders of outputs and environments, not of the repository.
SKIPPED_DIRS = {".git", ".venv", "out", "runs", "__pycache__", ".pytest_cache"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside fenced code blocks, continuations joined, heredoc
    bodies left out."""
    out, inside, heredoc, pending, start = [], False, None, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            inside, heredoc, pending = not inside, None, ""
            continue
        if not inside:
            continue
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined, pending = pending + line, ""
        match = HEREDOC.search(joined)
        if match:
            heredoc = match.group(1)
        out.append((start, joined))
    return out


def tokens(line: str) -> list[str]:
    """Shell words of `line` with placeholders and variables replaced by plain strings."""
    line = ANGLE_PLACEHOLDER.sub("PLACEHOLDER", line)
    line = SHELL_VALUE.sub("0", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def simple_commands(words: list[str]) -> list[list[str]]:
    """Split shell words into simple commands at ; & && | || ( ), dropping redirections."""
    commands, current, skip_next = [], [], False
    for word in words:
        if skip_next:
            skip_next = False
            continue
        if word in SEPARATORS:
            commands.append(current)
            current = []
        elif word in REDIRECTS or re.fullmatch(r"\d?>>?(&\d)?", word):
            skip_next = not word.endswith(("&1", "&2"))
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


@dataclass(frozen=True)
class Invocation:
    """A repository script and its arguments, as one README command runs it."""
    command: Command
    kind: str  # 'python', 'bash', or 'unreadable' (not a valid shell line)
    script: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def invocations(command: Command) -> list[Invocation]:
    """The repository scripts a command line runs (possibly several, e.g. in a loop)."""
    if not LAUNCHER_WORD.search(command.text):
        return []
    try:
        words_of_line = tokens(command.text)
    except ValueError as err:  # unbalanced quotes
        return [Invocation(command, "unreadable", "", (str(err),))]
    found = []
    for words in simple_commands(words_of_line):
        while words and (words[0] in SHELL_KEYWORDS or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
            words = words[1:]
        if not words:
            continue
        launchers = {Path(w).name for w in words}
        env = {k: v for name, values in LAUNCH_ENV.items() if name in launchers for k, v in values.items()}
        for i, word in enumerate(words):
            name = Path(word).name
            rest = words[i + 1:]
            if re.fullmatch(r"python(3(\.\d+)?)?", name):
                if rest and not rest[0].startswith("-"):
                    found.append(Invocation(command, "python", rest[0], tuple(rest[1:]), tuple(env.items())))
                break
            if name == "torchrun":
                script = next((j for j, w in enumerate(rest) if w.endswith(".py")), None)
                if script is not None:
                    found.append(Invocation(command, "python", rest[script], tuple(rest[script + 1:]),
                                            tuple(env.items())))
                break
            if name in ("bash", "sh"):
                if rest[:1] == ["-c"] and len(rest) > 1:
                    found += invocations(Command(command.doc, command.line, rest[1]))
                elif rest and rest[0].endswith(".sh"):
                    found.append(Invocation(command, "bash", rest[0], tuple(rest[1:]), tuple(env.items())))
                break
    return found


def all_invocations() -> list[Invocation]:
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for line, joined in code_lines(text):
            found += invocations(Command(doc, line, joined.strip()))
    return found


class _Parsed(Exception):
    """Raised by the patched parser after a successful parse: the script stops there."""


def parse_error(script: Path, args: list[str], env: dict[str, str]) -> str | None:
    """None when `script`'s own parser accepts `args`, else what it printed (and its exit code).

    The script runs as `__main__` until its parser has parsed `sys.argv`; a `parse_args` (or a
    direct `parse_known_args`) that succeeds raises `_Parsed`, so nothing after the parse runs.
    Abbreviated flags are refused.
    """
    original_parse_args = argparse.ArgumentParser.parse_args
    original_parse_known_args = argparse.ArgumentParser.parse_known_args
    depth = 0

    def parse_args(self, args=None, namespace=None):
        nonlocal depth
        self.allow_abbrev = False  # the docs spell flags out: an abbreviation breaks when a flag is added
        depth += 1
        try:
            original_parse_args(self, args, namespace)
        finally:
            depth -= 1
        raise _Parsed

    def parse_known_args(self, args=None, namespace=None):
        self.allow_abbrev = False
        result = original_parse_known_args(self, args, namespace)
        if depth == 0:
            raise _Parsed
        return result

    saved_argv, saved_env = sys.argv, {k: os.environ.get(k) for k in env}
    stderr = io.StringIO()
    argparse.ArgumentParser.parse_args = parse_args
    argparse.ArgumentParser.parse_known_args = parse_known_args
    os.environ.update(env)
    sys.argv = [str(script), *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(script), run_name="__main__")
    except _Parsed:
        return None
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            return None
        return f"exit code {exit_.code}: {stderr.getvalue().strip().splitlines()[-1:]}"
    finally:
        argparse.ArgumentParser.parse_args = original_parse_args
        argparse.ArgumentParser.parse_known_args = original_parse_known_args
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return "the script ran to the end without parsing its command line"


def sweep_flags(args: tuple[str, ...]) -> list[str]:
    """The fine-tuning flags of `scripts/cluster/sweep_subjects.sh [--workers N] [--nodes M --node_rank K] FLAGS`."""
    args = list(args)
    while args[:1] and args[0] in ("--workers", "--nodes", "--node_rank"):
        args = args[2:]
    return args


INVOCATIONS = all_invocations()


def test_the_docs_show_commands() -> None:
    readme = [i for i in INVOCATIONS if i.command.doc == "README.md"]
    scripts = {i.script for i in readme}
    assert {"pre-train_CVSCL.py", "fine-tune_CVSCL.py", "LinearProbing_CVSCL_10fold.py",
            "scripts/data/prepare_casme3.py", "scripts/experiments/results_table.py", "scripts/experiments/demo.sh"} <= scripts, scripts


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=lambda i: f"{i.command.doc}:{i.command.line}")
def test_command_parses(invocation: Invocation) -> None:
    assert invocation.kind != "unreadable", f"{invocation.command}\n  is not a shell line: {invocation.args[0]}"
    script = REPO / invocation.script
    assert script.is_file(), f"{invocation.command}\n  names {invocation.script}, which does not exist"
    if invocation.kind == "bash":
        if script.name != "sweep_subjects.sh":
            return
        script, args = REPO / "fine-tune_CVSCL.py", sweep_flags(invocation.args)
    else:
        args = list(invocation.args)
    error = parse_error(script, args, dict(invocation.env))
    assert error is None, f"{invocation.command}\n  does not parse with {script.name}'s parser: {error}"


def python_heredocs() -> list[tuple[str, int, str]]:
    """(doc, line, body) of every `python - <<'EOF'` heredoc in a code block."""
    found = []
    for doc in DOCS:
        lines = (REPO / doc).read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            match = re.match(r"\s*(\S*/)?python3?\s+-\s+<<-?\s*['\"]?(\w+)['\"]?\s*$", line)
            if match:
                end = next(i for i in range(number, len(lines)) if lines[i].strip() == match.group(2))
                found.append((doc, number, "\n".join(lines[number:end])))
    return found


PYTHON_HEREDOCS = python_heredocs()


@pytest.mark.parametrize("doc, line, body", PYTHON_HEREDOCS, ids=[f"{d}:{n}" for d, n, _ in PYTHON_HEREDOCS])
def test_python_snippet_imports_exist(doc: str, line: int, body: str) -> None:
    tree = compile(body, f"{doc}:{line}", "exec", ast.PyCF_ONLY_AST)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{doc}:{line}: {node.module} has no {', '.join(missing)}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    """The text of every heading of a Markdown file, outside code blocks, in order."""
    found = []
    inside = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
        if not inside and line.startswith("#"):
            found.append(line.lstrip("#").strip())
    return found


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(path):
        anchor = github_anchor(heading)
        out.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return out


def repository_file_names() -> set[str]:
    """Names of the files and folders in the working tree (outputs and environments left out)."""
    names = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        names.update(dirs)
        names.update(files)
    return names


@pytest.mark.parametrize("doc", DOCS)
def test_named_files_exist(doc: str) -> None:
    """Paths under the repository's folders must exist as written; a bare file name (`dataset.py`,
    `demo.sh`) must exist somewhere in the repository."""
    text = (REPO / doc).read_text()
    names = repository_file_names()
    missing = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in REPO_PATH.finditer(line):
            path = match.group(1).rstrip(".")
            if not (REPO / path).exists():
                missing.append(f"{doc}:{number}: {path}")
        for match in TOP_FILE.finditer(line):
            name = match.group(1)
            if name not in names and name not in OUTPUT_FILES:
                missing.append(f"{doc}:{number}: {name}")
    assert not missing, "named in the docs but not in the repository:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("doc", DOCS)
def test_links_resolve(doc: str) -> None:
    path = REPO / doc
    broken = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{doc}:{number}: {target} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{doc}:{number}: {target} (no such heading)")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


# A section of a Markdown file named in code: `<file>#<anchor>`, `<file>, "<title>"`, `<file> "<title>"`,
# `(<file>, <title>)`. The file is a path ending in .md (no URL: nothing may come right before it);
# a bare title that is itself a file name is a list of files, not a section.
MD_FILE = r"(?<![\w./:-])(?P<file>(?:[\w.-]+/)*[\w.-]+\.md)"
SECTION_REFERENCE = re.compile(
    MD_FILE + r"(?:#(?P<anchor>[\w-]+)"
    r"|(?:'s)?,?\s+(?:section\s+)?[\"\u201c](?P<title>[^\"\u201d]+)[\"\u201d])")
BARE_SECTION_REFERENCE = re.compile(r"\(\s*" + MD_FILE + r",\s*(?:section\s+)?(?P<title>[^()\"\u201c;,]+?)\s*\)")


def code_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string (docstrings included) and every run of comment lines of a
    Python file, or of every run of comment lines of a shell script, whitespace collapsed."""
    source = path.read_text()
    found: list[tuple[int, str]] = []
    comments: list[tuple[int, str]] = []
    if path.suffix == ".py":
        found += [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)]
        comments = [(token.start[0], token.string.lstrip("#")) for token in
                    tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT]
    else:
        comments = [(number, line.strip().lstrip("#")) for number, line in enumerate(source.splitlines(), start=1)
                    if line.strip().startswith("#") and not line.startswith("#!")]
    for number, text in comments:  # a comment continued on the next line is one text
        if found and found[-1][0] < 0 and -found[-1][0] + found[-1][1].count("\n") + 1 == number:
            found[-1] = (found[-1][0], found[-1][1] + "\n" + text)
        else:
            found.append((-number, text))
    return [(abs(number), " ".join(text.split())) for number, text in found]


def section_titles(path: Path) -> set[str]:
    """What a title in code may be, as an anchor: a heading whole, without a trailing
    parenthesis, or up to its colon."""
    titles = set()
    for heading in headings(path):
        titles |= {github_anchor(heading), github_anchor(re.sub(r"\s*\([^()]*\)$", "", heading)),
                   github_anchor(heading.split(": ")[0])}
    return titles


def stale_section_references(text: str, source: Path) -> list[str]:
    """Each section of a Markdown file that `text` (found in `source`) names and that does not exist."""
    stale = []
    for match in [*SECTION_REFERENCE.finditer(text), *BARE_SECTION_REFERENCE.finditer(text)]:
        name, anchor, title = match.group("file"), match.groupdict().get("anchor"), match.group("title")
        if title is not None and match.re is BARE_SECTION_REFERENCE and re.search(r"\.\w+$|/", title):
            continue  # a list of files, not a section
        doc = next((d for d in (REPO / name, source.parent / name) if d.is_file()), None)
        if doc is None:
            stale.append(f"{match.group(0)} (no such file)")
        elif anchor is not None and anchor not in anchors(doc):
            stale.append(f"{match.group(0)} (no such heading in {doc.relative_to(REPO)})")
        elif title is not None and github_anchor(title) not in section_titles(doc):
            stale.append(f"{match.group(0)} (no such section in {doc.relative_to(REPO)})")
    return stale


def code_files() -> list[Path]:
    """The repository's Python files and shell scripts (the CI entry point included)."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        found += [Path(root) / f for f in sorted(files) if f.endswith((".py", ".sh"))]
    return [*found, REPO / ".ci" / "run"]


def test_sections_named_in_code_exist() -> None:
    stale = [f"{path.relative_to(REPO)}:{number}: {reference}" for path in code_files()
             for number, text in code_texts(path) for reference in stale_section_references(text, path)]
    assert not stale, "sections named in code that the docs do not have:\n  " + "\n  ".join(stale)


def test_stale_section_references_are_found() -> None:
    """The checker itself (file names are built here so that this file names no section)."""
    readme, options = "README" + ".md", "docs/options" + ".md"
    first, second = headings(REPO / readme)[1:3]
    good = [f'see {readme}, "{first}"', f"{readme}#{github_anchor(second)}", f"({readme}, {second})",
            f'{readme} section "{second}"', f"({readme}, {options})", f"https://example.org/{readme}#nothing",
            f'({options}, "{headings(REPO / options)[1]}")', f"(see {readme})"]
    assert [stale_section_references(text, REPO / "util.py") for text in good] == [[]] * len(good)
    bad = [f'see {readme}, "{first} nowhere"', f"{readme}#{github_anchor(second)}-nowhere",
           f"({readme}, {second} nowhere)", f'docs/no-such-doc{".md"}, "{first}"']
    assert [len(stale_section_references(text, REPO / "util.py")) for text in bad] == [1] * len(bad)


def test_setup_and_test_commands_keep_their_markers() -> None:
    """`.ci/run` runs the first line of the code block after each marker."""
    lines = (REPO / "README.md").read_text().splitlines()
    for marker, command in (("<!-- setup-command -->", "python3 -m venv .venv && .venv/bin/pip install -r "
                                                         "requirements.txt && bash scripts/experiments/demo.sh"),
                            ("<!-- test-command -->", ".venv/bin/python -m pytest")):
        at = lines.index(marker)
        assert lines[at + 1].startswith("```") and lines[at + 2] == command, marker


def test_readme_is_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_a_misspelt_flag_fails(tmp_path: Path) -> None:
    """The checker itself: a README line with a misspelt flag is reported, a correct one is not."""
    good = Command("README.md", 1, "python fine-tune_CVSCL.py --data_folder DIR --model_path CKPT --layer 5")
    bad = Command("README.md", 2, "CUDA_VISIBLE_DEVICES=$i python fine-tune_CVSCL.py --data_folder DIR "
                                  "--model_path CKPT --shard $i/4 --freeze_encodr")
    (ok,), (wrong,) = invocations(good), invocations(bad)
    assert parse_error(REPO / ok.script, list(ok.args), {}) is None
    error = parse_error(REPO / wrong.script, list(wrong.args), {})
    assert error is not None and "--freeze_encodr" in error
