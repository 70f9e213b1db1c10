"""Output injection: names that a checkpoint or a task chooses cannot forge or hide report lines.

One project, three tuned candidates and an unrelated parametrised test, with hostile text in every
string that reaches a report: the task name, the example ids, the class names, a candidate's
file name and a tensor name that ends up in an ERROR's reason. The hostile text holds a newline
followed by a green "ALL CHECKS PASSED" (an ANSI escape), a carriage return, an HTML tag, a
Markdown link and image, a table pipe, backticks, a GitHub @mention and a bidirectional override.

Asserted: the terminal shows every such character as a visible escape (no raw control character,
no line that starts with the forged text); the JSON report is valid JSON holding the raw values;
the Markdown has no raw HTML, no link, no image and a table whose rows all have the same number
of cells (also checked by rendering it with markdown-it when installed); the JUnit XML parses with
xml.etree and its properties hold no control characters; the PNG is written; and the verdicts and
the unrelated tests are those of a project with plain names.
"""

from __future__ import annotations

import json
import re
import textwrap
import xml.etree.ElementTree as ET

import pytest

FORGED = "ALL CHECKS PASSED"
# what a hostile name carries: a forged green line, a hidden carriage-return overwrite, HTML,
# Markdown link / image / table / code, an @mention and a right-to-left override
EVIL = (
    f"\n\x1b[32m{FORGED}\x1b[0m\r\x1b[2K<img src=x onerror=alert(1)><b>bold</b>"
    "[click](https://evil.example) ![i](https://evil.example/i.png) | `code` @octocat \u202eexe.txt"
)
# the same, as far as a file name can hold it (no "/")
EVIL_FILE = EVIL.replace("/", "_")

MODELS = """
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(5, 4))
"""

CONFTEST = """
import numpy as np
import pytest_forgetting as pf

EVIL = {evil!r}
K = 4
NAMES = [f"c{{k}}" + EVIL for k in range(K)]


def _data(n, trap):
    labels = np.arange(n) % K
    x = np.zeros((n, 1, 1, K + 1), dtype=np.float32)
    x[np.arange(n), 0, 0, labels] = 1.0
    x[np.flatnonzero(labels == 0)[:trap], 0, 0, K] = 1.0
    return x, labels


@pf.task("synth" + EVIL)
def synth():
    x, y = _data(400, 40)
    return pf.ImageClassificationTask(x, np.array(NAMES)[y], class_names=NAMES,
                                      ids=[f"ex{{i}}" + EVIL for i in range(len(y))])


@pf.task("plain")
def plain():
    x, y = _data(400, 0)
    return pf.ImageClassificationTask(x, y)
"""

CONTRACT = """
import pytest

EVIL = {evil!r}


@pytest.mark.retains(task="synth" + EVIL, max_drop=0.05, max_class_drop=0.5)
def test_keeps_synth():
    pass


@pytest.mark.retains(task="synth" + EVIL, metric="f1_macro", max_drop=0.05)
def test_keeps_synth_f1():
    pass


@pytest.mark.retains(task="plain", max_drop=0.05)
def test_keeps_plain():
    pass


@pytest.mark.parametrize("value", [EVIL], ids=["id" + EVIL])
def test_unrelated_with_hostile_id(value):
    assert value.startswith("\\n")


def test_unrelated():
    pass
"""


def _weights(trap_weight: float = 0.0, extra: str | None = None) -> dict:
    import torch

    w = torch.zeros(4, 5)
    w[:, :4] = torch.eye(4) * 5.0
    w[1, 4] = trap_weight
    state = {"1.weight": w, "1.bias": torch.zeros(4)}
    if extra:
        state[extra] = torch.zeros(1)
    return state


def _save(path, state):
    from safetensors.torch import save_file

    save_file(state, str(path))
    return path


_RUN: list = []


@pytest.fixture
def hostile_run(pytester):
    """Run the hostile project (once per module); return (result, folder)."""
    if not _RUN:
        _RUN.append(_hostile_run(pytester))
    return _RUN[0]


def _hostile_run(pytester):
    pytester.makepyfile(tinymodels=MODELS)
    pytester.makeconftest(CONFTEST.format(evil=EVIL))
    pytester.makepyfile(test_contract=CONTRACT.format(evil=EVIL))
    path = pytester.path
    base = _save(path / "base.safetensors", _weights())
    ckpts = path / "ckpts"
    ckpts.mkdir()
    tuned = [
        _save(ckpts / "trap.safetensors", _weights(trap_weight=10.0)),
        _save(ckpts / f"named{EVIL_FILE}.safetensors", _weights(trap_weight=10.0)),
        _save(ckpts / "badkeys.safetensors", _weights(extra="head.weight" + EVIL)),
    ]
    plot = []
    try:
        import matplotlib  # noqa: F401

        plot = [f"--forgetting-plot={path / 'out' / 'plot.png'}"]
    except ImportError:
        pass
    result = pytester.runpytest(
        f"--base-ckpt={base}",
        *[f"--tuned-ckpt={t}" for t in tuned],
        "--model-factory=tinymodels:build",
        f"--forgetting-cache-dir={path / 'cache'}",
        f"--forgetting-json={path / 'out' / 'report.json'}",
        f"--forgetting-markdown={path / 'out' / 'report.md'}",
        f"--junitxml={path / 'out' / 'junit.xml'}",
        "-rA",
        "-p",
        "no:cacheprovider",
        *plot,
    )
    return result, path


CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def test_verdicts_and_other_tests_are_unaffected(hostile_run):
    result, path = hostile_run
    # per candidate: synth FAIL (accuracy, f1) and plain PASS; the candidate whose file holds a
    # stray tensor is an ERROR on each of its three checks; both unrelated tests pass
    result.assert_outcomes(passed=4, failed=4, errors=3)
    report = json.loads((path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["summary"]["checks"] == 9
    assert report["summary"]["fail"] == 4 and report["summary"]["pass"] == 2
    assert report["summary"]["error"] == 3


def test_terminal_shows_hostile_text_escaped(hostile_run):
    result, _ = hostile_run
    out = result.stdout.str()
    assert not CONTROL.search(out), repr(CONTROL.search(out))
    for line in out.splitlines():
        assert not line.lstrip(" >E").startswith(FORGED), line
    # every kind of name made it to the terminal, escaped
    visible = f"\\n\\x1b[32m{FORGED}"
    assert f"synth{visible}" in out  # task (table, failure message)
    assert re.search(r"ex\d+" + re.escape(visible), out)  # example ids
    assert f"c0{visible}" in out  # class names
    assert f"named{visible}" in out  # candidate (table heading, ranking)
    assert f"head.weight{visible}" in out  # tensor name inside an ERROR's reason
    assert "\\u202eexe" in out


def test_json_keeps_the_raw_values(hostile_run):
    _, path = hostile_run
    text = (path / "out" / "report.json").read_text(encoding="utf-8")
    report = json.loads(text)
    tasks = {row["task"] for row in report["rows"]}
    assert "synth" + EVIL in tasks
    candidates = {row["candidate"] for row in report["rows"]}
    assert f"named{EVIL_FILE}" in {c.rsplit("/", 1)[-1] for c in candidates}
    flipped = [i for row in report["rows"] for i in row.get("flipped_ids") or []]
    assert flipped and all(i.endswith(EVIL) for i in flipped)
    classes = [c["name"] for row in report["rows"] if row["task"] != "plain" for c in row.get("worst_classes") or []]
    assert classes and all(c.endswith(EVIL) for c in classes)
    errors = [row["reason"] for row in report["rows"] if row["verdict"] == "error"]
    assert errors and all("head.weight" in r for r in errors)
    assert not CONTROL.search(text.replace("\n", " "))  # raw in the values, escaped in the file


def test_markdown_has_no_html_no_links_and_a_sound_table(hostile_run):
    _, path = hostile_run
    text = (path / "out" / "report.md").read_text(encoding="utf-8")
    assert not CONTROL.search(text.replace("\n", " "))
    for line in text.splitlines():
        assert not line.lstrip("> ").startswith(FORGED), line
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) > 3
    cells = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
    assert len(cells) == 1, cells
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert "<img" not in html and "<a " not in html and "<b>" not in html
    assert "&lt;img src=x" in html  # shown, as text
    prose = re.sub(r"<(code|pre)>.*?</\1>", "", html, flags=re.S)
    assert "&lt;img src=x" in prose  # also outside code spans, escaped
    assert "@octocat" not in prose  # no @mention (a zero-width space follows the @)
    # GitHub autolinks bare URLs in text (not in code): the source has none outside code
    source = re.sub(r"^(`{3,})text\n.*?\n\1$", "", text, flags=re.S | re.M)
    source = re.sub(r"(?<!\\)(`+).*?(?<!\\)\1", "", source)
    assert "evil" in source and "https://" not in source and "www." not in source
    header_cells = len(re.findall(r"<th[ >]", html.split("</tr>", 1)[0]))
    body = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)[1:]
    assert header_cells == 11 and len(body) == 9
    for row in body:
        assert len(re.findall(r"<td[ >]", row)) == header_cells, row


def test_junit_properties_are_escaped_and_the_xml_parses(hostile_run):
    _, path = hostile_run
    tree = ET.parse(path / "out" / "junit.xml")
    values = [p.get("value") for p in tree.iter("property")]
    assert values
    assert not any(CONTROL.search(v) or "\n" in v for v in values)
    tasks = [p.get("value") for p in tree.iter("property") if p.get("name") == "forgetting_task"]
    assert any(f"synth\\n\\x1b[32m{FORGED}\\x1b[0m\\r" in t for t in tasks), tasks
    cases = {c.get("name") for c in tree.iter("testcase")}
    assert "test_unrelated" in cases and len(cases) == 11


