"""Typed results of a check: the kinds (verdict, outcome, check kind) and the one mapping between them.

The enums are ``str`` subclasses whose members equal (and hash, print and JSON-encode as) the plain
strings the plugin has always used, so ``row["verdict"] == "pass"``, the JSON report and user code
comparing to strings keep working (even ``repr`` is the string's, so messages print as before).
``enum.StrEnum`` is Python 3.11+; :class:`_StrEnum` is the same idea for 3.10.

The result of one check is a frozen :class:`CheckRow` (its per-class entries :class:`ClassDrop`s). A
row is also a read-only ``Mapping`` from the JSON report's keys to its values, so ``row["verdict"]``,
``row.get("drop")`` and ``dict(row)`` read it as they read the dict it replaces; a field that a row
does not carry (``ABSENT``) is not a key of it, exactly as the key was missing from the dict. Changes
are new records (``dataclasses.replace``). :meth:`CheckRow.to_json` / :meth:`CheckRow.from_json` are
the xdist worker -> controller channel; a key no field names is an error, never dropped.

No heavy imports: this module is loaded with the plugin, in every pytest run.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any, ClassVar, Protocol

__all__ = [
    "ABSENT",
    "CheckKind",
    "CheckRow",
    "ClassDrop",
    "Outcome",
    "Provenance",
    "Verdict",
    "gain_triple",
    "min_gain",
    "outcome_for",
]


class _StrEnum(str, Enum):
    """A ``str`` enum (``enum.StrEnum`` on 3.11+): ``str()``, ``format()`` and ``hash()`` are the value's."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __repr__(self) -> str:  # the plain string's: a message or a list of rows prints as it always did
        return repr(self.value)

    __hash__ = str.__hash__


class Verdict(_StrEnum):
    """What the statistics say about one check (``ERROR``: it could not be decided)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class Outcome(_StrEnum):
    """What a verdict did to its test (``NONE``: not enforced yet)."""

    NONE = ""
    PASSED = "passed"
    WARNED = "warned"
    FAILED = "failed"
    ERROR = "error"


class CheckKind(_StrEnum):
    """``retains``: the drop must stay below the margin; ``improves``: the gain must exceed ``min_gain``.

    An ``improves`` check is decided as a drop with margin ``-min_gain`` (the gain is ``-drop``); the
    presentation in gains lives here (:func:`min_gain`, :func:`gain_triple`) and nowhere else.
    """

    RETAINS = "retains"
    IMPROVES = "improves"


def outcome_for(verdict: str, inconclusive_action: str) -> Outcome:
    """The test outcome of a verdict: FAIL fails; INCONCLUSIVE fails, warns or passes per
    ``--forgetting-inconclusive`` (``fail`` | ``warn`` | ``pass``); PASS passes."""
    if verdict == Verdict.FAIL or (verdict == Verdict.INCONCLUSIVE and inconclusive_action == "fail"):
        return Outcome.FAILED
    if verdict == Verdict.INCONCLUSIVE and inconclusive_action == "warn":
        return Outcome.WARNED
    return Outcome.PASSED


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _negated(value: Any) -> Any:
    return -float(value) if _is_number(value) else value


def min_gain(margin: Any) -> Any:
    """The ``min_gain`` of an ``improves`` check from its internal margin (``-min_gain``); non-numbers unchanged."""
    return _negated(margin)


def gain_triple(drop: Any, ci_low: Any, ci_high: Any) -> tuple[Any, Any, Any]:
    """Gain and its interval of an ``improves`` check: the negated drop, with the interval's ends swapped."""
    return _negated(drop), _negated(ci_high), _negated(ci_low)


# --------------------------------------------------------------------------- records


class _Absent:
    """The value of a field that a row does not carry (its key is missing from the mapping)."""

    _instance: ClassVar[_Absent | None] = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> tuple[type[_Absent], tuple[()]]:
        return (_Absent, ())


ABSENT: Any = _Absent()


