"""Zero-code checks (--retains / --improves / [tool.pytest_forgetting]) and several tuned candidates."""

from __future__ import annotations

import json

import pytest

from pytest_forgetting.declarations import parse_spec
from pytest_forgetting.errors import ConfigError


def test_parse_spec():
    d = parse_spec("retains", "news:0.03,metric=f1_macro,relative=true,max_class_drop=0.1")
    assert d.kwargs == {"task": "news", "max_drop": 0.03, "metric": "f1_macro", "relative": True, "max_class_drop": 0.1}
    assert parse_spec("improves", "fashion:0.10").kwargs == {"task": "fashion", "min_gain": 0.10}
    for bad in ("mnist", "mnist:", ":0.1", "mnist:0.1,metric", "mnist:0.1,max_drop=0.2"):
        with pytest.raises(ConfigError):
            parse_spec("retains", bad)


def test_cli_checks_in_a_directory_without_tests(make_project):
    p = make_project(n=400, trap=40)
    p.pytester.path.joinpath("test_contract.py").unlink(missing_ok=True)
    tuned = p.tuned(trap_weight=10.0)
    args = p.args(tuned, "--retains", "synth:0.02", "--retains", "synth:0.2,metric=f1_macro", "--improves", "synth:0.0")
    result = p.pytester.runpytest(*args, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::retains:synth", "*::retains:synth:f1_macro", "*::improves:synth"])
    xml = p.path / "junit.xml"
    result = p.pytester.runpytest(*args, f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*forgetting summary*", "*synth*accuracy*FAIL*"])
    assert 'name="retains:synth"' in xml.read_text()
    result = p.pytester.runpytest(*args, "-k", "f1_macro")
    result.assert_outcomes(passed=1, deselected=2)


def test_pyproject_declarations_alongside_ordinary_tests(make_project):
    p = make_project(n=400)
    p.pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    p.pytester.makefile(
        ".toml",
        pyproject="""
        [tool.pytest_forgetting]
        retains = [{ task = "synth", max_drop = 0.02 }, { task = "synth", metric = "f1_macro", max_drop = 0.03, max_class_drop = 0.10 }]
        improves = [{ task = "synth", min_gain = 0.0 }]
    """,
    )
    result = p.pytester.runpytest(*p.args(p.base), "--forgetting-inconclusive", "pass")
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize(
    "toml, message",
    [
        ("retains = { task = 1 }", "task=1 must be a task name"),
        ('retain = [{ task = "synth", max_drop = 0.02 }]', "unknown key 'retain' (did you mean 'retains'?)"),
        ('retains = ["synth"]', "retains[0]: expected an inline table"),
        ('retains = [{ task = "synth", max_drop = 2 }]', "retains[0]: max_drop=2 is outside [0, 1]"),
        (
            'retains = [{ task = "synth", max_drop = 0.02 }, { task = "synth", max_drop = 0.02 }]',
            "retains[1]: the same check is already declared",
        ),
        ("retains = [", "pyproject.toml: Invalid value"),  # pytest itself reads the file first
    ],
)
def test_malformed_pyproject_table(make_project, toml, message):
    p = make_project()
    p.pytester.makefile(".toml", pyproject=f"[tool.pytest_forgetting]\n{toml}\n")
    result = p.pytester.runpytest(*p.args(p.base))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_cli_declaration_errors_match_marker_errors(make_project):
    p = make_project()
    result = p.pytester.runpytest(*p.args(p.base, "--retains", "synht:0.02"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown task 'synht' (did you mean 'synth'?)" in result.stderr.str()


def _three_candidates(p):
    return [p.tuned("clean"), p.tuned("trap", trap_weight=10.0), p.tuned("swap", swap=True)]


def test_three_candidates_under_xdist(make_project):
    p = make_project(n=400, trap=8)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.05)
        def test_keeps():
            pass

        def test_body_runs_per_candidate(tuned_model):
            assert tuned_model is not None
    """)
    cands = _three_candidates(p)
    args = [
        "--base-ckpt",
        str(p.base),
        "--model-factory",
        "tinymodels:build",
        "--forgetting-cache-dir",
        str(p.path / "cache"),
    ]
    for c in cands:
        args += ["--tuned-ckpt", str(c)]
    js = p.path / "r.json"
    result = p.pytester.runpytest_subprocess(
        *args, "--improves", "synth:0.0", "--forgetting-json", str(js), "-n", "2", "-v"
    )
    result.assert_outcomes(passed=5, failed=4)
    out = result.stdout.str()
    for name in (
        "test_keeps[clean]",
        "test_keeps[trap]",
        "test_keeps[swap]",
        "test_body_runs_per_candidate[swap]",
        "improves:synth@trap",
    ):
        assert name in out
    assert "candidate clean:" in out and "ranking:" in out
    data = json.loads(js.read_text())
    assert {t["name"] for t in data["tuned_ckpts"]} == {"clean", "trap", "swap"}
    rows = data["rows"]
    assert sorted({r["candidate"] for r in rows}) == ["clean", "swap", "trap"]
    # the base is evaluated once for the whole run (file lock + cache across workers)
    assert sum(not r["base_cached"] for r in rows) == 1
    verdicts = {(r["candidate"], r["kind"]): r["verdict"] for r in rows}
    assert verdicts[("clean", "retains")] == "pass" and verdicts[("swap", "retains")] == "fail"


def test_pin_one_candidate_with_k(make_project):
    p = make_project(n=400)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.05)
        def test_keeps():
            pass
    """)
    args = p.args(None)
    for c in _three_candidates(p):
        args += ["--tuned-ckpt", str(c)]
    result = p.pytester.runpytest(*args, "-k", "clean")
    result.assert_outcomes(passed=1, deselected=2)
