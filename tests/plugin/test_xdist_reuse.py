"""pytest-xdist: evaluations are shared between workers and runs, checks of one task share a worker.

Issue 13 point 8 (each worker evaluated the tuned model again for every task it met) and issue 14
point 7 (``base_cached`` true on a cold run). The model of these projects logs every forward pass
(which model, how many examples, which worker) to ``$FORWARD_LOG``, so a test can tell an
evaluation that ran from one that was reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("xdist")

COUNTING_MODELS = '''
import os

from torch import nn

K = 4


class Counting(nn.Sequential):
    """The tiny linear model of the suite; every forward pass appends a line to $FORWARD_LOG."""

    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(K + 1, K))

    def forward(self, x):
        role = "tuned" if float(self[1].weight[1, K]) != 0.0 else "base"
        with open(os.environ["FORWARD_LOG"], "a") as fh:
            fh.write(f"{role} {x.shape[0]} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")
        return super().forward(x)


def build():
    return Counting()
'''

# two checks of one task that the user put in two xdist groups: two workers evaluate the same task
SPLIT_BY_USER = """
    import pytest

    @pytest.mark.xdist_group("one")
    @pytest.mark.retains(task="synth", max_drop=0.3)
    def test_first():
        pass

    @pytest.mark.xdist_group("two")
    @pytest.mark.retains(task="synth", max_drop=0.3)
    def test_second():
        pass
"""

# three checks of 'synth' and one of 'synth-small': by default the three share a worker
BY_TASK = """
    import os

    import pytest

    def _where(name):
        with open(os.environ["WHERE_LOG"], "a") as fh:
            fh.write(f"{name} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")

    @pytest.mark.retains(task="synth", max_drop=0.3)
    def test_a():
        _where("test_a")

    @pytest.mark.retains(task="synth-small", max_drop=0.5)
    def test_b_small():
        _where("test_b_small")

    @pytest.mark.retains(task="synth", metric="f1_macro", max_drop=0.3)
    def test_c():
        _where("test_c")

    def test_d_plain():
        _where("test_d_plain")

    @pytest.mark.retains(task="synth", max_drop=0.3, max_nfr=0.5)
    def test_e():
        _where("test_e")
"""

# two tests of 'synth', run for two candidates (--tuned-ckpt twice): each candidate's checks share a worker
TWO_CANDIDATES = """
    import os

    import pytest

    def _where(request):
        with open(os.environ["WHERE_LOG"], "a") as fh:
            fh.write(f"{request.node.name} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")

    @pytest.mark.retains(task="synth", max_drop=0.3)
    def test_a(request):
        _where(request)

    @pytest.mark.retains(task="synth", metric="f1_macro", max_drop=0.3)
    def test_b(request):
        _where(request)