class _Record(Mapping[str, Any]):
    """A frozen dataclass read as a mapping of its present fields (``_KEYS`` renames a field's key)."""

    _KEYS: ClassVar[Mapping[str, str]] = {}  # field name -> key, where they differ
    _CONVERT: ClassVar[Mapping[str, Any]] = {}  # field name -> what makes its value from the key's

    @classmethod
    def _key_to_field(cls) -> dict[str, str]:
        cached = cls.__dict__.get("_BY_KEY")
        if cached is None:
            cached = {cls._KEYS.get(f.name, f.name): f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            cls._BY_KEY = cached  # type: ignore[attr-defined]
        return cached

    def __getitem__(self, key: str) -> Any:
        name = self._key_to_field().get(key)
        value = ABSENT if name is None else getattr(self, name)
        if value is ABSENT:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if getattr(self, f.name) is not ABSENT:
                yield self._KEYS.get(f.name, f.name)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The record of a mapping with the JSON report's keys; an unknown or a missing required key is an error."""
        if isinstance(data, cls):
            return data
        by_key = cls._key_to_field()
        unknown = sorted(str(k) for k in data if k not in by_key)
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"{cls.__name__} has no field for {names} (add it to pytest_forgetting/results.py)")
        values = {}
        for key, value in data.items():
            name = by_key[key]
            convert = cls._CONVERT.get(name)
            values[name] = convert(value) if convert is not None and value is not None else value
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"{cls.__name__}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """The present fields under their keys, JSON-ready (records as dicts, tuples as lists, kinds as strings)."""
        return {key: _jsonable(value) for key, value in self.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Any:
        return cls.from_dict(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)) and any(isinstance(v, _Record) for v in value):
        return [_jsonable(v) for v in value]
    return value


def _class_drops(values: Any) -> list[Any]:
    return [ClassDrop.from_dict(v) if isinstance(v, Mapping) else v for v in values]


# Rows are compared as the mappings they stand for (``Mapping.__eq__``: equal to the dict of the same
# keys and values), hence eq=False; they are unhashable, as those dicts were.
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ClassDrop(_Record):
    """One ``worst_classes`` entry: the drop of a class (or slice) with its interval.

    ``verdict`` is "" when no class budget gates the check. With ``max_class_drop`` on per-class
    precision (``class_budget.py``) the entry also has ``metric`` ("precision"), ``base``, ``tuned`` and
    ``n_tuned``, and ``n`` counts the base's predictions of the class.
    """

    name: Any
    drop: Any
    ci_low: Any
    ci_high: Any
    verdict: str
    n: Any
    metric: Any = ABSENT
    base: Any = ABSENT
    tuned: Any = ABSENT
    n_tuned: Any = ABSENT

    _CONVERT: ClassVar[Mapping[str, Any]] = {"verdict": lambda v: Verdict(v) if v else v}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a row's numbers come from: device, checkpoint fingerprints and how each evaluation was obtained
    (``computed``; ``memory``: earlier in this process; ``cache``: read from the cache; ``""``: not evaluated)."""

    device: Any
    fingerprints: Mapping[str, str]
    base_reuse: str
    tuned_reuse: str
    base_cached: bool
    base_eval_s: float
    tuned_eval_s: float


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CheckRow(_Record):
    """The result of one check (one marker or ``forgetting.assert_*`` call), as every report reads it.

    A *drop* is signed so that positive means worse; for ``improves`` rows the gain is ``-drop`` and the
    margin is ``-min_gain`` (:func:`gain_triple`, :func:`min_gain`). ``verdict`` is ``error`` when the
    check could not be decided, ``outcome`` what the verdict did to the test ("" before the call phase).

    Fields after ``outcome`` are optional: a row built for a check that ran has ``bounded`` (default
    True: a metric in [0, 1] shown in percent), ``base_reuse`` / ``tuned_reuse`` (``computed``, ``memory``:
    earlier in the same process, ``cache``: read from the cache, which another xdist worker or an earlier
    run filled; ``""``: not evaluated) and the check's budgets; ``class_metric`` is "precision" when
    ``max_class_drop`` budgets per-class precision (see :class:`ClassDrop`); ``weight_drift`` is the pair's
    per-block drift table (``drift.py``: ``block``, ``rel``, ``cosine``, ``diff_norm``, ``base_norm``,
    ``n_params``, ``adapter``; None when a model was not in memory);
    ``representation_cka`` comes with ``--forgetting-representation-drift``; ``gap`` with
    ``max_gap_increase`` (``best``, ``worst``, ``base``, ``tuned``, ``increase``, ``ci_low``, ``ci_high``,
    ``margin``, ``verdict``, ``method``, ``of``: "slice" or "class"); ``fraction_used`` with early stopping;
    ``examples`` counts the Hypothesis examples folded into the row; ``pytest_outcome`` is what pytest made
    of the test. ``chance``, ``device`` and ``fingerprints`` (keys ``_chance``, ``_device``,
    ``_fingerprints``) travel to the controller for its warnings and header, never into a report.
    """

    test: str
    task: str
    split: str
    metric: str
    kind: CheckKind
    candidate: str
    n: Any
    base: Any
    tuned: Any
    drop: Any
    ci_low: Any
    ci_high: Any
    margin: Any
    relative: bool
    nfr: Any
    verdict: Verdict
    reason: str
    n_needed: Any
    worst_classes: list[ClassDrop]  # lists, as in the JSON (a row equals the dict it replaces): read-only by convention
    flipped_ids: list[Any]
    base_cached: bool
    base_eval_s: float
    tuned_eval_s: float
    higher_is_better: bool
    outcome: Outcome
    base_reuse: Any = ABSENT
    tuned_reuse: Any = ABSENT
    bounded: Any = ABSENT
    max_class_drop: Any = ABSENT
    max_nfr: Any = ABSENT
    slices: Any = ABSENT
    max_gap_increase: Any = ABSENT
    class_metric: Any = ABSENT
    fraction_used: Any = ABSENT
    weight_drift: Any = ABSENT
    representation_cka: Any = ABSENT
    gap: Any = ABSENT
    examples: Any = ABSENT
    pytest_outcome: Any = ABSENT
    chance: Any = ABSENT
    device: Any = ABSENT
    fingerprints: Any = ABSENT

    _KEYS: ClassVar[Mapping[str, str]] = {"chance": "_chance", "device": "_device", "fingerprints": "_fingerprints"}
    _CONVERT: ClassVar[Mapping[str, Any]] = {
        "kind": CheckKind,
        "verdict": Verdict,
        "outcome": Outcome,
        "worst_classes": _class_drops,
        "flipped_ids": list,
    }
    PRIVATE: ClassVar[tuple[str, ...]] = ("chance", "device", "fingerprints")

    def public(self) -> CheckRow:
        """The row without the fields meant for the controller only (``_chance``, ``_device``, ``_fingerprints``)."""
        return dataclasses.replace(self, **{name: ABSENT for name in self.PRIVATE})

    @property
    def provenance(self) -> Provenance:
        def get(key: str, default: Any) -> Any:
            return self.get(key, default)

        return Provenance(
            device=get("_device", None),
            fingerprints=get("_fingerprints", None) or {},
            base_reuse=get("base_reuse", ""),
            tuned_reuse=get("tuned_reuse", ""),
            base_cached=self.base_cached,
            base_eval_s=self.base_eval_s,
            tuned_eval_s=self.tuned_eval_s,
        )

    @property
    def is_improves(self) -> bool:
        return self.kind == CheckKind.IMPROVES

    @property
    def is_bounded(self) -> bool:
        """A metric in [0, 1], shown in percent and its drops in points: ``bounded``, True when the row has none."""
        return True if self.bounded is ABSENT else bool(self.bounded)

    @property
    def gain(self) -> tuple[Any, Any, Any]:
        """An ``improves`` row's gain and its interval (:func:`gain_triple`)."""
        return gain_triple(self.drop, self.ci_low, self.ci_high)

    @property
    def min_gain(self) -> Any:
        """An ``improves`` row's required gain (:func:`min_gain`)."""
        return min_gain(self.margin)


