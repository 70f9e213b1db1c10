"""Embedding retention: what an encoder's representations still know, read by a seeded probe.

A fine-tune that replaces or retrains the head of an encoder cannot be compared with its base
on the old task through the head. What can be compared is the *backbone*: pool each text's
hidden states into an embedding, fit a simple probe (seeded logistic regression, or k-NN) on
a labelled probe split with **each model's own** embeddings, and score both probes on the
same evaluation examples. The per-example outputs are ordinary ``pred`` / ``label`` pairs, so
accuracy (Tango interval), macro-F1 (paired bootstrap), per-class and per-slice drops and
negative flips all apply unchanged.

Per model, two named phases: the **fit** phase, :meth:`EmbeddingProbeTask.fit_probe` (the
module's :func:`fit_probe` with the task's settings: the model's probe-split embeddings and
their labels -> a :class:`Probe`), and the **scoring** phase, :meth:`Probe.predict` (evaluated
embeddings -> predicted classes). They fit the evaluator's batch loop without a new hook:
``batches`` first yields the probe split (tagged ``"probe"``), then the requested evaluation
examples, all carrying one ``ProbeRun`` object created per evaluation. ``forward`` collects the
probe embeddings, runs the fit phase at the first evaluation batch (``ProbeRun.fit``), and
scores every evaluation batch with the fitted probe. The probe split is never subsampled by
``--forgetting-limit`` (only the evaluated examples are); its size is fixed by ``probe_size``.

An evaluation in several calls (``--forgetting-early-stop`` runs the tuned model chunk by
chunk) fits each model's probe once: the fitted probe is kept with the prepared inputs, per
model object, and refitted only when the model's weights have changed in place since.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, TaskError
from .base import ModelMeta, Task
from .classification import TextClassificationTask, padded_batches, tokenize_padded
from .token import effective_max_length

PROBES = ("logistic", "knn")
POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class Probe:
    """A probe fitted on one model's probe-split embeddings (:func:`fit_probe`): the scoring phase.

    ``predict(embeddings)`` gives a class id per row; rows with NaN/Inf get class 0 (the
    evaluator reports them as non-finite). ``finite`` is False when the probe split's own
    embeddings were not finite: the model is broken and every evaluated example is non-finite.
    """

    classify: Callable[[np.ndarray], np.ndarray]
    finite: bool = True

    def predict(self, emb: Any) -> np.ndarray:
        e = _to_numpy(emb)
        out = np.zeros(len(e), dtype=np.int64)
        ok = np.isfinite(e).all(axis=1)
        if ok.any():
            out[ok] = self.classify(e[ok])
        return out


def _prep(x: np.ndarray, normalize: bool) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return x


def fit_probe(
    embeddings: np.ndarray, labels: np.ndarray, *, probe: str, k: int, C: float, seed: int, normalize: bool
) -> Probe:
    """The fit phase: a probe on (probe examples, hidden) ``embeddings`` and their class ``labels``.

    ``probe="knn"``: cosine ``k``-nearest neighbours (with ``normalize``), the highest similarity
    first, ties between examples broken by probe index and ties between classes going to the
    nearer neighbours. ``probe="logistic"``: standardised, L2-regularised logistic regression
    (inverse strength ``C``, ``random_state=seed``); a single class is predicted as such.
    """
    x, y = embeddings, labels
    if not np.isfinite(x).all():
        return Probe(lambda e: np.zeros(len(e), dtype=np.int64), finite=False)
    x = _prep(x, normalize)
    if probe == "knn":
        k = min(k, len(x))
        n_classes = int(y.max(initial=0)) + 1

        def predict_knn(e: np.ndarray) -> np.ndarray:
            sims = _prep(e, normalize) @ x.T
            # stable order: the highest similarity first, ties broken by probe index
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            votes = np.zeros((len(e), n_classes))
            rows = np.repeat(np.arange(len(e)), k)
            np.add.at(votes, (rows, y[top].ravel()), 1.0)
            # ties between classes go to the class of the nearer neighbours
            np.add.at(votes, (rows, y[top].ravel()), 1e-6 * np.take_along_axis(sims, top, axis=1).ravel())
            return votes.argmax(axis=1).astype(np.int64)

        return Probe(predict_knn)
    classes = np.unique(y)
    if len(classes) < 2:
        only = int(classes[0]) if len(classes) else 0
        return Probe(lambda e: np.full(len(e), only, dtype=np.int64))
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x), y)

    def predict_logistic(e: np.ndarray) -> np.ndarray:
        return clf.predict(scaler.transform(_prep(e, normalize))).astype(np.int64)

    return Probe(predict_logistic)


class ProbeRun:
    """One model's probe within one evaluation: collects the probe split's embeddings batch by batch,
    fits the :class:`Probe` on them (:meth:`fit`, once), then predicts the evaluated embeddings."""

    def __init__(self, labels: np.ndarray, *, probe: str = "logistic", k: int = 10, C: float = 1.0, seed: int = 0,
                 normalize: bool = True, fit: Callable[[np.ndarray, np.ndarray], Probe] | None = None,
                 fitted: weakref.WeakKeyDictionary[Any, tuple[Any, Probe]] | None = None) -> None:  # fmt: skip
        self.labels = labels
        #: the fit phase (``EmbeddingProbeTask.fit_probe``; else :func:`fit_probe` with the settings given)
        self._fit = fit or functools.partial(fit_probe, probe=probe, k=k, C=C, seed=seed, normalize=normalize)
        self._parts: list[np.ndarray] = []
        #: the probe once fitted (:meth:`fit`) or reused from an earlier run on unchanged weights
        self.fitted_probe: Probe | None = None
        self._fitted = fitted
        self._model: Any = None

    @property
    def finite(self) -> bool:
        return self.fitted_probe is None or self.fitted_probe.finite

    def reuse(self, model: Any) -> bool:
        """True when this model's probe is already fitted (in this run, or in an earlier one on unchanged weights)."""
        if self.fitted_probe is not None:
            return True
        self._model = model
        entry = None
        if self._fitted is not None:
            try:
                entry = self._fitted.get(model)
            except TypeError:  # not weak-referenceable: no reuse
                entry = None
        if entry is not None and entry[0] == _weights_version(model):
            self.fitted_probe = entry[1]
            return True
        return False

    def _remember(self, probe: Probe) -> None:
        if self._fitted is not None and self._model is not None:
            try:
                self._fitted[self._model] = (_weights_version(self._model), probe)
            except TypeError:
                pass
        self._model = None  # the stored probe must not keep the model alive

    def add(self, emb: Any) -> None:
        self._parts.append(_to_numpy(emb))

    @property
    def fitted(self) -> bool:
        return self.fitted_probe is not None

    def fit(self) -> Probe:
        """The fit phase: :func:`fit_probe` on the collected probe-split embeddings."""
        x = np.concatenate(self._parts) if self._parts else np.zeros((0, 0))
        self._parts = []
        if len(x) != len(self.labels):
            raise TaskError(f"probe split: {len(x)} embeddings for {len(self.labels)} labels")
        probe = self._fit(x, self.labels)
        self.fitted_probe = probe
        self._remember(probe)
        return probe

    def predict(self, emb: Any) -> np.ndarray:
        """The scoring phase (fitting first if that has not happened yet)."""
        probe = self.fitted_probe if self.fitted_probe is not None else self.fit()
        return probe.predict(emb)


