"""Whole workflows of the core plugin through pytest itself (pytester), on tiny models built here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

RETAINS = """
    import pytest

    @pytest.mark.retains(task="synth", max_drop=0.02)
    def test_keeps_synth():
        pass
"""


def test_plugin_import_is_light():
    code = "import sys, pytest_forgetting.plugin, pytest_forgetting; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_markers(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["forgetting:*", "*--base-ckpt=REF*", "*--tuned-ckpt=REF*", "*--forgetting-alpha=A*"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.retains(task, max_drop*", "@pytest.mark.improves(task, min_gain*"])


def test_identical_checkpoints_pass(make_project):
    p = make_project(n=400)
    p.test_file(RETAINS)
    result = p.pytester.runpytest(*p.args(p.base))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*forgetting summary*", "*synth*accuracy*400*100.0%*100.0%*PASS*"])


def test_regression_fails_with_actionable_message(make_project):
    p = make_project(n=400, trap=60)
    p.test_file(RETAINS)
    result = p.pytester.runpytest(*p.args(p.tuned(trap_weight=10.0)))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "synth/test accuracy dropped 15.0 pp" in out
    assert "margin 2.0 pp" in out and "ex0" in out  # the first flipped example id
    assert "NFR" in out and "FAIL" in out
    assert "pytest_forgetting" not in out.split("FAILURES")[1].split("forgetting summary")[0]  # no plugin traceback


def test_inconclusive_modes(make_project):
    # 3 flips out of 200 at margin 0.02: neither proven fine nor proven worse
    p = make_project(n=200, trap=3)
    p.test_file(RETAINS)
    tuned = p.tuned(trap_weight=10.0)
    result = p.pytester.runpytest(*p.args(tuned))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE*", "*examples would settle it*"])
    result = p.pytester.runpytest(*p.args(tuned, "--forgetting-inconclusive", "warn"))
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*ForgettingInconclusiveWarning*"])
    result = p.pytester.runpytest(*p.args(tuned, "--forgetting-inconclusive", "pass"))
    result.assert_outcomes(passed=1)


def test_improves_mirror(make_project):
    p = make_project(n=400, trap=100)
    p.test_file("""
        import pytest

        @pytest.mark.improves(task="synth", min_gain=0.10)
        def test_gains():
            pass
    """)
    # base = trap model (loses 100 of 400), tuned = clean identity: gain 0.25 > 0.10
    p.base = p.tuned("trap_base", trap_weight=10.0)
    clean = p.tuned("clean")
    p.pytester.runpytest(*p.args(clean)).assert_outcomes(passed=1)
    p.test_file("""
        import pytest

        @pytest.mark.improves(task="synth", min_gain=0.40)
        def test_gains():
            pass
    """)
    result = p.pytester.runpytest(*p.args(clean))
    result.assert_outcomes(failed=1)


def test_missing_base_option_is_a_usage_error(make_project):
    p = make_project()
    p.test_file(RETAINS)
    result = p.pytester.runpytest(f"--tuned-ckpt={p.base}", "--model-factory=tinymodels:build")
    assert result.ret == 4  # a configuration error, once for the run (issue 14, point 5)
    result.stderr.fnmatch_lines(["*no base checkpoint: pass --base-ckpt=REF*"])


def test_unmarked_tests_need_no_checkpoints(pytester):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "forgetting summary" not in result.stdout.str()


def test_missing_checkpoint_file(make_project):
    p = make_project()
    p.test_file(RETAINS)
    result = p.pytester.runpytest(*p.args(p.path / "nope.safetensors"))
    assert result.ret == 4  # a usage error, once (issue 14, point 5)
    err = result.stderr.str()
    assert "nope.safetensors" in err and str(p.path) in err


@pytest.mark.parametrize(
    "args, env, ini, message",
    [
        (["--forgetting-alpha", "2"], {}, "", "--forgetting-alpha='2'"),
        ([], {}, "forgetting_alpha = 0.7", "ini key forgetting_alpha"),
        (["--forgetting-batch-size", "zero"], {}, "", "--forgetting-batch-size='zero'"),
        (["--forgetting-device", "tpu"], {}, "", "--forgetting-device='tpu'"),
        (["--model-factory", "nocolon"], {}, "", "expected module:callable"),
    ],
)
def test_bad_option_values_are_usage_errors(pytester, args, env, ini, message):
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_bad_env_value_names_the_variable(pytester, monkeypatch):
    monkeypatch.setenv("FORGETTING_BASE_CKPT", "x")
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nforgetting_inconclusive = maybe\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini key forgetting_inconclusive='maybe'" in result.stderr.str()


def test_precedence_cli_env_ini(make_project, monkeypatch):
    p = make_project(n=400)
    p.test_file(RETAINS)
    p.pytester.makeini("[pytest]\nforgetting_alpha = 0.2\nforgetting_dtype = float32\n")
    monkeypatch.setenv("FORGETTING_TUNED_CKPT", str(p.base))
    report = p.path / "r.json"
    result = p.pytester.runpytest(*p.args(None, "--forgetting-alpha", "0.01", "--forgetting-json", str(report)))
    result.assert_outcomes(passed=1)
    data = json.loads(report.read_text())
    assert data["alpha"] == 0.01
    assert data["settings_sources"]["alpha"] == "cli"
    assert data["settings_sources"]["tuned_ckpts"] == "env"
    assert data["settings_sources"]["dtype"] == "ini"
    result.stdout.fnmatch_lines(["forgetting: base=* (cli), tuned=* (env)"])


@pytest.mark.parametrize(
    "marker, message",
    [
        ('retains(task="synht", max_drop=0.02)', "unknown task 'synht' (did you mean 'synth'?)"),
        ('retains(task="synth", max_drop=2)', "max_drop=2 is outside [0, 1] (a fraction: 2% is max_drop=0.02)"),
        ('retains(task="synth", max_drop=0.02, metric="acuracy")', "no metric 'acuracy' (did you mean 'accuracy'?)"),
        ('retains(task="synth", max_dorp=0.02)', "unknown keyword 'max_dorp' for retains() (did you mean 'max_drop'?)"),
        ('retains(task="synth")', "retains() needs max_drop="),
        ('improves(task="synth", min_gain=-0.1)', "min_gain=-0.1 is outside"),
        ('retains(task="synth", max_drop=0.02, split="tset")', "no split 'tset' (did you mean 'test'?)"),
        ('retains(task="synth-small", max_drop=0.02)', "even identical models cannot PASS below n=149"),
    ],
)
def test_marker_mistakes_are_usage_errors_at_collection(make_project, marker, message):
    p = make_project()
    p.test_file(f"""
        import pytest

        @pytest.mark.{marker}
        def test_x():
            pass
    """)
    result = p.pytester.runpytest(*p.args(p.base))
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert message in result.stderr.str()


def test_cache_second_run_uses_cached_base(make_project):
    p = make_project(n=400, trap=20)
    p.test_file(RETAINS)
    tuned = p.tuned(trap_weight=10.0)
    runs = []
    for extra in ([], [], ["--forgetting-no-cache"]):
        report = p.path / f"r{len(runs)}.json"
        p.pytester.runpytest(*p.args(tuned, "--forgetting-json", str(report), *extra))
        runs.append(json.loads(report.read_text())["rows"][0])
    assert [r["base_cached"] for r in runs] == [False, True, False]
    keys = ("n", "base", "tuned", "drop", "ci_low", "ci_high", "verdict", "nfr")
    assert [{k: r[k] for k in keys} for r in runs] == [{k: runs[0][k] for k in keys}] * 3
    assert not list((p.path / "cache").glob("*.tmp"))


def test_json_markdown_and_junit(make_project):
    p = make_project(n=400, trap=40)
    p.test_file(RETAINS)
    js, md, xml = p.path / "r.json", p.path / "r.md", p.path / "junit.xml"
    result = p.pytester.runpytest(
        *p.args(
            p.tuned(trap_weight=10.0),
            "--forgetting-json",
            str(js),
            "--forgetting-markdown",
            str(md),
            f"--junitxml={xml}",
        )
    )
    result.assert_outcomes(failed=1)
    data = json.loads(js.read_text())
    for key in ("base_ckpt", "tuned_ckpts", "device", "dtype", "alpha", "torch_version", "plugin_version"):
        assert key in data
    assert data["base_ckpt"]["fingerprint"].startswith("sha256:")
    row = data["rows"][0]
    for key in (
        "test",
        "task",
        "metric",
        "n",
        "base",
        "tuned",
        "drop",
        "ci_low",
        "ci_high",
        "margin",
        "relative",
        "nfr",
        "verdict",
        "reason",
        "base_cached",
        "base_eval_s",
        "tuned_eval_s",
    ):
        assert key in row
    assert row["verdict"] == "fail" and row["n"] == 400 and abs(row["drop"] - 0.1) < 1e-12
    assert "| synth" in md.read_text()
    assert 'name="forgetting_verdict" value="fail"' in xml.read_text()


def test_class_and_nfr_budgets(make_project):
    # 30 of the 100 class-0 examples flip: overall drop 7.5 pp, class 0 drops 30 pp
    p = make_project(n=400, trap=30)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.20, max_class_drop=0.10)
        def test_classes():
            pass

        @pytest.mark.retains(task="synth", max_drop=0.20, max_nfr=0.02)
        def test_flips():
            pass

        @pytest.mark.retains(task="synth", max_drop=0.20)
        def test_overall_only():
            pass
    """)
    result = p.pytester.runpytest(*p.args(p.tuned(trap_weight=10.0)))
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        ["*class drop budget 0.1: 0 +0.300*fail*", "*negative-flip rate 0.075*budget 0.02: fail*"]
    )


