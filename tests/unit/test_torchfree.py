"""The parts of the plugin that need no torch: import, options, declarations, statistics.

``scripts/test.sh`` runs this file on the lowest supported Python (3.10) in a venv without torch,
with ``--noconftest`` (the file needs none of the suite's conftests). Nothing
here may import torch at module level; what needs it is skipped where torch is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_forgetting.declarations import load_pyproject, parse_spec
from pytest_forgetting.errors import ConfigError
from pytest_forgetting.options import resolve

pytest_plugins = ["pytester"]  # also under --noconftest


def test_plugin_import_needs_no_torch():
    code = (
        "import sys, pytest_forgetting, pytest_forgetting.plugin, pytest_forgetting.declarations, pytest_forgetting.stats; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _resolve(cli: dict | None = None, ini: dict | None = None, environ: dict | None = None, **kw):
    cli, ini = cli or {}, ini or {}
    return resolve(lambda name: cli.get(name), lambda name: ini.get(name), environ=environ or {}, **kw)


def test_option_precedence_and_errors(tmp_path):
    s = _resolve(
        {"forgetting_alpha": "0.01"}, {"forgetting_alpha": "0.2", "forgetting_device": "cpu"}, rootdir=tmp_path
    )
    assert s.alpha == 0.01 and s.sources["alpha"] == "cli"
    assert s.device == "cpu" and s.sources["device"] == "ini"
    s = _resolve(
        ini={"forgetting_base_ckpt": "ckpt/base.safetensors"},
        environ={"FORGETTING_BASE_CKPT": "/data/b.safetensors"},
        rootdir=tmp_path,
        ini_dir=tmp_path,
    )
    assert s.base_ckpt == "/data/b.safetensors" and s.sources["base_ckpt"] == "env"
    with pytest.raises(ConfigError, match="--forgetting-alpha='2': alpha must be a number in"):
        _resolve({"forgetting_alpha": "2"})
    with pytest.raises(ConfigError, match="ini key forgetting_batch_size='0': must be >= 1"):
        _resolve(ini={"forgetting_batch_size": "0"})


def test_declarations_from_the_command_line_and_pyproject(tmp_path):
    d = parse_spec("retains", "news:0.03,metric=f1_macro,relative=true")
    assert d.kwargs == {"task": "news", "max_drop": 0.03, "metric": "f1_macro", "relative": True}
    with pytest.raises(ConfigError, match="expected TASK:MAX_DROP"):
        parse_spec("retains", "news")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        textwrap.dedent("""
        [tool.pytest_forgetting]
        retains = [{ task = "mnist", max_drop = 0.02 }]
        improves = { task = "fashion-mnist", min_gain = 0.1 }
    """)
    )
    decls = load_pyproject(pyproject)  # tomllib on 3.11+, tomli on 3.10
    assert [(x.kind, x.kwargs) for x in decls] == [
        ("retains", {"task": "mnist", "max_drop": 0.02}),
        ("improves", {"task": "fashion-mnist", "min_gain": 0.1}),
    ]
    pyproject.write_text("[tool.pytest_forgetting\n")
    with pytest.raises(ConfigError, match="cannot read TOML"):
        load_pyproject(pyproject)


def test_pyproject_reads_with_tomli_where_tomllib_is_missing(tmp_path, monkeypatch):
    pytest.importorskip("tomli")  # installed on Python 3.10 (dependency marker), optional above
    monkeypatch.setitem(sys.modules, "tomllib", None)  # what Python 3.10 looks like
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.pytest_forgetting]\nretains = [{ task = "mnist", max_drop = 0.02 }]\n')
    assert load_pyproject(pyproject)[0].kwargs == {"task": "mnist", "max_drop": 0.02}


def test_statistics_core():
    import numpy as np

    from pytest_forgetting.stats import compare_scores

    same = np.ones(400)
    assert compare_scores(same, same, max_drop=0.02).verdict == "pass"
    worse = same.copy()
    worse[:60] = 0
    result = compare_scores(same, worse, max_drop=0.02)
    assert result.verdict == "fail" and result.n == 400 and abs(result.drop - 0.15) < 1e-12


def test_pytest_sees_the_plugin_and_its_options(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["forgetting:*", "*--base-ckpt=REF*"])
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_space_form_guard_needs_no_torch(pytester, tmp_path_factory):
    data = tmp_path_factory.mktemp("disk")
    (data / "base.safetensors").write_bytes(b"")
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\n")
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--base-ckpt", str(data / "base.safetensors"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--base-ckpt={data / 'base.safetensors'}" in result.stderr.str()


def test_marker_keyword_errors_need_no_model(pytester):
    pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.retains(task="mnist", max_dorp=0.02)
        def test_m():
            pass
    """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown keyword 'max_dorp' for retains() (did you mean 'max_drop'?)" in result.stderr.str()


@pytest.mark.skipif(not os.environ.get("FORGETTING_WHEEL_SMOKE"), reason="only in scripts/test.sh's wheel smoke test")
def test_plugin_comes_from_the_installed_wheel(pytester):
    """scripts/test.sh installs the built wheel (not the source tree) in a fresh venv and sets
    FORGETTING_WHEEL_SMOKE to the clone: the package must be imported from site-packages and the
    plugin found through the wheel's pytest11 entry point."""
    import importlib.metadata
    import json

    import pytest_forgetting

    clone = Path(os.environ["FORGETTING_WHEEL_SMOKE"]).resolve()
    package = Path(pytest_forgetting.__file__).resolve()
    assert clone / "pytest_forgetting" not in package.parents, (
        f"pytest_forgetting imported from the source tree ({package})"
    )
    assert "site-packages" in package.parts
    dist = importlib.metadata.distribution("pytest-forgetting")
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    assert not direct.get("dir_info", {}).get("editable"), "an editable install, not the wheel"
    assert [ep.value for ep in dist.entry_points if ep.group == "pytest11"] == ["pytest_forgetting.plugin"]
    assert (package.parent / "tasks" / "builtin.py").is_file()
    result = pytester.runpytest("-p", "no:cacheprovider", "--help")
    assert result.ret == 0
    assert "--base-ckpt" in result.stdout.str()