def _weights_version(model: Any) -> tuple[Any, ...]:
    """Changes whenever the weights may have: in-place updates (optimizer steps, ``load_state_dict``)
    bump a tensor's version counter; ``.to()`` or reassigned tensors change its storage."""
    params = getattr(model, "parameters", None)
    if params is None:
        return ()
    return tuple((p.data_ptr(), int(getattr(p, "_version", 0)), str(p.dtype)) for p in params())


def _to_numpy(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)


def pooled_embeddings(model: Any, inputs: Mapping[str, Any], pooling: str = "mean", layer: int = -1) -> Any:
    """(batch, hidden) embeddings of a text batch: hidden states of ``layer`` pooled over the mask.

    Works for transformers encoders (``BertModel``, any ``*ForSequenceClassification`` /
    ``*ForTokenClassification``, PEFT-wrapped models: the head is ignored) and for plain modules
    returning (batch, tokens, hidden) or already pooled (batch, hidden) tensors.
    """
    import torch

    try:
        out = model(**inputs, output_hidden_states=True)
    except TypeError:  # a plain module without the transformers keyword
        out = model(**inputs)
    hidden = None
    states = getattr(out, "hidden_states", None)
    if states is not None:
        hidden = states[layer]
    elif getattr(out, "last_hidden_state", None) is not None:
        if layer != -1:
            raise TaskError(
                f"layer={layer} needs a model that returns hidden_states; this one returns only the last layer"
            )
        hidden = out.last_hidden_state
    elif isinstance(out, torch.Tensor):
        hidden = out
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        hidden = out[0]
    if hidden is None:
        raise TaskError(f"cannot read embeddings from a {type(model).__name__} output of type {type(out).__name__}")
    if hidden.ndim == 2:
        return hidden
    if hidden.ndim != 3:
        raise TaskError(f"expected hidden states of shape (batch, tokens, hidden), got {tuple(hidden.shape)}")
    if pooling == "cls":
        return hidden[:, 0]
    mask = inputs.get("attention_mask")
    mask = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask[:, : hidden.shape[1]]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "max":
        return hidden.masked_fill(m == 0, float("-inf")).amax(dim=1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class EmbeddingProbeTask(TextClassificationTask):
    """Text classification read from a model's pooled embeddings through a per-model probe.

    The data are those of :class:`TextClassificationTask` (needs at least two splits: the
    probe split and the evaluated one). Options: ``probe`` (``"logistic"``: standardised,
    L2-regularised logistic regression with inverse strength ``C``; or ``"knn"``: cosine
    ``k``-nearest neighbours), ``pooling`` (``"mean"`` over the attention mask, ``"cls"``,
    ``"max"``), ``layer`` (index into the model's hidden states, -1 = last), ``probe_split``
    (default ``"train"``), ``probe_size`` (a seeded stratified subsample of the probe split,
    to bound the cost), ``normalize`` (L2-normalise embeddings first), ``seed``.

    Each model gets its own probe, in two phases: :meth:`fit_probe` (fit on that model's
    embeddings of the probe split) and :meth:`Probe.predict` (score its embeddings of the
    evaluated split); ``forward`` runs them in that order within the evaluator's batch loop.
    """

    version = "1"

    def __init__(
        self,
        texts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        splits: Mapping[str, tuple] | None = None,
        probe_split: str = "train",
        probe: str = "logistic",
        k: int = 10,
        C: float = 1.0,
        pooling: str = "mean",
        layer: int = -1,
        probe_size: int | None = None,
        normalize: bool = True,
        seed: int = 0,
        max_length: int = 128,
        class_names: Sequence[str] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        if splits is None:
            raise TaskError(
                "EmbeddingProbeTask needs splits={...}: a probe split to fit the probe on and a split to evaluate"
            )
        super().__init__(
            texts, labels, ids, max_length=max_length, class_names=class_names, splits=splits, columns=columns
        )
        if probe not in PROBES:
            raise TaskError(f"probe={probe!r}: expected one of {', '.join(PROBES)}")
        if pooling not in POOLINGS:
            raise TaskError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
        if probe_split not in self._splits:
            raise TaskError(
                f"probe_split={probe_split!r} is not a split of the task; splits: {', '.join(self._splits)}"
            )
        if isinstance(k, bool) or int(k) < 1:
            raise TaskError(f"k={k!r} must be a positive integer")
        if not float(C) > 0:
            raise TaskError(f"C={C!r} must be positive")
        self.probe_split = probe_split
        self.probe = probe
        self.k = int(k)
        self.C = float(C)
        self.pooling = pooling
        self.layer = int(layer)
        self.normalize = bool(normalize)
        self.seed = int(seed)
        labels_all = self._splits[probe_split].labels
        if len(labels_all) == 0:
            raise TaskError(f"probe split {probe_split!r} is empty")
        self._probe_idx = np.arange(len(labels_all))
        if probe_size is not None and probe_size < len(labels_all):
            from .builtin import stratified_split

            _, self._probe_idx = stratified_split(labels_all, test_size=int(probe_size), seed=self.seed)
        self.probe_size = len(self._probe_idx)

    def fit_probe(self, embeddings: np.ndarray, labels: np.ndarray) -> Probe:
        """The fit phase: a :class:`Probe` on one model's (probe examples, hidden) embeddings of the
        probe split and their labels, with this task's ``probe``, ``k``, ``C``, ``seed``, ``normalize``."""
        return fit_probe(
            embeddings, labels, probe=self.probe, k=self.k, C=self.C, seed=self.seed, normalize=self.normalize
        )

    def spec(self) -> dict[str, Any]:
        """The probe's settings (part of the data fingerprint, shown in reports)."""
        return {
            "probe": self.probe, "k": self.k, "C": self.C, "pooling": self.pooling, "layer": self.layer,
            "probe_split": self.probe_split, "probe_size": self.probe_size, "normalize": self.normalize,
            "seed": self.seed,
        }  # fmt: skip

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        d = self.split(split)
        p = self._splits[self.probe_split]
        return (
            self.spec(), self.max_length, d.ids, d.labels, list(d.inputs),
            p.ids[self._probe_idx], p.labels[self._probe_idx], [p.inputs[i] for i in self._probe_idx],
        )  # fmt: skip

    def split(self, split: str) -> Any:
        # data access (ids, labels) works for every split, the probe split included
        Task.check_split(self, split)
        return self._splits[split]

    def check_split(self, split: str) -> None:
        """A split can be *evaluated* unless it is the probe's training split."""
        Task.check_split(self, split)
        if split == getattr(self, "probe_split", None):
            raise ConfigError(
                f"task {self.name!r}: split {split!r} is the probe's training split; evaluate another split "
                f"(splits: {', '.join(s for s in self.split_names() if s != split) or '(none)'})"
            )

    def check_model(self, meta: ModelMeta) -> None:
        """Nothing to check: the probe reads hidden states and fits its own classes, never the model's head
        (a topic classifier's ``id2label`` says nothing about a sentiment probe of its encoder)."""

    def prepare_key(self, meta: ModelMeta) -> str:
        return f"{meta.tokenizer_fingerprint}:{effective_max_length(meta, self.max_length)}"

    def prepare(self, split: str, meta: ModelMeta) -> dict[str, Any]:
        self.check_split(split)
        d = self.split(split)
        p = self._splits[self.probe_split]
        texts = [p.inputs[i] for i in self._probe_idx]
        max_length = effective_max_length(meta, self.max_length)
        probe = tokenize_padded(meta, texts, max_length, self.name)
        # probe order does not matter to the fit: sort by length so batches carry little padding
        order = np.argsort(probe["lengths"], kind="stable")
        return {
            "eval": tokenize_padded(meta, d.inputs, max_length, self.name),
            "probe": probe,
            "probe_order": order,
            "probe_labels": p.labels[self._probe_idx][order],
        }

    def batches(self, prepared: dict[str, Any], indices: np.ndarray, batch_size: int) -> Iterator[dict[str, Any]]:
        fitted = prepared.setdefault("fitted", weakref.WeakKeyDictionary())  # per model, across evaluations
        run = ProbeRun(prepared["probe_labels"], fit=self.fit_probe, fitted=fitted)
        for batch in padded_batches(prepared["probe"], prepared["probe_order"], batch_size):
            yield {"phase": "probe", "inputs": batch, "run": run}
        for batch in padded_batches(prepared["eval"], indices, batch_size):
            yield {"phase": "eval", "inputs": batch, "run": run}

    def lengths(self, prepared: dict[str, Any]) -> np.ndarray:
        return prepared["eval"]["lengths"]  # the evaluated texts' tokens: length-bucketed batches

    def forward(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        run: ProbeRun = batch["run"]
        if batch["phase"] == "probe":
            if not run.reuse(model):
                run.add(pooled_embeddings(model, batch["inputs"], self.pooling, self.layer))
            return {}
        emb = pooled_embeddings(model, batch["inputs"], self.pooling, self.layer)
        probe = run.fitted_probe if run.fitted_probe is not None else run.fit()  # the fit phase, at the first batch
        pred = torch.from_numpy(probe.predict(emb))  # the scoring phase
        finite = torch.isfinite(emb).all(dim=1).cpu() & probe.finite
        return {"pred": pred, "finite": finite}