def test_relative_drop(make_project):
    p = make_project(n=400, trap=40)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.5, relative=True)
        def test_rel():
            pass
    """)
    result = p.pytester.runpytest(*p.args(p.tuned(trap_weight=10.0)))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*rel*PASS*"])


def test_nan_in_tuned_fails_and_in_base_errors(make_project):
    import torch

    p = make_project(n=400)
    p.test_file(RETAINS)
    from _helpers.project import linear_weights, save_weights  # noqa: E402  (tests/_helpers/project.py)

    bad = linear_weights()
    bad["1.bias"] = torch.tensor([float("nan")] * 4)
    nan_path = save_weights(p.path / "nan.safetensors", bad)
    result = p.pytester.runpytest(*p.args(nan_path))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NaN/Inf*"])
    p.base = nan_path
    result = p.pytester.runpytest(*p.args(p.path / "base.safetensors"))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*NaN/Inf*"])


def test_python_api_with_modules(make_project):
    p = make_project(n=400, trap=40)
    p.test_file("""
        import pytest
        import torch
        import tinymodels
        from safetensors.torch import load_file

        def _model(path):
            m = tinymodels.build()
            m.load_state_dict(load_file(path))
            return m

        def test_compare(forgetting, base_model):
            cmp = forgetting.compare("synth", tuned=_model("tuned.safetensors"), max_drop=0.02)
            assert cmp.verdict == "fail" and cmp.n == 400 and abs(cmp.drop - 0.1) < 1e-12

        def test_assert_retains_passes_for_identical(forgetting, base_model):
            forgetting.assert_retains(base_model, task="synth", max_drop=0.02)

        def test_assert_retains_fails(forgetting):
            forgetting.assert_retains(_model("tuned.safetensors"), task="synth", max_drop=0.02)
    """)
    p.tuned(trap_weight=10.0)
    result = p.pytester.runpytest(*p.args(None))
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*synth/test accuracy dropped 10.0 pp*"])


def test_xdist_summary_identical(make_project):
    p = make_project(n=400, trap=30)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.02)
        def test_a():
            pass

        @pytest.mark.retains(task="synth", max_drop=0.20, max_class_drop=0.10)
        def test_b():
            pass

        @pytest.mark.improves(task="synth", min_gain=0.0)
        def test_c():
            pass
    """)
    tuned = p.tuned(trap_weight=10.0)

    def table(*extra):
        js = p.path / f"r{len(extra)}.json"
        result = p.pytester.runpytest_subprocess(*p.args(tuned, "--forgetting-json", str(js), *extra))
        lines = result.stdout.str().split("forgetting summary")[1].splitlines()
        summary = [
            line
            for line in lines
            if line.strip() and not line.startswith(("forgetting: wrote", "=", "FAILED", "ERROR"))
        ]
        rows = json.loads(js.read_text())["rows"]
        for r in rows:
            r.pop("base_eval_s"), r.pop("tuned_eval_s"), r.pop("base_cached")
        return summary[:6], rows

    serial = table("--forgetting-no-cache")
    parallel = table("--forgetting-no-cache", "-n", "2")
    assert serial == parallel


