"""The end of a run: the terminal table, the reports, the JUnit testsuite properties, the header.

Only the controller prints the table and writes the reports (not an xdist worker, nor a
torch.distributed rank other than 0), and it puts the rows on the JUnit testsuite, where
``junit_family=xunit2`` allows properties, once per check whatever the reruns.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from .collection import _mentions_plugin
from .errors import ConfigError
from .results import CheckRow, Verdict
from .state import STATE_KEY, ForgettingPlugin, is_worker


def header(st: ForgettingPlugin) -> dict[str, Any]:
    from . import __version__

    s = st.settings
    sess = st._session
    fps: dict[str, str] = {}
    if sess is not None:
        for slot in ([sess.base] if sess.base else []) + list(sess.candidates.values()):
            if slot._fingerprint:
                fps[slot.display] = slot._fingerprint
    rows = st.sorted_rows()
    for row in rows:
        fps.update(row.get("_fingerprints", {}))
    return {
        "base_ckpt": {"ref": s.base_ckpt, "fingerprint": fps.get(s.base_ckpt or "", "")},
        "tuned_ckpts": [
            {"ref": r, "fingerprint": fps.get(r, ""), "name": _cand_name(r, s.tuned_ckpts)} for r in s.tuned_ckpts
        ],
        "device": next((row.get("_device") for row in rows if row.get("_device")), s.device),
        "dtype": s.dtype,
        "alpha": s.alpha,
        "torch_version": _torch_version(),
        "plugin_version": __version__,
        "settings_sources": settings_sources(st),
    }


def settings_sources(st: ForgettingPlugin) -> dict[str, str]:
    """Where each setting came from; checks declared in [tool.pytest_forgetting] say ``pyproject``.

    Read from the file itself, so the xdist controller (which collects nothing) says the same.
    """
    sources = dict(st.settings.sources)
    pyproject = Path(st.config.rootpath) / "pyproject.toml"
    kinds: set[str] = set()
    if _mentions_plugin(pyproject):
        from .declarations import load_pyproject

        try:
            kinds = {d.kind for d in load_pyproject(pyproject)}
        except ConfigError:  # reported where the checks are parsed
            pass
        try:
            if b"[tool.pytest_forgetting.tasks." in pyproject.read_bytes():  # data tasks declared there
                kinds.add("tasks")
        except OSError:
            pass
    for kind in sorted(kinds):
        source = sources.get(kind, "default")
        sources[kind] = "pyproject" if source == "default" else f"{source}+pyproject"
    return dict(sorted(sources.items()))


def _cand_name(ref: str, refs: tuple[str, ...]) -> str:
    from .options import candidate_name

    return candidate_name(ref, refs) if len(refs) > 1 else ""


def _torch_version() -> str:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return ""


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the table and write the reports. Never raises: a report problem is one line, not a crash."""
    if is_worker(config) or _other_rank():
        return
    st = config.stash.get(STATE_KEY, None)
    if st is None:
        return
    if not st.rows and not (st.interrupted and (st.settings.json_path or st.settings.markdown_path)):
        return  # (an interrupted run still replaces the reports, so no stale one is read as this run's)
    from . import report

    rows = [_public(r) for r in with_outcomes(st)]
    tr = terminalreporter
    tr.write_sep("=", "forgetting summary")
    # the table is wider than 80 columns anyway; full test names matter more than wrapping
    width = max(getattr(getattr(tr, "_tw", None), "fullwidth", 0), 150)
    lines = report.format_table(rows, alpha=st.settings.alpha, width=width)
    if lines:
        lines[0] += outcome_note(rows)
    for line in lines:
        tr.write_line(line)
    if st.interrupted:
        tr.write_line(
            "forgetting: the run was interrupted: these results are partial "
            '(the reports say "interrupted"); run it to the end before trusting them',
            red=True,
        )
    from .mismatch import run_warnings  # a tuned checkpoint identical to the base, a base at chance

    notes = run_warnings(st.sorted_rows())
    for note in notes:
        tr.write_line(f"forgetting: warning: {note}", yellow=True)
    head = header(st)
    head["interrupted"] = st.interrupted
    head["warnings"] = notes
    s = st.settings
    outputs = (
        (s.json_path, lambda p: report.write_json(p, head, rows)),
        (s.markdown_path, lambda p: report.write_markdown(p, head, rows)),
        (s.plot_path, lambda p: report.write_plot(p, rows, alpha=s.alpha)),
    )
    for path, write in outputs:
        if not path:
            continue
        try:
            write(path)
            tr.write_line(f"forgetting: wrote {path}")
        except Exception as exc:  # noqa: BLE001 - the run's results must not be lost to a report error
            from .escape import terminal

            tr.write_line(f"forgetting: could not write {terminal(path)}: {terminal(exc)}", red=True)


