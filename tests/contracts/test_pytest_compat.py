"""pytest-forgetting as a pytest citizen: option spelling, interruptions, ids, JUnit, Hypothesis, plugins.

Each test drives a whole run through pytester on the tiny project of ``conftest.Project``.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

RETAINS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.02)
    def test_keeps_synth():
        pass
"""

PYPROJECT = """
    [tool.pytest.ini_options]
    addopts = "-p no:cacheprovider"

    [tool.pytest_forgetting]
    retains = [{ task = "synth", max_drop = 0.02 }]
"""


def _outside(tmp_path_factory: pytest.TempPathFactory, p, **weights) -> tuple[Path, Path]:
    """Base and tuned checkpoints on a 'data disk': a folder outside the pytester project."""
    from _helpers.project import linear_weights, save_weights

    data = tmp_path_factory.mktemp("data-disk")
    base = save_weights(data / "base.safetensors", linear_weights())
    tuned = save_weights(data / "tuned.safetensors", linear_weights(**weights))
    return base, tuned


def _eq_args(p, tuned: Path | None = None, *extra: str) -> list[str]:
    """The project's options, written --opt=VALUE."""
    out = [f"--base-ckpt={p.base}", "--model-factory=tinymodels:build", f"--forgetting-cache-dir={p.path / 'cache'}"]
    if tuned is not None:
        out.append(f"--tuned-ckpt={tuned}")
    return out + list(extra)


# -- 1. --opt PATH (space) vs --opt=PATH when PATH lives outside the project ----------------------
def test_space_form_outside_the_project_is_a_usage_error(make_project, tmp_path_factory):
    p = make_project(n=400, trap=40)
    p.pytester.makefile(".toml", pyproject=textwrap.dedent(PYPROJECT))
    base, tuned = _outside(tmp_path_factory, p, trap_weight=10.0)
    reports = tmp_path_factory.mktemp("reports")
    js = reports / "r.json"
    js.write_text("{}")  # a report left by an earlier run: its path exists, as on a CI rerun
    common = ["--model-factory=tinymodels:build", f"--forgetting-cache-dir={p.path / 'cache'}"]

    # the '=' form: pyproject.toml is read, its declared check runs and fails, the report is written
    result = p.pytester.runpytest(f"--base-ckpt={base}", f"--tuned-ckpt={tuned}", f"--forgetting-json={js}", *common)
    result.assert_outcomes(failed=1)
    assert json.loads(js.read_text())["rows"][0]["verdict"] == "fail"

    # the space form: pytest would pick its rootdir from the checkpoint's folder and skip pyproject.toml
    for args in (
        ["--base-ckpt", str(base), f"--tuned-ckpt={tuned}"],
        [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}", "--forgetting-json", str(js)],
    ):
        result = p.pytester.runpytest(*args, *common)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        err = result.stderr.str()
        assert "written with a space" in err and "rootdir" in err
        assert (f"--base-ckpt={base}" in err) if "--base-ckpt" in args else (f"--forgetting-json={js}" in err)

    # a space-form value inside the project changes nothing pytest decides: no error
    inside = p.tuned("inside")
    result = p.pytester.runpytest(f"--base-ckpt={base}", "--tuned-ckpt", str(inside), *common)
    result.assert_outcomes(passed=1)


# -- 3. a check interrupted by anything gets an ERROR row ------------------------------------------
ODD_MODELS = '''
import os
import time

import pytest
import torch
from torch import nn

K = 4


class Odd(nn.Module):
    """The tiny linear model, which misbehaves on the 'odd' task (trap feature set to 7)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(K + 1, K))

    def forward(self, x):
        if bool((x.flatten(1)[:, K] == 7).any()):
            mode = os.environ.get("ODD_MODE", "")
            if mode == "fail":
                pytest.fail("stopped from inside the model")
            if mode == "skip":
                pytest.skip("skipped from inside the model")
            if mode == "sleep":
                time.sleep(30)
            if mode == "kbd":
                raise KeyboardInterrupt
        return self.net(x)


def build():
    return Odd()
'''

