"""Compatibility module: the names that lived here before the plugin was split by what it does.

* ``state``: the plugin object of a run (``ForgettingPlugin``, formerly ``RunState``), its stash keys;
* ``collection``: declared checks as items, candidates, validation at collection;
* ``phases``: the setup and call phases, the rows and their channel on the reports;
* ``summary``: the terminal table, the reports, the JUnit properties, the header.

``pytest_forgetting.runner.ForgettingInconclusiveWarning`` stays the warning's public path. New
code imports from the modules above; rebinding a name here does not change what the hooks call.
"""

from __future__ import annotations

from .collection import (  # noqa: F401
    _TYPO_MEMO,
    CANDIDATE_ARG,
    CheckItem,
    DeclaredChecks,
    _bind,
    _close_marker,
    _declared_items,
    _group_by_task,
    _mentions_plugin,
    _refuse_marker_typo,
    candidates,
    collect_checks,
    declared_checks,
    declared_file,
    declared_name,
    generate_tests,
    parse_declarations,
    refuse_missing_checkpoints,
)
from .phases import (  # noqa: F401
    _GROUPS_KEY,
    _RANK,
    ForgettingInconclusiveWarning,
    _error_row,
    _interrupted_rows,
    _is_hypothesis_test,
    _json_default,
    _severity,
    attach_rows,
    current_item,
    enforce,
    record_row,
    run_item_checks,
    show_notes,
)
from .state import (  # noqa: F401
    CHECKS_KEY,
    IMPROVES_DOC,
    MARKERS,
    PLUGIN_KEY,
    RESULTS_KEY,
    RETAINS_DOC,
    ROW_PROPERTY,
    ROWS_ATTR,
    ROWS_KEY,
    SETTINGS_KEY,
    STATE_KEY,
    ForgettingPlugin,
    RunState,
    collect_report,
    configure,
    is_worker,
    state,
)
from .summary import (  # noqa: F401
    _cand_name,
    _other_rank,
    _public,
    _torch_version,
    header,
    junit_suite_properties,
    outcome_note,
    report_header,
    settings_sources,
    terminal_summary,
    with_outcomes,
)