"""

#: row fields that depend on timing, not on the run's results
_TIMING = ("base_eval_s", "tuned_eval_s")


@pytest.fixture
def counting(make_project, tmp_path, monkeypatch):
    p = make_project(n=400, trap=40)
    p.pytester.makepyfile(tinymodels=COUNTING_MODELS)
    log, where = tmp_path / "forward.log", tmp_path / "where.log"
    monkeypatch.setenv("FORWARD_LOG", str(log))
    monkeypatch.setenv("WHERE_LOG", str(where))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return p, p.tuned(trap_weight=10.0), log, where


def _args(p, tuned: Path, cache: str, js: str, *extra: str) -> list[str]:
    # one batch per evaluation: a forward line is an evaluation
    return [f"--base-ckpt={p.base}", f"--tuned-ckpt={tuned}", "--model-factory=tinymodels:build", "--forgetting-device=cpu",
            "--forgetting-batch-size=4096", f"--forgetting-json={p.path / js}", "-p", "no:cacheprovider",
            *([f"--forgetting-cache-dir={p.path / cache}"] if cache else ["--forgetting-no-cache"]), *extra]  # fmt: skip


def _forwards(log: Path) -> list[tuple[str, int, str]]:
    if not log.exists():
        return []
    return [(role, int(n), worker) for role, n, worker in (line.split() for line in log.read_text().splitlines())]


def _rows(p, js: str) -> dict[str, dict]:
    return {r["test"].rsplit("::", 1)[-1]: r for r in json.loads((p.path / js).read_text())["rows"]}


def _table(result) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "forgetting summary" in line)
    return [
        line
        for line in lines[start + 1 :]
        if line.startswith(("forgetting: ", "test")) and not line.startswith("forgetting: wrote")
    ]


def test_a_second_worker_reuses_the_tuned_evaluation(counting):
    p, tuned, log, _ = counting
    p.test_file(SPLIT_BY_USER)
    result = p.pytester.runpytest_subprocess(
        *_args(p, tuned, "cache", "r.json", "-n", "2", f"--forgetting-markdown={p.path / 'r.md'}")
    )
    result.assert_outcomes(passed=2)
    rows = _rows(p, "r.json")
    forwards = _forwards(log)
    # each model ran its forward pass once, on one worker, for both checks on two workers
    assert sorted(r for r, _, _ in forwards) == ["base", "tuned"], forwards
    assert len({w for _, _, w in forwards} | {"gw0", "gw1"}) == 2 and {w for _, _, w in forwards} <= {"gw0", "gw1"}
    # the other worker read both evaluations from the cache, and says so
    assert sorted(r["tuned_reuse"] for r in rows.values()) == ["cache", "computed"], rows
    assert sorted(r["base_reuse"] for r in rows.values()) == ["cache", "computed"], rows
    for r in rows.values():
        assert r["base_cached"] is (r["base_reuse"] != "computed")
        assert (r["tuned_eval_s"] > 0) is (r["tuned_reuse"] == "computed")
        assert (r["base_eval_s"] > 0) is (r["base_reuse"] == "computed")
    assert rows["test_first"]["verdict"] == rows["test_second"]["verdict"] == "pass"
    assert rows["test_first"]["tuned"] == rows["test_second"]["tuned"]
    entries = sorted(f.name for f in (p.path / "cache").glob("*.npz") if not f.name.startswith("prepared-"))
    assert len(entries) == 2 and sum(n.startswith("tuned-") for n in entries) == 1, entries
    md = (p.path / "r.md").read_text()
    assert (
        "Evaluations per check: base 1 computed, 1 read from the cache; tuned 1 computed, 1 read from the cache." in md
    )

    # a rerun reads both from the cache: no forward pass at all, the same verdicts
    log.unlink()
    again = p.pytester.runpytest(*_args(p, tuned, "cache", "r2.json", "-p", "no:xdist"))
    again.assert_outcomes(passed=2)
    rows2 = _rows(p, "r2.json")
    assert _forwards(log) == []
    assert [rows2[t]["tuned_reuse"] for t in ("test_first", "test_second")] == ["cache", "memory"]
    assert [rows2[t]["base_reuse"] for t in ("test_first", "test_second")] == ["cache", "memory"]
    assert {t: r["tuned"] for t, r in rows2.items()} == {t: r["tuned"] for t, r in rows.items()}


def test_checks_of_one_task_share_a_worker_and_the_table_is_that_of_n0(counting):
    p, tuned, log, where = counting
    p.test_file(BY_TASK)
    plain = p.pytester.runpytest(*_args(p, tuned, "", "plain.json", "-p", "no:xdist"))  # cold, without the cache
    plain.assert_outcomes(passed=5)
    plain_forwards = _forwards(log)
    log.unlink()
    where.unlink()
    result = p.pytester.runpytest_subprocess(
        *_args(p, tuned, "cache", "r.json", "-n", "2", "-v", f"--forgetting-markdown={p.path / 'r.md'}")
    )
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["scheduling tests via TaskGroupScheduling"])

    ran_on = dict(line.split() for line in where.read_text().splitlines())
    assert ran_on["test_a"] == ran_on["test_c"] == ran_on["test_e"], ran_on  # the task's checks: one worker
    assert set(ran_on.values()) == {"gw0", "gw1"}, ran_on  # and the rest on the other one
    forwards = _forwards(log)
    assert sorted((r, n) for r, n, _ in forwards) == sorted((r, n) for r, n, _ in plain_forwards), forwards
    assert sorted((r, n) for r, n, _ in forwards) == [("base", 40), ("base", 400), ("tuned", 40), ("tuned", 400)]
    assert {w for _, n, w in forwards if n == 400} == {ran_on["test_a"]}

    # the table is the one of -n 0; so is the JSON, reuse kinds included (one worker per task)
    assert _table(result) == _table(plain)
    rows, want = _rows(p, "r.json"), _rows(p, "plain.json")
    for r in (*rows.values(), *want.values()):
        for k in _TIMING:
            r.pop(k)
    assert rows == want
    assert [want[t]["base_reuse"] for t in ("test_a", "test_b_small", "test_c", "test_e")] == [
        "computed",
        "computed",
        "memory",
        "memory",
    ]
    assert [want[t]["tuned_reuse"] for t in ("test_a", "test_b_small", "test_c", "test_e")] == [
        "computed",
        "computed",
        "memory",
        "memory",
    ]
    # issue 14.7: on a cold run without the cache, base_cached is true only where the evaluation was reused
    assert [want[t]["base_cached"] for t in ("test_a", "test_b_small", "test_c", "test_e")] == [
        False,
        False,
        True,
        True,
    ]
    md = (p.path / "r.md").read_text()
    assert "Evaluations per check: base 2 computed, 2 reused in memory; tuned 2 computed, 2 reused in memory." in md


def test_an_explicit_dist_keeps_xdists_scheduler(counting):
    p, tuned, log, where = counting
    p.test_file(BY_TASK)
    result = p.pytester.runpytest_subprocess(*_args(p, tuned, "cache", "r.json", "-n", "2", "--dist=load", "-v"))
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["scheduling tests via LoadScheduling"])
    # what load scheduling did is xdist's business; the rows are the same whoever evaluated what
    rows = _rows(p, "r.json")
    assert {r["verdict"] for r in rows.values()} == {"pass"}
    assert all(r["tuned_reuse"] in ("computed", "memory", "cache") for r in rows.values())
    assert (
        sum(r["tuned_reuse"] == "computed" for r in rows.values() if r["task"] == "synth") == 1
    )  # the cache and its lock


def test_a_forged_or_foreign_tuned_entry_is_recomputed(counting):
    """Tuned entries keep the base entries' guarantees: the recorded whole key is checked on read."""
    from _helpers.project import linear_weights, save_weights

    p, tuned, log, _ = counting
    p.test_file(SPLIT_BY_USER)
    p.pytester.runpytest(*_args(p, tuned, "cache", "r.json", "-p", "no:xdist")).assert_outcomes(passed=2)
    (entry,) = (p.path / "cache").glob("tuned-*.npz")
    key = json.loads(str(np.load(entry)["__key__"][()]))
    assert key["kind"] == "eval-tuned" and key["tuned"] != key["paired_base"] and key["tuned"].startswith("sha256:")

    # the outputs of another tuned model under this entry's name (its own key recorded): a miss
    other = save_weights(p.path / "other.safetensors", linear_weights(trap_weight=10.0, swap=True))
    p.pytester.runpytest(*_args(p, other, "cache", "o.json", "-p", "no:xdist"))
    (foreign,) = [f for f in (p.path / "cache").glob("tuned-*.npz") if f != entry]
    foreign.replace(entry)
    log.unlink()
    p.pytester.runpytest(*_args(p, tuned, "cache", "r2.json", "-p", "no:xdist")).assert_outcomes(passed=2)
    assert [r for r, _, _ in _forwards(log)] == ["tuned"]  # recomputed (the base came from its entry)
    assert _rows(p, "r2.json")["test_first"]["tuned_reuse"] == "computed"

    # the right key recorded over forged outputs is what the cache folder's checks exist for; an entry
    # whose recorded key was edited is a miss too
    data = {k: v for k, v in np.load(entry).items()}
    data["__key__"] = np.array(json.dumps(dict(key, task_version="forged"), sort_keys=True))
    with open(entry, "wb") as fh:
        np.savez(fh, **data)
    log.unlink()
    p.pytester.runpytest(*_args(p, tuned, "cache", "r3.json", "-p", "no:xdist")).assert_outcomes(passed=2)
    assert [r for r, _, _ in _forwards(log)] == ["tuned"]
    assert os.path.exists(entry)


