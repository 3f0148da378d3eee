"""The docs cannot drift from the code: each test fails when they part ways.

- docs/configuration.md lists, in the first column of its tables, every
  environment variable the code reads, and nothing the code does not read. What
  the code reads is found in src/**/*.rs, outside tests: every string literal
  that looks like an environment variable's name (A_NAME_IN_CAPITALS with at
  least one underscore), wherever the reading call is (`get("X")`,
  `std::env::var("X")`, a list of names...). The variables that only the
  libraries read (the AWS SDK's, the OpenTelemetry SDK's) are in a section of
  their own, "Read by the libraries", checked against `LIBRARY_VARIABLES` here.
- docs/operations.md's "The operator CLI" has every command of the CLI, and
  each command's options in the rows of its table that name the command. The
  commands and options come from the built binary's help
  (target/debug/s3-key-rotation, which scripts/test.sh builds first), so they
  are clap's, whatever the source looks like.
- docs/operations.md's "Runbook" has one section per alarm of template.yaml
  (every resource of type AWS::CloudWatch::Alarm, `Fn::ForEach` expanded),
  headed by the alarm's logical id, and no section for an alarm that is gone.
- Every relative link of README.md and docs/*.md resolves: its file exists and,
  for `#anchor`, the file has a heading of that anchor (GitHub's rule).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import cfn  # noqa: E402

DOCS = ROOT / "docs"
CLI = ROOT / "target" / "debug" / "s3-key-rotation"
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
# String literals of src/ that look like a variable's name but are not one (none yet).
NOT_VARIABLES = set()
# Read by the AWS SDK or the OpenTelemetry SDK, not by the project's code.
LIBRARY_VARIABLES = {
    "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES",
}
LIBRARY_SECTION = "Read by the libraries"


# ---- Markdown

def without_code_blocks(text):
    """The lines of a Markdown text, fenced code blocks blanked (their line numbers kept)."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return out


