"""pytest-forgetting as a pytest citizen: option spelling, interruptions, ids, JUnit, Hypothesis, plugins.

Each test drives a whole run through pytester on the tiny project of ``conftest.Project``.
"""

from __future__ import annotations

import json
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
    from conftest import linear_weights, save_weights

    data = tmp_path_factory.mktemp("data-disk")
    base = save_weights(data / "base.safetensors", linear_weights())
    tuned = save_weights(data / "tuned.safetensors", linear_weights(**weights))
    return base, tuned


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
    for args in (["--base-ckpt", str(base), f"--tuned-ckpt={tuned}"],
                 [f"--base-ckpt={base}", f"--tuned-ckpt={tuned}", "--forgetting-json", str(js)]):
        result = p.pytester.runpytest(*args, *common)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        err = result.stderr.str()
        assert "written with a space" in err and "rootdir" in err
        assert (f"--base-ckpt={base}" in err) if "--base-ckpt" in args else (f"--forgetting-json={js}" in err)

    # a space-form value inside the project changes nothing pytest decides: no error
    inside = p.tuned("inside")
    result = p.pytester.runpytest(f"--base-ckpt={base}", "--tuned-ckpt", str(inside), *common)
    result.assert_outcomes(passed=1)