def test_the_candidates_of_one_task_run_on_two_workers(counting):
    """Several --tuned-ckpt: the group is (task, candidate), so two candidates of one task do not
    leave a worker idle; the base's evaluation is still computed once (the cache and its lock)."""
    p, tuned_a, log, where = counting
    tuned_b = p.tuned("tuned_b", trap_weight=3.0)  # another candidate (the flag weight tells base from tuned)
    p.test_file(TWO_CANDIDATES)
    two = [f"--tuned-ckpt={tuned_b}"]
    plain = p.pytester.runpytest(*_args(p, tuned_a, "", "plain.json", *two, "-p", "no:xdist"))
    plain.assert_outcomes(passed=4)
    log.unlink()
    where.unlink()
    result = p.pytester.runpytest_subprocess(*_args(p, tuned_a, "cache", "r.json", *two, "-n", "2", "-v"))
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["scheduling tests via TaskGroupScheduling"])

    ran_on = dict(line.split() for line in where.read_text().splitlines())
    assert sorted(ran_on) == ["test_a[tuned]", "test_a[tuned_b]", "test_b[tuned]", "test_b[tuned_b]"], ran_on
    assert ran_on["test_a[tuned]"] == ran_on["test_b[tuned]"], ran_on  # one candidate's checks of a task: one worker
    assert ran_on["test_a[tuned_b]"] == ran_on["test_b[tuned_b]"], ran_on
    assert ran_on["test_a[tuned]"] != ran_on["test_a[tuned_b]"], ran_on  # the two candidates: two workers
    forwards = _forwards(log)
    assert sorted((r, n) for r, n, _ in forwards) == [("base", 400), ("tuned", 400), ("tuned", 400)], forwards
    assert len({w for r, _, w in forwards if r == "tuned"}) == 2, forwards  # each candidate on its own worker

    # the table is the one of -n 0; the JSON too, but for where the base came from on the second worker
    # and the drift table of its pair (only a process with both models in memory has one, as in a
    # plain run whose base outputs are cached)
    assert _table(result) == _table(plain)
    rows, want = _rows(p, "r.json"), _rows(p, "plain.json")
    assert set(rows) == set(want)
    assert sorted(r["base_reuse"] for r in rows.values()) == ["cache", "computed", "memory", "memory"], rows
    for r in (*rows.values(), *want.values()):
        for k in (*_TIMING, "base_reuse", "base_cached", "weight_drift"):
            r.pop(k)
    differ = {
        t: {k: (r.get(k), want[t].get(k)) for k in {*r, *want[t]} if r.get(k) != want[t].get(k)}
        for t, r in rows.items()
    }
    assert not any(differ.values()), differ