ODD_TASK = """

@pf.task("odd")
def odd():
    x, y = _data(400, 0, 2)
    x[:, 0, 0, K] = 7.0
    return pf.ImageClassificationTask(x, y)
"""

TWO_CHECKS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.02)
    def test_a_synth():
        pass

    @pytest.mark.retains(task="odd", max_drop=0.02)
    def test_b_odd():
        pass
"""


def _odd_project(make_project):
    from _helpers.project import CONFTEST, K, linear_weights, save_weights

    p = make_project(n=400)
    p.pytester.makepyfile(oddmodels=ODD_MODELS)
    p.pytester.makeconftest((CONFTEST % (K, 400, 0)) + ODD_TASK)
    state = {f"net.{k}": v for k, v in linear_weights().items()}
    save_weights(p.path / "odd.safetensors", state)
    p.test_file(TWO_CHECKS)
    js = p.path / "r.json"
    args = [
        f"--base-ckpt={p.path / 'odd.safetensors'}",
        f"--tuned-ckpt={p.path / 'odd.safetensors'}",
        "--model-factory=oddmodels:build",
        "--forgetting-no-cache",
        f"--forgetting-json={js}",
    ]
    return p, args, js


@pytest.mark.parametrize(
    "mode, outcome, reason",
    [
        ("fail", {"passed": 1, "errors": 1}, "Failed: stopped from inside the model"),
        ("skip", {"passed": 1, "skipped": 1}, "Skipped: skipped from inside the model"),
        ("sleep", {"passed": 1, "errors": 1}, "Timeout"),
    ],
)
def test_interrupted_check_gets_an_error_row(make_project, monkeypatch, mode, outcome, reason):
    p, args, js = _odd_project(make_project)
    monkeypatch.setenv("ODD_MODE", mode)
    extra = ["--timeout=2", "--timeout-method=signal"] if mode == "sleep" else []
    result = p.pytester.runpytest(*args, *extra)
    result.assert_outcomes(**outcome)
    rows = {r["test"].split("::")[-1]: r for r in json.loads(js.read_text())["rows"]}
    assert rows["test_a_synth"]["verdict"] == "pass"
    assert rows["test_b_odd"]["verdict"] == "error" and reason in rows["test_b_odd"]["reason"], rows["test_b_odd"]
    result.stdout.fnmatch_lines(["forgetting: 2 checks, 1 passed, 1 error*"])


def test_keyboard_interrupt_during_a_check_leaves_an_error_row(make_project, monkeypatch):
    p, args, js = _odd_project(make_project)
    monkeypatch.setenv("ODD_MODE", "kbd")
    result = p.pytester.runpytest(*args, no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    rows = {r["test"].split("::")[-1]: r for r in json.loads(js.read_text())["rows"]}
    assert rows["test_b_odd"]["verdict"] == "error" and "KeyboardInterrupt" in rows["test_b_odd"]["reason"]


def test_summary_line_agrees_with_pytest_when_the_body_fails(make_project):
    p = make_project(n=400)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.02)
        def test_checks_pass_body_fails():
            assert False, "the body's own assertion"
    """)
    js = p.path / "r.json"
    result = p.pytester.runpytest(*p.args(p.base), f"--forgetting-json={js}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["forgetting: 1 check, 1 passed*; pytest: 1 test with passing checks failed*"])
    row = json.loads(js.read_text())["rows"][0]
    assert row["verdict"] == "pass" and row["pytest_outcome"] == "failed"


# -- 5. JUnit XML: one property set per check, on the testsuite, valid under xunit2, replaced on reruns
def _junit(path: Path) -> tuple[list, list[tuple[str, str]]]:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = suite.findall("testcase")
    props = [(p.get("name"), p.get("value")) for p in suite.findall("properties/property")]
    return cases, props


@pytest.mark.parametrize("family", ["xunit2", "xunit1"])
def test_junit_properties_once_per_check_on_the_testsuite(make_project, family):
    p = make_project(n=400, trap=40)
    p.pytester.makefile(".toml", pyproject=textwrap.dedent(PYPROJECT))
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.2)
        def test_loose():
            pass
    """)
    xml = p.path / "junit.xml"
    tuned = p.tuned(trap_weight=10.0)
    result = p.pytester.runpytest(
        *_eq_args(p, tuned), f"--junitxml={xml}", "-o", f"junit_family={family}", "--reruns", "2"
    )
    result.assert_outcomes(passed=1, failed=1)
    assert result.parseoutcomes().get("rerun") == 2
    cases, props = _junit(xml)
    assert all(case.find("properties") is None for case in cases)  # xunit2 allows none there
    tests = [v for k, v in props if k == "forgetting_test"]
    assert sorted(tests) == ["pyproject.toml::retains:synth", "test_contract.py::test_loose"]
    assert sorted(v for k, v in props if k == "forgetting_verdict") == ["fail", "pass"]


# -- 4. declared-check ids that pytest finds again -------------------------------------------------
DECLARED = """
    [tool.pytest_forgetting]
    retains = [{ task = "synth", max_drop = 0.02 }, { task = "synth", metric = "f1_macro", max_drop = 0.5 }]