class _CheckLike(Protocol):
    """What :func:`draft_row` reads of a ``checks.Check`` (no import of checks.py here)."""

    @property
    def kind(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def margin(self) -> float: ...
    @property
    def relative(self) -> bool: ...


def draft_row(
    check: _CheckLike, *, test: str, candidate: str, metric: str, higher_is_better: bool = True
) -> dict[str, Any]:
    """The one draft of a row: every required field of :class:`CheckRow`, from the check and nothing decided yet
    (``n`` 0, no numbers, verdict ``error``). The pipeline adds its optional fields and fills it as the check runs
    (``engine.decision.row_skeleton``); a check that could not run keeps it, with its reason
    (``phases._error_row``)."""
    return {
        "test": test,
        "task": check.task,
        "split": check.split,
        "metric": metric,
        "kind": check.kind,
        "candidate": candidate,
        "n": 0,
        "base": None,
        "tuned": None,
        "drop": None,
        "ci_low": None,
        "ci_high": None,
        "margin": check.margin,
        "relative": check.relative,
        "nfr": None,
        "verdict": Verdict.ERROR,
        "reason": "",
        "n_needed": None,
        "worst_classes": [],
        "flipped_ids": [],
        "base_cached": False,
        "base_eval_s": 0.0,
        "tuned_eval_s": 0.0,
        "higher_is_better": higher_is_better,
        "outcome": Outcome.NONE,
    }