def sections(text, level):
    """{heading: the lines under it} of the headings of `level` (2: `## `)."""
    found, current = {}, None
    for line in without_code_blocks(text):
        m = re.match(r"(#+) (.*)", line)
        if m and len(m.group(1)) <= level:
            current = m.group(2).strip() if len(m.group(1)) == level else None
            if current is not None:
                found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def cells(row):
    """The cells of a Markdown table row (`\\|` inside a cell is not a border)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def table_rows(lines):
    return [cells(line) for line in lines
            if line.lstrip().startswith("|") and not re.fullmatch(r"[\s|:-]+", line)]


def slug(heading):
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in without_code_blocks(path.read_text()):
        m = re.match(r"#+ (.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


# ---- The environment variables

def rust_items_outside_tests(text):
    """`text` (Rust source) with comments and `#[cfg(test)]` items removed, and its string literals."""
    out, literals, i, n = [], [], 0, len(text)
    depth, skip_from = 0, None  # skipping a #[cfg(test)] item: the depth its braces started at
    pending_test = False
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        raw = re.match(r'b?r(#*)"', text[i:i + 10])
        if raw or c == '"' or (c == "b" and text.startswith('b"', i)):
            if raw:
                start = i + raw.end()
                end = text.find('"' + raw.group(1), start)
                value, i = text[start:end], end + 1 + len(raw.group(1))
            else:
                j = i + (2 if c == "b" else 1)
                chars = []
                while text[j] != '"':
                    if text[j] == "\\":
                        chars.append(text[j:j + 2])
                        j += 2
                    else:
                        chars.append(text[j])
                        j += 1
                value, i = "".join(chars), j + 1
            if skip_from is None and not pending_test:
                literals.append(value)
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12])
            if m:  # a char literal ('{' must not count as a brace); else a lifetime
                i += m.end()
                continue
        if text.startswith("#[cfg(test)]", i):
            pending_test = True
            i += len("#[cfg(test)]")
            continue
        if c == "{":
            if pending_test and skip_from is None:
                skip_from, pending_test = depth, False
            depth += 1
        elif c == "}":
            depth -= 1
            if skip_from is not None and depth == skip_from:
                skip_from = None
        elif c == ";" and pending_test and skip_from is None:
            pending_test = False  # `#[cfg(test)] mod tests;` or a `use`: nothing to skip
        if skip_from is None and not pending_test:
            out.append(c)
        i += 1
    return "".join(out), literals


def variables_read_by_the_code():
    found = {}
    for path in sorted((ROOT / "src").rglob("*.rs")):
        _, literals = rust_items_outside_tests(path.read_text())
        for value in literals:
            if ENV_NAME.fullmatch(value) and value not in NOT_VARIABLES:
                found.setdefault(value, path.relative_to(ROOT).as_posix())
    return found


def variables_documented():
    """({variable: section} of the tables of configuration.md, outside the libraries' section), and the libraries'."""
    documented, library = {}, set()
    for heading, lines in sections((DOCS / "configuration.md").read_text(), 2).items():
        for row in table_rows(lines):
            for name in re.findall(r"`([^`]+)`", row[0]):
                if ENV_NAME.fullmatch(name):
                    if heading == LIBRARY_SECTION:
                        library.add(name)
                    else:
                        documented[name] = heading
    return documented, library


def test_the_code_reads_its_configuration_from_string_literals():
    read = variables_read_by_the_code()
    # The scan must see the ways the code reads variables today; if these are
    # gone, it no longer sees what the code reads.
    for name in ("REGISTRY_BUCKET", "SDK_OPERATION_TIMEOUT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert name in read, f"{name} not found in src/: how does the code read its variables now?"


def test_every_variable_the_code_reads_is_in_configuration_md():
    read = variables_read_by_the_code()
    documented, _ = variables_documented()
    missing = sorted(f"{name} (read in {path})" for name, path in read.items() if name not in documented)
    assert not missing, ("read by the code, missing from the tables of docs/configuration.md: "
                         + ", ".join(missing))


def test_every_variable_in_configuration_md_is_read_by_the_code():
    read = variables_read_by_the_code()
    documented, _ = variables_documented()
    stale = sorted(f"{name} (section {section!r})" for name, section in documented.items() if name not in read)
    assert not stale, ("in docs/configuration.md but read by nothing in src/ (remove it, or move it to "
                       f"{LIBRARY_SECTION!r} if a library reads it): " + ", ".join(stale))


def test_the_libraries_variables_are_the_libraries():
    read = variables_read_by_the_code()
    _, library = variables_documented()
    assert library, f"docs/configuration.md has no section {LIBRARY_SECTION!r} with a table"
    assert not library - LIBRARY_VARIABLES, f"not known as a library's variable: {sorted(library - LIBRARY_VARIABLES)}"
    assert not library & set(read), f"read by the code, so in its area's table: {sorted(library & set(read))}"


# ---- The operator CLI

def cli_help(*args):
    if not CLI.is_file():
        pytest.fail(f"{CLI.relative_to(ROOT)} is missing: `cargo build --locked --bins` (scripts/test.sh does)",
                    pytrace=False)
    done = subprocess.run([str(CLI), *args, "--help"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, NO_COLOR="1", TERM="dumb"))
    assert done.returncode == 0, done.stderr
    return done.stdout


def help_entries(text, section):
    """The first words of the entries of `section` ("Commands", "Options") in clap's help."""
    m = re.search(rf"^{section}:\n((?:[ \t]+.*\n?|\n(?=[ \t]))*)", text, re.M)
    return [] if not m else [line.split()[0] for line in m.group(1).split("\n")
                             if re.match(r"\s{2}\S", line) and not re.match(r"\s{6,}", line)]


def cli_commands():
    commands = [c for c in help_entries(cli_help(), "Commands") if c != "help"]
    assert commands, "the CLI's help lists no command"
    options = {}
    for command in commands:
        text = cli_help(command)
        listed = re.search(r"^Options:\n(.*?)(?:\n\S|\Z)", text, re.M | re.S)
        assert listed, f"`{command} --help` lists no options:\n{text}"
        # An option's own line: indented 2 to 6 columns (its description is further in).
        found = re.findall(r"^ {2,6}(?:-\w, )?(--[a-z][a-z0-9-]*)", listed.group(1), re.M)
        options[command] = sorted(set(found) - {"--help", "--version"})
    return options


def cli_section_rows():
    text = (DOCS / "operations.md").read_text()
    cli = sections(text, 2).get("The operator CLI")
    assert cli is not None, "docs/operations.md has no section 'The operator CLI'"
    rows = []
    for row in table_rows(cli):
        first = row[0]
        commands = set(re.findall(r"(?<![-\w])[a-z][a-z-]*", first.replace("`", " ")))
        options = set(re.findall(r"--[a-z][a-z0-9-]*", first))
        rows.append((commands, options))
    return rows


def test_every_command_and_option_of_the_cli_is_in_operations_md():
    rows = cli_section_rows()
    problems = []
    for command, options in cli_commands().items():
        mine = [opts for commands, opts in rows if command in commands]
        if not mine:
            problems.append(f"command `{command}` has no row in the table of 'The operator CLI'")
            continue
        shown = set().union(*mine)
        problems += [f"`{command} {o}` is not in its rows" for o in options if o not in shown]
    assert not problems, "docs/operations.md, 'The operator CLI':\n  " + "\n  ".join(problems)


# ---- The runbook

def alarms():
    template = cfn.expand(cfn.load(ROOT / "template.yaml")) if hasattr(cfn, "expand") \
        else cfn.load(ROOT / "template.yaml")
    found = [name for name, r in template["Resources"].items() if r.get("Type") == "AWS::CloudWatch::Alarm"]
    assert found, "template.yaml has no alarm: was it read?"
    return found


def test_every_alarm_has_its_runbook_section():
    text = (DOCS / "operations.md").read_text()
    runbook = sections(text, 2).get("Runbook")
    assert runbook is not None, "docs/operations.md has no section 'Runbook'"
    headed = {m.group(1).strip().strip("`") for line in runbook for m in [re.match(r"### (.*)", line)] if m}
    missing = sorted(set(alarms()) - headed)
    assert not missing, f"alarms of template.yaml without a '### <logical id>' section in the Runbook: {missing}"
    stale = sorted(headed - set(alarms()))
    assert not stale, f"Runbook sections of alarms template.yaml does not have: {stale}"


# ---- Links

def markdown_files():
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def links(path):
    for number, line in enumerate(without_code_blocks(path.read_text()), 1):
        line = re.sub(r"`[^`]*`", "", line)
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                yield number, target


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(path):
    broken = []
    for number, target in links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(ROOT)}:{number}: ({target})"
        if not resolved.exists():
            broken.append(f"{where}: no file {file}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where}: {resolved.relative_to(ROOT)} has no heading #{anchor}")
    assert not broken, "links that do not resolve:\n  " + "\n  ".join(broken)


def test_the_docs_name_no_issue_and_nothing_outside_the_repository():
    for path in markdown_files():
        text = path.read_text()
        assert not re.search(r"\bissues? #?\d+", text, re.I), f"{path.relative_to(ROOT)} names an issue number"
        assert not re.search(r"DESIGN\.md|STYLE\.md|shared folder", text), \
            f"{path.relative_to(ROOT)} points outside the repository"