"""

LOOSE_AND_PLAIN = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.2)
    def test_loose():
        pass

    def test_plain():
        pass
"""


def test_declared_check_ids_round_trip(make_project):
    p = make_project(n=400, trap=40)
    p.pytester.makefile(".toml", pyproject=textwrap.dedent(DECLARED))
    p.test_file(LOOSE_AND_PLAIN)
    args = _eq_args(p, p.tuned(trap_weight=10.0))
    run = p.pytester.runpytest

    result = run(*args, "--co", "-q")
    result.stdout.fnmatch_lines(
        ["pyproject.toml::retains:synth", "pyproject.toml::retains:synth:f1_macro", "4 tests collected*"]
    )
    result = run(*args)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["collected 4 items"])  # the declared checks are counted
    result.stdout.fnmatch_lines(["FAILED pyproject.toml::retains:synth - *"])
    run(*args, "-p", "no:xdist", "--strict-markers").assert_outcomes(passed=3, failed=1)  # no xdist_group then

    run(*args, "--lf").assert_outcomes(failed=1)  # only the declared check that failed
    run(*args, "pyproject.toml::retains:synth").assert_outcomes(failed=1)  # the id pasted back
    run(*args, "-k", "retains:synth:f1_macro").assert_outcomes(passed=1, deselected=3)
    # (--deselect takes node-id prefixes, as for functions: retains:synth would take retains:synth:f1_macro too)
    run(*args, "--deselect", "pyproject.toml::retains:synth:f1_macro").assert_outcomes(passed=2, failed=1, deselected=1)

    run(*args, "--sw").assert_outcomes(passed=2, failed=1)  # stops at the declared check (collected last)
    result = run(*args, "--sw")
    result.assert_outcomes(failed=1, deselected=2)  # resumes at it
    assert "not found" not in result.stdout.str()


# -- 6. Hypothesis: one row per check, the worst example's, with the count of examples -------------
HYPOTHESIS_TESTS = """
    from hypothesis import given, settings, strategies as st
    from safetensors.torch import load_file

    from tinymodels import build


    def model(name):
        m = build()
        m.load_state_dict(load_file(name))
        return m.eval()


    @settings(max_examples=6, deadline=None, derandomize=True, database=None)
    @given(name=st.sampled_from(["tuned.safetensors", "base.safetensors"]))
    def test_worst_example_shown(forgetting, name):
        forgetting.assert_retains(model(name), task="synth", max_drop=0.2)


    @settings(max_examples=6, deadline=None, derandomize=True, database=None)
    @given(max_drop=st.sampled_from([0.5, 0.3, 0.05]))
    def test_varying_margin_is_one_row(forgetting, max_drop):
        forgetting.assert_retains(model("tuned.safetensors"), task="synth", max_drop=max_drop)
"""


