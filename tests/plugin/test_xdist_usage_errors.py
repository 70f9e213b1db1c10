"""Usage errors found while collecting are one line and exit 4 under pytest-xdist too (not INTERNALERROR)."""

from __future__ import annotations

import pytest

pytest.importorskip("xdist")

TESTS = """
import pytest

@pytest.mark.retains(task="digits", max_drop=0.05)
def test_keeps():
    pass

def test_unrelated():
    pass
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_missing_checkpoint_is_one_usage_error(pytester, workers):
    pytester.makepyfile(test_gate=TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        workers,
        "--base-ckpt=nothing/base.safetensors",
        "--tuned-ckpt=nothing/tuned.safetensors",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + err
    lines = [line for line in err.splitlines() if "pytest-forgetting:" in line]
    assert len(lines) == 1 and "base checkpoint not found" in lines[0], err


def test_marker_typo_is_one_usage_error_on_workers(pytester):
    pytester.makepyfile(test_gate=TESTS.replace("mark.retains", "mark.retain"))
    (pytester.path / "w.safetensors").write_bytes(b"")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--base-ckpt=w.safetensors", "--tuned-ckpt=w.safetensors"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*unknown marker @pytest.mark.retain (did you mean @pytest.mark.retains?)*"])
