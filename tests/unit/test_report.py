"""Unit tests of the reports: table, failure message, JSON, Markdown, plot, JUnit properties.

The report functions take plain row dicts, so no model, task or pytest run is needed here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_forgetting import report
from pytest_forgetting.errors import ConfigError


def make_row(**overrides):
    row = {
        "test": "tests/test_model.py::test_keeps_digits",
        "task": "mnist",
        "split": "test",
        "metric": "accuracy",
        "kind": "retains",
        "candidate": "",
        "n": 1000,
        "base": 0.978,
        "tuned": 0.937,
        "drop": 0.041,
        "ci_low": 0.029,
        "ci_high": 0.053,
        "margin": 0.02,
        "relative": False,
        "nfr": 0.045,
        "verdict": "fail",
        "reason": "the whole interval of the drop lies above the margin",
        "n_needed": None,
        "worst_classes": [],
        "flipped_ids": [],
        "base_cached": True,
        "base_eval_s": 1.25,
        "tuned_eval_s": 1.5,
        "higher_is_better": True,
        "outcome": "failed",
    }
    row.update(overrides)
    return row


def passing_row(**overrides):
    values = dict(
        test="tests/test_model.py::test_keeps_sklearn_digits",
        task="digits",
        n=360,
        base=0.964,
        tuned=0.958,
        drop=0.006,
        ci_low=-0.006,
        ci_high=0.017,
        margin=0.03,
        nfr=0.011,
        verdict="pass",
        reason="",
        outcome="passed",
    )
    values.update(overrides)
    return make_row(**values)


def inconclusive_row(**overrides):
    values = dict(
        test="tests/test_model.py::test_keeps_news",
        task="news",
        metric="f1_macro",
        n=400,
        base=0.812,
        tuned=0.797,
        drop=0.015,
        ci_low=-0.004,
        ci_high=0.034,
        margin=0.03,
        nfr=None,
        verdict="inconclusive",
        reason="the interval of the drop contains the margin",
        n_needed=1650,
    )
    values.update(overrides)
    return make_row(**values)


def improves_row(**overrides):
    values = dict(
        test="tests/test_model.py::test_learns_fashion",
        task="fashion-mnist",
        kind="improves",
        n=2000,
        base=0.702,
        tuned=0.783,
        drop=-0.081,
        ci_low=-0.110,
        ci_high=-0.052,
        margin=-0.05,
        nfr=0.03,
        verdict="pass",
        reason="",
        outcome="passed",
    )
    values.update(overrides)
    return make_row(**values)


def perplexity_row(**overrides):
    values = dict(
        test="tests/test_lm.py::test_wiki_perplexity",
        task="wiki",
        metric="perplexity",
        n=500,
        base=12.34,
        tuned=13.15,
        drop=0.81,
        ci_low=0.40,
        ci_high=1.22,
        margin=0.5,
        nfr=None,
        bounded=False,
        higher_is_better=False,
        verdict="inconclusive",
        reason="the interval of the drop contains the margin",
        n_needed=900,
        outcome="warned",
    )
    values.update(overrides)
    return make_row(**values)


@pytest.fixture
def rows():
    return [make_row(), passing_row(), inconclusive_row(), improves_row(), perplexity_row()]


@pytest.fixture
def header():
    return {
        "base_ckpt": {"ref": "ckpts/base", "fingerprint": "sha256:0123456789abcdef0123"},
        "tuned_ckpts": [{"ref": "ckpts/tuned", "fingerprint": "sha256:fedcba9876543210ffff", "name": ""}],
        "device": "cpu",
        "dtype": "float32",
        "alpha": 0.05,
        "torch_version": "2.5.1",
        "plugin_version": "0.1.0",
        "settings_sources": {"alpha": "default", "base_ckpt": "cli"},
    }


def line_for(lines, needle):
    [line] = [line for line in lines if needle in line]
    return line


# --------------------------------------------------------------------------- table


def test_table_title_counts_verdicts(rows):
    lines = report.format_table(rows, alpha=0.05)
    assert lines[0] == ("forgetting: 5 checks, 2 passed, 1 failed, 2 inconclusive (alpha=0.05, one-sided)")


def test_table_has_the_contract_columns_aligned(rows):
    lines = report.format_table(rows, alpha=0.05)
    head = lines[1]
    assert head.split() == ["test", "task", "metric", "n", "base", "tuned", "drop", "[CI]", "margin", "NFR", "verdict"]
    assert set(lines[2]) == {"-", " "}
    body = lines[3 : 3 + len(rows)]
    # Every column starts where its heading starts (left-aligned verdict) or ends where
    # its heading ends (right-aligned numbers).
    verdict_at = head.index("verdict")
    margin_end = head.index("margin") + len("margin")
    for line in body:
        assert line[verdict_at - 1] == " " and line[verdict_at] != " "
        assert line[margin_end - 1] != " " and line[margin_end] == " "
    # The widest mix (perplexity, an improves row, a starred INCONCLUSIVE) stays near 120
    # columns; a table of plain retains checks is narrower.
    assert all(len(line) <= 123 for line in lines)
    plain = report.format_table([make_row(), passing_row()], alpha=0.05)
    assert all(len(line) <= 110 for line in plain)


def test_table_is_the_same_whatever_the_input_order(rows):
    expected = report.format_table(rows, alpha=0.05)
    rng = random.Random(0)
    for _ in range(10):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        assert report.format_table(shuffled, alpha=0.05) == expected


def test_table_sorts_by_candidate_then_test(rows):
    lines = report.format_table(rows, alpha=0.05, width=200)
    order = [line.split()[0] for line in lines[3 : 3 + len(rows)]]
    # test_lm.py sorts before test_model.py: the full node id decides, not the short name.
    assert order == [
        "test_wiki_perplexity",
        "test_keeps_digits",
        "test_keeps_news",
        "test_keeps_sklearn_digits",
        "test_learns_fashion",
    ]


def test_bounded_metrics_in_percent_and_points(rows):
    lines = report.format_table(rows, alpha=0.05, width=200)
    line = line_for(lines, "test_keeps_digits ")
    assert "97.8%" in line and "93.7%" in line
    assert "+4.1 pp [+2.9, +5.3]" in line
    assert "2.0 pp" in line and "4.5%" in line
    assert line.rstrip().endswith("FAIL")
    assert "+1.5 pp [-0.4, +3.4]" in line_for(lines, "test_keeps_news ")


def test_unbounded_metrics_as_plain_numbers(rows):
    line = line_for(report.format_table(rows, alpha=0.05, width=200), "test_wiki_perplexity")
    assert "12.34" in line and "13.15" in line
    assert "+0.81 [+0.40, +1.22]" in line
    assert "pp" not in line and "%" not in line
    # outcome "warned": inconclusive that did not fail its test, flagged with a footnote.
    assert line.rstrip().endswith("INCONCLUSIVE*")


def test_relative_drops_in_percent_rel():
    row = make_row(relative=True, drop=0.0419, ci_low=0.0297, ci_high=0.054, margin=0.05)
    line = line_for(report.format_table([row], alpha=0.05), "test_keeps_digits")
    assert "+4.2% rel [+3.0, +5.4]" in line
    assert "5.0% rel" in line


def test_improves_rows_show_gain_and_required_gain(rows):
    line = line_for(report.format_table(rows, alpha=0.05, width=200), "test_learns_fashion")
    assert "gain +8.1 pp [+5.2, +11.0]" in line
    assert "≥ +5.0 pp" in line
    assert line.rstrip().endswith("PASS")


def test_split_other_than_test_is_shown():
    lines = report.format_table([make_row(split="train")], alpha=0.05)
    assert "mnist/train" in lines[3]


def test_verdicts_upper_case_and_error_rows():
    row = make_row(
        verdict="error",
        base=None,
        tuned=None,
        drop=None,
        ci_low=None,
        ci_high=None,
        nfr=None,
        reason="tuned model produced NaN",
    )
    lines = report.format_table([row], alpha=0.05)
    assert lines[0].endswith("1 check, 1 error (alpha=0.05, one-sided)")
    assert lines[3].rstrip().endswith("ERROR")
    assert "—" in lines[3]


def test_nan_values_are_named_not_crashed():
    line = report.format_table([make_row(tuned=float("nan"))], alpha=0.05)[3]
    assert "NaN" in line


def test_no_negative_zero():
    line = report.format_table([passing_row(drop=-0.0001, ci_low=-0.00001)], alpha=0.05)[3]
    assert "-0.0" not in line and "+0.0 pp [+0.0, +1.7]" in line


def test_long_test_ids_truncated_from_the_left():
    long_id = "tests/test_model.py::test_" + "very_" * 20 + "long_name[param-1]"
    lines = report.format_table([make_row(test=long_id)], alpha=0.05, width=110)
    row_line = lines[3]
    assert row_line.startswith("…")
    assert row_line.split()[0].endswith("long_name[param-1]")
    assert max(len(line) for line in lines[1:4]) == 110
    # Never narrower than 16 characters, however small the terminal.
    narrow = report.format_table([make_row(test=long_id)], alpha=0.05, width=40)
    assert len(narrow[3].split()[0]) == 16


def test_short_test_names_keep_the_file_when_ambiguous():
    a = make_row(test="tests/a/test_x.py::test_same")
    b = passing_row(test="tests/b/test_y.py::test_same")
    lines = report.format_table([a, b], alpha=0.05)
    assert any(line.startswith("test_x.py::test_same") for line in lines)
    assert any(line.startswith("test_y.py::test_same") for line in lines)


def test_empty_rows_give_no_table():
    assert report.format_table([], alpha=0.05) == []


def several_candidates():
    out = []
    for name, keeps, learns, drop in (
        ("ft-a", "pass", "pass", -0.081),
        ("ft-b", "pass", "fail", -0.030),
        ("ft-c", "fail", "pass", -0.101),
    ):
        out.append(make_row(candidate=name, verdict=keeps))
        out.append(improves_row(candidate=name, verdict=learns, drop=drop, ci_low=drop - 0.03, ci_high=drop + 0.03))
    return out


def test_several_candidates_grouped_with_a_ranking():
    rows = several_candidates()
    lines = report.format_table(rows[::-1], alpha=0.05)
    assert lines == report.format_table(rows, alpha=0.05)
    assert lines[0].startswith("forgetting: 6 checks on 3 candidates, 4 passed, 2 failed")
    headings = [i for i, line in enumerate(lines) if line.startswith("candidate ")]
    assert [lines[i] for i in headings] == ["candidate ft-a:", "candidate ft-b:", "candidate ft-c:"]
    assert headings[1] - headings[0] == 3  # two checks under each heading
    ranking = lines[lines.index("ranking:") + 1 :]
    assert ranking == [
        "  fashion-mnist: every check passed by ft-a, ft-c; not by ft-b (1/1 not passed); best gain ft-c +10.1 pp",
        "  mnist: every check passed by ft-a, ft-b; not by ft-c (1/1 not passed)",
    ]


def test_ranking_says_when_no_candidate_passes():
    rows = [make_row(candidate="a"), make_row(candidate="b", verdict="inconclusive")]
    lines = report.format_table(rows, alpha=0.05)
    assert lines[-2] == ("  mnist: no candidate passes every check; not by a (1/1 not passed), b (1/1 not passed)")
    # and the ranking still names the closest (issue 14, point 7): fewest not passed, then the smallest share
    assert lines[-1] == "  overall: no candidate passes every check; closest: a (1/1 not passed), b (1/1 not passed)"
    rows.append(make_row(candidate="a", task="fashion-mnist", verdict="pass"))
    assert (
        report.format_table(rows, alpha=0.05)[-1]
        == "  overall: no candidate passes every check; closest: a (1/2 not passed)"
    )


# --------------------------------------------------------------------------- failure message


def test_failure_message_first_line_is_a_summary():
    first = report.failure_message(make_row()).splitlines()[0]
    assert first == ("mnist/test accuracy dropped 4.1 pp [2.9, 5.3] > margin 2.0 pp (base 97.8%, tuned 93.7%, n=1000)")


def test_failure_message_has_every_detail():
    row = make_row(
        worst_classes=[
            {"name": "4", "drop": 0.01, "ci_low": -0.02, "ci_high": 0.05, "verdict": "pass"},
            {"name": "7", "drop": 0.082, "ci_low": 0.031, "ci_high": 0.13, "verdict": "fail"},
            {"name": "9", "drop": 0.03, "ci_low": -0.02, "ci_high": 0.08, "verdict": "pass"},
            {"name": "2", "drop": 0.06, "ci_low": 0.01, "ci_high": 0.11, "verdict": "inconclusive"},
        ],
        flipped_ids=["img-17", "img-203", "img-981"],
    )
    message = report.failure_message(row)
    assert "FAIL - the whole interval of the drop lies above the margin" in message
    assert "+4.1 pp [+2.9, +5.3]" in message and "margin 2.0 pp" in message
    assert "base 97.8%, tuned 93.7%" in message
    assert "NFR:      4.5%" in message
    classes = line_for(message.splitlines(), "classes:")
    assert classes.index("7 +8.2 pp") < classes.index("2 +6.0 pp") < classes.index("9 +3.0 pp")
    assert "4 +1.0 pp" not in classes  # only the three worst
    assert "img-17, img-203, img-981" in message


def test_failure_message_of_an_inconclusive_check_says_how_many_examples():
    message = report.failure_message(inconclusive_row())
    first = message.splitlines()[0]
    assert first == (
        "news/test f1_macro inconclusive: drop 1.5 pp [-0.4, 3.4] straddles "
        "margin 3.0 pp (base 81.2%, tuned 79.7%, n=400)"
    )
    assert "about 1,650 examples would settle it" in message


def test_failure_message_of_lower_is_better_metric():
    row = perplexity_row(verdict="fail", ci_low=0.6)
    first = report.failure_message(row).splitlines()[0]
    assert first == ("wiki/test perplexity rose 0.81 [0.60, 1.22] > margin 0.5 (base 12.34, tuned 13.15, n=500)")


def test_failure_message_of_improves_check():
    # gain +1 pp with interval [-1, +3] pp: its upper end is below the required +5 pp.
    row = improves_row(verdict="fail", tuned=0.712, drop=-0.01, ci_low=-0.03, ci_high=0.01)
    first = report.failure_message(row).splitlines()[0]
    assert first == (
        "fashion-mnist/test accuracy gain +1.0 pp [-1.0, +3.0] < required +5.0 pp (base 70.2%, tuned 71.2%, n=2000)"
    )


def test_failure_message_of_a_broken_budget_gives_the_reason():
    row = make_row(drop=0.01, ci_low=-0.01, ci_high=0.03, reason="class 7 dropped 12 pp > 10 pp")
    first = report.failure_message(row).splitlines()[0]
    assert first.startswith("mnist/test accuracy failed: class 7 dropped 12 pp > 10 pp")


def test_failure_message_of_an_error():
    row = make_row(verdict="error", drop=None, reason="tuned model produced NaN")
    assert report.failure_message(row).splitlines()[0] == (
        "mnist/test accuracy could not be compared: tuned model produced NaN"
    )


# --------------------------------------------------------------------------- JSON


def test_json_has_header_rows_and_summary(header, rows):
    data = report.build_json(header, rows)
    assert set(header) <= set(data)
    assert data["base_ckpt"] == header["base_ckpt"]
    assert [r["test"] for r in data["rows"]] == sorted(r["test"] for r in rows)
    assert data["summary"]["checks"] == 5
    assert data["summary"]["pass"] == 2
    assert data["summary"]["fail"] == 1
    assert data["summary"]["inconclusive"] == 2
    assert data["summary"]["error"] == 0
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
        assert key in data["rows"][0]


def test_json_turns_nan_and_inf_into_null(tmp_path, header):
    row = make_row(
        tuned=float("nan"),
        drop=float("inf"),
        ci_high=float("-inf"),
        worst_classes=[{"name": "7", "drop": float("nan"), "ci_low": 0.0, "ci_high": 1.0, "verdict": "fail"}],
    )
    path = tmp_path / "report.json"
    report.write_json(path, header, [row])
    data = json.loads(path.read_text(encoding="utf-8"))
    [out] = data["rows"]
    assert out["tuned"] is None and out["drop"] is None and out["ci_high"] is None
    assert out["worst_classes"][0]["drop"] is None
    assert "NaN" not in path.read_text(encoding="utf-8")
    assert row["tuned"] != row["tuned"]  # the input row is left alone


def test_json_is_byte_identical_whatever_the_order(tmp_path, header, rows):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    report.write_json(first, header, rows)
    shuffled = rows[::-1]
    reordered_header = dict(reversed(list(header.items())))
    report.write_json(second, reordered_header, shuffled)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().endswith(b"\n")


def test_json_write_is_atomic_and_leaves_no_temp_files(tmp_path, header, rows, monkeypatch):
    path = tmp_path / "out" / "report.json"
    report.write_json(path, header, rows)
    report.write_json(path, header, rows[:1])  # overwrite
    assert os.listdir(path.parent) == ["report.json"]
    assert len(json.loads(path.read_text(encoding="utf-8"))["rows"]) == 1

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        report.write_json(path, header, rows)
    assert os.listdir(path.parent) == ["report.json"]  # old file intact, temp file removed
    assert len(json.loads(path.read_text(encoding="utf-8"))["rows"]) == 1


def test_json_accepts_numpy_like_scalars(header):
    class FakeInt(int):
        pass

    data = report.build_json(header, [make_row(n=FakeInt(7), flipped_ids=("a", "b"))])
    assert data["rows"][0]["n"] == 7 and type(data["rows"][0]["n"]) is int
    assert data["rows"][0]["flipped_ids"] == ["a", "b"]


# --------------------------------------------------------------------------- Markdown


def table_lines(markdown):
    return [line for line in markdown.splitlines() if line.startswith("|")]


def unescaped_pipes(line):
    return line.count("|") - line.count("\\|")


def test_markdown_shape(header, rows):
    text = report.format_markdown(header, rows)
    assert text.startswith("### pytest-forgetting: 5 checks, 2 passed, 1 failed, 2 inconclusive")
    assert "`ckpts/base` (`0123456789ab`)" in text
    assert "`ckpts/tuned` (`fedcba987654`)" in text
    assert "alpha 0.05 (one-sided)" in text
    lines = table_lines(text)
    assert len(lines) == 2 + len(rows)
    assert lines[0] == ("| Test | Task | Metric | n | Base | Tuned | Drop [CI] | Margin | NFR | Verdict |")
    assert set(lines[1]) <= set("|-:")
    assert len({unescaped_pipes(line) for line in lines}) == 1
    assert "❌ FAIL" in text and "✅ PASS" in text and "⚠️ INCONCLUSIVE" in text


def test_markdown_details_only_for_rows_that_did_not_pass(header, rows):
    text = report.format_markdown(header, rows)
    details = text.split("#### Details", 1)[1]
    assert "mnist/test accuracy dropped 4.1 pp" in details
    assert "news/test f1_macro inconclusive" in details
    assert "test_keeps_sklearn_digits" not in details
    assert details.count("```text") == 3


def test_markdown_escapes_pipes(header):
    row = make_row(test="tests/test_m.py::test_x[a|b]", metric="f1|macro")
    lines = table_lines(report.format_markdown(header, [row]))
    assert len({unescaped_pipes(line) for line in lines}) == 1


def test_markdown_several_candidates(header):
    text = report.format_markdown(header, several_candidates())
    assert table_lines(text)[0].startswith("| Candidate | Test |")
    assert "**Ranking**" in text
    assert "- mnist: every check passed by ft-a, ft-b" in text


def test_markdown_written_atomically(tmp_path, header, rows):
    path = tmp_path / "summary.md"
    report.write_markdown(path, header, rows)
    assert path.read_text(encoding="utf-8") == report.format_markdown(header, rows[::-1])
    assert os.listdir(tmp_path) == ["summary.md"]


# --------------------------------------------------------------------------- plot


def test_plot_writes_a_png(tmp_path, rows):
    pytest.importorskip("matplotlib")
    error = make_row(
        test="tests/test_model.py::test_broken",
        verdict="error",
        base=None,
        tuned=None,
        drop=None,
        ci_low=None,
        ci_high=None,
        reason="NaN logits",
    )
    path = tmp_path / "plot.png"
    report.write_plot(path, rows + [error] + several_candidates(), alpha=0.05)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert os.listdir(tmp_path) == ["plot.png"]


def test_plot_leaves_pyplot_backend_alone(tmp_path, rows):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.rcParams["backend"]
    report.write_plot(tmp_path / "plot.png", rows, alpha=0.05)
    assert matplotlib.rcParams["backend"] == before


def test_plot_without_matplotlib_is_a_config_error(tmp_path, rows, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'pytest-forgetting\[plot\]'"):
        report.write_plot(tmp_path / "plot.png", rows, alpha=0.05)
    assert not (tmp_path / "plot.png").exists()


# --------------------------------------------------------------------------- JUnit, imports


def test_junit_properties_are_prefixed_strings():
    props = report.junit_properties(make_row(flipped_ids=["a", "b"], nfr=None))
    names = [name for name, _ in props]
    assert all(name.startswith("forgetting_") for name in names)
    assert all(isinstance(value, str) for _, value in props)
    values = dict(props)
    assert names[0] == "forgetting_test"
    assert values["forgetting_verdict"] == "fail"
    assert values["forgetting_relative"] == "false"
    assert values["forgetting_nfr"] == ""
    assert values["forgetting_drop"] == "0.041"
    assert json.loads(values["forgetting_flipped_ids"]) == ["a", "b"]


def test_importing_report_is_cheap():
    code = (
        "import sys, pytest_forgetting.report; "
        "heavy = {'matplotlib', 'torch', 'transformers', 'datasets'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


def test_class_drops_of_an_unbounded_metric_read_as_accuracy_points():
    """Per-class drops are of per-class accuracy whatever the check's metric: a log-loss check's
    classes line says so, in points, not in nats."""
    classes = [{"name": "business", "drop": 0.0196, "ci_low": -0.0673, "ci_high": 0.0759}]
    row = make_row(
        metric="log_loss",
        bounded=False,
        higher_is_better=False,
        drop=0.78,
        ci_low=0.11,
        ci_high=1.87,
        margin=0.05,
        worst_classes=classes,
    )
    line = [x for x in report.failure_message(row).splitlines() if x.lstrip().startswith("classes:")][0]
    assert line == "  classes:  worst accuracy business +2.0 pp [-6.7, +7.6]", line
    same = make_row(worst_classes=classes)  # an accuracy check: the line as it always was
    assert "  classes:  worst business +2.0 pp [-6.7, +7.6]" in report.failure_message(same).splitlines()