def test_hypothesis_rows_are_the_worst_example(make_project):
    p = make_project(n=400, trap=40)
    p.tuned(trap_weight=10.0)  # tuned.safetensors: 10 pp worse than base.safetensors
    p.test_file(HYPOTHESIS_TESTS)
    js, xml = p.path / "r.json", p.path / "junit.xml"
    result = p.pytester.runpytest(*_eq_args(p), f"--forgetting-json={js}", f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["forgetting: 2 checks, 1 passed, 1 failed*"])
    result.stdout.fnmatch_lines(["test_varying_margin_is_one_row (worst of *)*FAIL"])
    rows = {r["test"].split("::")[-1]: r for r in json.loads(js.read_text())["rows"]}
    assert sorted(rows) == ["test_varying_margin_is_one_row", "test_worst_example_shown"]
    worst = rows["test_worst_example_shown"]
    assert worst["verdict"] == "pass" and abs(worst["tuned"] - 0.9) < 1e-9 and worst["examples"] >= 2
    varying = rows["test_varying_margin_is_one_row"]
    assert varying["verdict"] == "fail" and varying["margin"] == 0.05 and varying["examples"] >= 2
    _, props = _junit(xml)
    assert sorted(v for k, v in props if k == "forgetting_test") == sorted(r["test"] for r in rows.values())


# -- 7. pytest-html, --collect-only ----------------------------------------------------------------
def test_pytest_html_gets_the_table_and_each_tests_rows(make_project):
    pytest.importorskip("pytest_html")
    p = make_project(n=400, trap=40)
    p.pytester.makefile(".toml", pyproject=textwrap.dedent(DECLARED))
    p.test_file(LOOSE_AND_PLAIN)
    page = p.path / "report.html"
    result = p.pytester.runpytest(*_eq_args(p, p.tuned(trap_weight=10.0)), f"--html={page}", "--self-contained-html")
    result.assert_outcomes(passed=3, failed=1)
    text = page.read_text()
    assert "forgetting summary" in text and "3 checks, 2 passed, 1 failed" in text
    # the summary table, and the passing test's own row as its extra
    assert len(re.findall(r"test_loose +synth +accuracy +400 +100.0% +90.0%", text)) == 2
    result = p.pytester.runpytest(*_eq_args(p, p.tuned(trap_weight=10.0)), "-p", "no:html")
    result.assert_outcomes(passed=3, failed=1)  # without pytest-html nothing of it is needed


def test_collect_only_does_not_import_torch(make_project):
    import subprocess
    import sys

    p = make_project(n=400)
    p.pytester.makefile(".toml", pyproject=textwrap.dedent(DECLARED))
    p.test_file(LOOSE_AND_PLAIN)
    code = (
        "import sys, pytest; rc = pytest.main(['--co', '-p', 'no:cacheprovider', *sys.argv[1:]]); "
        "print('torch imported:', 'torch' in sys.modules, 'rc:', int(rc))"
    )
    out = subprocess.run([sys.executable, "-c", code, *_eq_args(p, p.base)], cwd=p.path, capture_output=True, text=True)
    assert "4 tests collected" in out.stdout, out.stdout + out.stderr
    assert "torch imported: False rc: 0" in out.stdout, out.stdout + out.stderr


# -- the compatibility matrix: each way of running pytest gives the table and JSON of a plain run ---
_STABLE = (
    "test",
    "task",
    "metric",
    "kind",
    "candidate",
    "n",
    "base",
    "tuned",
    "drop",
    "ci_low",
    "ci_high",
    "margin",
    "nfr",
    "verdict",
)
COMPAT_PLUGINS = Path(__file__).resolve().parents[2] / ".venv" / "compat-plugins"  # pytest-randomly (scripts/test.sh)