@pytest.mark.parametrize("tuned_kw, verdict, outcome", [({}, "pass", "passed"), ({"swap": True}, "fail", "failed")])
def test_early_stop_settles_clear_cases_on_a_fraction(make_project, tuned_kw, verdict, outcome):
    p = make_project(n=2000)
    p.test_file("""
        import pytest

        @pytest.mark.retains(task="synth", max_drop=0.05)
        def test_keeps():
            pass
    """)
    js = p.path / "r.json"
    result = p.pytester.runpytest(*p.args(p.tuned(**tuned_kw), "--forgetting-early-stop", "--forgetting-json", str(js)))
    result.assert_outcomes(**{outcome: 1})
    row = json.loads(js.read_text())["rows"][0]
    assert row["verdict"] == verdict
    assert row["fraction_used"] < 0.5 and row["n"] < 1000
    assert "early stop" in row["reason"]


def test_unrelated_suite_pays_no_heavy_imports(tmp_path):
    """A project that has the plugin installed but does not use it must not import torch or scipy."""
    (tmp_path / "test_plain.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    code = (
        "import sys, pytest\n"
        f"rc = pytest.main(['-q', '-p', 'no:cacheprovider', {str(tmp_path)!r}])\n"
        "print(sorted(m for m in ('torch', 'scipy', 'transformers', 'datasets', 'sklearn') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