def test_plot_is_written(hostile_run):
    pytest.importorskip("matplotlib")
    result, path = hostile_run
    assert (path / "out" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    result.stdout.fnmatch_lines(["forgetting: wrote *plot.png"])


def test_plain_project_has_the_same_verdicts(pytester):
    """The same project with plain names: same outcome counts (the escaping changes no verdict)."""
    plain = textwrap.dedent(CONTRACT.format(evil="")).replace("value.startswith", "not value or value.startswith")
    pytester.makepyfile(tinymodels=MODELS)
    pytester.makeconftest(CONFTEST.format(evil=""))
    pytester.makepyfile(test_contract=plain)
    path = pytester.path
    base = _save(path / "base.safetensors", _weights())
    tuned = [
        _save(path / "trap.safetensors", _weights(trap_weight=10.0)),
        _save(path / "named.safetensors", _weights(trap_weight=10.0)),
        _save(path / "badkeys.safetensors", _weights(extra="head.weight")),
    ]
    result = pytester.runpytest(
        f"--base-ckpt={base}",
        *[f"--tuned-ckpt={t}" for t in tuned],
        "--model-factory=tinymodels:build",
        "--forgetting-no-cache",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=4, failed=4, errors=3)


# --------------------------------------------------------------------------- the escaping itself


def test_terminal_escapes_make_every_hidden_character_visible():
    from pytest_forgetting import escape

    assert escape.terminal(f"a\n\x1b[32m{FORGED}\r\t") == f"a\\n\\x1b[32m{FORGED}\\r\\t"
    assert escape.terminal("\x9b2J\x7f\x00") == "\\x9b2J\\x7f\\x00"  # C1 CSI, DEL, NUL
    assert escape.terminal("\u202eexe.txt\u2066\u200b\u2028\ufeff") == ("\\u202eexe.txt\\u2066\\u200b\\u2028\\ufeff")
    assert escape.terminal("\ud800\U000e0041") == "\\ud800\\U000e0041"
    assert escape.terminal("é ≥ 数字 ✅ naïve") == "é ≥ 数字 ✅ naïve"  # printable text stays
    assert escape.terminal("x" * 500, 10) == "x" * 9 + "…(+491 chars)"
    assert escape.plot("$\\frac{1}{0}$") == "\\$\\frac{1}{0}\\$"


def test_xml_escape_leaves_only_what_xml_can_hold():
    from pytest_forgetting import escape

    text = escape.xml("a\x00b\x1b[0m\x0b\ufffe\uffff\ud800\n\té")
    assert text == "a\\x00b\\x1b[0m\\x0b\\ufffe\\uffff\\ud800\\n\\té"
    element = ET.fromstring(f'<p v="{text}"/>')  # parses: nothing illegal left
    assert element.get("v") == text


def test_json_text_escapes_hidden_characters_and_keeps_the_values():
    from pytest_forgetting import escape

    value = {"id": "x\u202e\x9b\ud800\U000e0041\u2028 é ≥"}
    text = escape.json_text(json.dumps(value, ensure_ascii=False))
    assert json.loads(text) == value
    assert not CONTROL.search(text) and "é ≥" in text
    text.encode("utf-8")  # a lone surrogate can no longer break the write


@pytest.mark.parametrize(
    "name",
    [
        "<script>alert(1)</script>",
        "[x](https://evil.example)",
        "![i](x.png)",
        "a | b",
        "`code`",
        "**bold** _it_ ~~s~~",
        "# heading",
        "> quote",
        "- item",
        "+ item",
        "1. one",
        "1) one",
        "&lt;b&gt;",
        "https://evil.example/x",
        "www.evil.example",
        "@octocat",
        "$x^2$",
        "a\\|b",
        "back\\slash\\",
        "<https://evil.example>",
        "[ref]: https://evil.example",
        "html <!-- c -->",
    ],
)
def test_markdown_escape_renders_as_the_literal_text(name):
    markdown_it = pytest.importorskip("markdown_it")
    import html

    from pytest_forgetting import escape

    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    rendered = md.render(escape.markdown(name))
    assert rendered.startswith("<p>") and rendered.endswith("</p>\n"), rendered
    inner = rendered[3:-5]
    assert "<" not in inner, rendered  # no element of any kind
    assert html.unescape(inner).replace("\u200b", "") == name
    # in a table cell it stays one cell
    table = md.render(f"| a | b |\n|---|---|\n| {escape.markdown(name)} | {escape.markdown_code(name)} |\n")
    assert len(re.findall(r"<td[ >]", table)) == 2, table


def test_markdown_code_span_holds_any_backtick_run():
    markdown_it = pytest.importorskip("markdown_it")
    import html

    from pytest_forgetting import escape

    md = markdown_it.MarkdownIt("commonmark")
    for name in ["a`b", "``x``", "`lead", "trail`", "<b>x</b>"]:
        rendered = md.render(escape.markdown_code(name, table=False))
        code = re.fullmatch(r"<p><code>(.*)</code></p>\n", rendered, flags=re.S)
        assert code and html.unescape(code.group(1)) == name, rendered