def _rows(js: Path) -> dict[str, dict]:
    return {r["test"]: {k: r.get(k) for k in _STABLE} for r in json.loads(js.read_text())["rows"]}


def _table(result) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "forgetting summary" in line)
    return [
        line
        for line in lines[start + 1 :]
        if line.startswith(("forgetting: ", "test ", "retains:", "test_")) and not line.startswith("forgetting: wrote")
    ]


# name, extra args, "same" | "subset", how to run, what else to check
MATRIX = [
    ("-p no:cacheprovider", ["-p", "no:cacheprovider"], "same", "inprocess"),
    ("--junitxml xunit1", ["--junitxml=j.xml", "-o", "junit_family=xunit1"], "same", "inprocess"),
    ("--junitxml xunit2", ["--junitxml=j.xml", "-o", "junit_family=xunit2"], "same", "inprocess"),
    ("pytest-rerunfailures", ["--reruns", "1"], "same", "inprocess"),
    ("pytest-timeout", ["--timeout", "300"], "same", "inprocess"),
    ("pytest-html", ["--html=r.html"], "same", "inprocess"),
    ("-x", ["-x"], "subset", "inprocess"),
    ("--lf", ["--lf"], "subset", "inprocess"),
    ("--sw", ["--sw"], "subset", "inprocess"),
    ("pytest-xdist -n 2", ["-n", "2"], "same", "subprocess"),
    ("pytest-randomly", ["-p", "randomly", "-p", "no:cacheprovider"], "same", "subprocess"),
]


@pytest.mark.parametrize("name, extra, expect, how", MATRIX, ids=[m[0] for m in MATRIX])
def test_compat_matrix(make_project, monkeypatch, name, extra, expect, how):
    plugin = {
        "pytest-rerunfailures": "pytest_rerunfailures",
        "pytest-timeout": "pytest_timeout",
        "pytest-html": "pytest_html",
        "pytest-xdist -n 2": "xdist",
    }.get(name)
    if plugin:
        pytest.importorskip(plugin)
    if name == "pytest-randomly":
        if not (COMPAT_PLUGINS / "pytest_randomly").is_dir():
            pytest.skip("pytest-randomly is installed by scripts/test.sh into .venv/compat-plugins")
        monkeypatch.setenv("PYTHONPATH", str(COMPAT_PLUGINS))
    p = make_project(n=400, trap=40)
    p.pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n" + textwrap.dedent(DECLARED))
    p.test_file(LOOSE_AND_PLAIN)
    args = _eq_args(p, p.tuned(trap_weight=10.0))
    plain_js, js = p.path / "plain.json", p.path / "r.json"
    plain = p.pytester.runpytest(*args, f"--forgetting-json={plain_js}")  # also the cache --lf / --sw read
    plain.assert_outcomes(passed=3, failed=1)
    if name == "--sw":
        p.pytester.runpytest(*args, "--sw", "-p", "no:randomly")  # stepwise remembers the failure
    run = p.pytester.runpytest_subprocess if how == "subprocess" else p.pytester.runpytest
    result = run(*args, *extra, f"--forgetting-json={js}")
    rows, want = _rows(js), _rows(plain_js)
    if expect == "same":
        assert rows == want
        assert sorted(_table(result)) == sorted(_table(plain))
        result.assert_outcomes(passed=3, failed=1)
    else:  # -x / --sw stop at the first failure, --lf reruns the failures: their rows, as in the plain run
        assert rows and set(rows) < set(want)
        assert all(rows[t] == want[t] for t in rows)
        assert "pyproject.toml::retains:synth" in rows
    if name.startswith("--junitxml"):
        cases, props = _junit(p.path / "j.xml")
        assert all(case.find("properties") is None for case in cases)
        assert sorted(v for k, v in props if k == "forgetting_test") == sorted(want)