def junit_suite_properties(config: pytest.Config) -> None:
    """Every row as properties of the JUnit testsuite: valid under every junit_family, one set per check.

    pytest's own per-test properties (``record_property``) are invalid under ``xunit2``, pytest's
    default, and repeat with every rerun; here each check's final row gives one set of
    ``forgetting_*`` properties, each set starting with ``forgetting_test``.
    """
    st = config.stash.get(STATE_KEY, None)
    if st is None or not st.rows or is_worker(config) or _other_rank():
        return
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest without it
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return  # no --junitxml
    from .report import junit_properties

    for row in with_outcomes(st):
        for name, value in junit_properties(_public(row)):
            xml.add_global_property(name, value)


def _other_rank() -> bool:
    """A torch.distributed rank other than 0: rank 0 alone prints the table and writes the reports."""
    from . import distributed  # no torch import

    return distributed.rank() > 0


def with_outcomes(st: ForgettingPlugin) -> list[CheckRow]:
    """The rows, each with ``pytest_outcome``: what pytest made of its test (the body can fail a passing check)."""
    for key, row in st.rows.items():
        outcome = st.outcomes.get(str(row.get("test")), "error" if row.get("verdict") == Verdict.ERROR else "")
        st.rows[key] = replace(row, pytest_outcome=outcome)
    return st.sorted_rows()


def outcome_note(rows: list[CheckRow]) -> str:
    """So that the summary line never reads green while pytest failed the tests it describes."""
    by_test: dict[str, list[CheckRow]] = {}
    for row in rows:
        by_test.setdefault(str(row.get("test")), []).append(row)
    odd = [
        t
        for t, rs in by_test.items()
        if rs[0].get("pytest_outcome") in ("failed", "error")
        and all(r.get("outcome") in ("passed", "warned") for r in rs)
    ]
    if not odd:
        return ""
    many = len(odd) != 1
    return (
        f"; pytest: {len(odd)} test{'s' if many else ''} with passing checks failed "
        f"(in {'their bodies' if many else 'its body'}, fixtures or teardown: see pytest's summary)"
    )


def _public(row: CheckRow) -> CheckRow:
    return row.public()


def report_header(config: pytest.Config) -> list[str]:
    st = config.stash.get(STATE_KEY, None)
    if st is None or is_worker(config):
        return []
    s = st.settings
    if not (s.base_ckpt or s.tuned_ckpts):
        return []
    src = s.sources
    device = s.device
    if device == "auto" and config.getoption("collectonly", False):
        device = "auto (not probed under --collect-only, which never imports torch)"
    elif device == "auto":
        import torch

        device = "auto -> cuda" if torch.cuda.is_available() else "auto -> cpu (no CUDA device)"
    lines = [
        f"forgetting: base={s.base_ckpt} ({src.get('base_ckpt')}), "
        f"tuned={', '.join(s.tuned_ckpts) or '-'} ({src.get('tuned_ckpts')})"
    ]
    lines.append(
        f"forgetting: device={device} ({src.get('device')}), dtype={s.dtype}, alpha={s.alpha:g}, "
        f"batch_size={s.batch_size}, inconclusive={s.inconclusive}, "
        f"cache={'off' if s.no_cache else s.cache_dir}"
    )
    if s.device_map:
        lines.append(
            f"forgetting: device_map={s.device_map} ({src.get('device_map')})"
            + (f", max_memory={s.max_memory} ({src.get('max_memory')})" if s.max_memory else "")
        )
    from .escape import terminal  # checkpoint paths are chosen by whoever names the files

    return [terminal(line) for line in lines]
