"""Text, speech and multiple-choice tasks keep their splits in the one store of every task (issue 15): ``Task._splits``,
one record per split, read through ``Task.split`` / ``ids`` / ``split_names`` / ``slice_column``.

The data fingerprints (part of every cache key) are pinned to the values the tasks computed when
each kept its own per-field dictionaries: a changed value would invalidate users' caches.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_forgetting.errors import ConfigError
from pytest_forgetting.tasks.lm import GenerationExactMatchTask, LanguageModelingTask, SplitRecord
from pytest_forgetting.tasks.speech import SpeechRecognitionTask


def _tasks():
    lm = LanguageModelingTask(
        splits={"a": (["x y z", "hello there"], ["i1", "i2"], {"src": ["p", "q"]}), "b": (["more text"],)}
    )
    gen = GenerationExactMatchTask(
        splits={"test": ([("2+2?", "4"), ("cap?", ("Paris", "paris"))], None, {"k": [1, 2]})}
    )
    rng = np.random.default_rng(0)
    speech = SpeechRecognitionTask(
        [rng.normal(size=800).astype(np.float32), rng.normal(size=1200).astype(np.float32)], ["hi there", "bye"]
    )
    return lm, gen, speech


def test_fingerprints_are_unchanged():
    lm, gen, speech = _tasks()
    assert lm.data_fingerprint("a") == "9da9be41709d336ea482c7860eff07b0eb28ac2f5a56098f89ae63a0cd54ebda"
    assert lm.data_fingerprint("b") == "e5d7ca9cc8c83a2fd5b74951e96ab02623aa4ce2e2f19c84cef7312b6eae65f7"
    assert gen.data_fingerprint("test") == "2b1bdab97035f91d4ae5ff122dba4f118c0bab33ecd4b867a3be73b29e4a5c13"
    assert speech.data_fingerprint("test") == "06a361a1c2f4042b92b6892bdc85d0c90844b3b6fda645b6694c2081dccd406f"


def test_one_record_per_split():
    lm, gen, speech = _tasks()
    assert lm.split_names() == ("a", "b") and gen.split_names() == ("test",)
    record = lm.split("a")
    assert (
        isinstance(record, SplitRecord)
        and record.ids.tolist() == ["i1", "i2"]
        and record.fields == {"texts": ["x y z", "hello there"]}
    )
    assert lm.ids("b").tolist() == ["b/0"] and lm.texts("b") == ["more text"]
    assert gen.prompts("test") == ["2+2?", "cap?"] and gen.targets("test") == [("4",), ("Paris", "paris")]
    assert speech.transcripts("test") == ["hi there", "bye"] and [len(w) for w in speech.audio("test")] == [800, 1200]
    assert lm.slice_column("a", "src").tolist() == ["p", "q"] and gen.slice_column("test", "k").tolist() == [1, 2]


def test_unknown_splits_and_columns_are_one_line_errors():
    lm, gen, _ = _tasks()
    with pytest.raises(ConfigError, match=r"has no split 'c'.*; splits: a, b"):
        lm.texts("c")
    with pytest.raises(ConfigError, match=r"has no slice column 'srd' \(did you mean 'src'\?\); columns: src"):
        lm.slice_column("a", "srd")
    with pytest.raises(ConfigError, match=r"has no slice column 'src'; columns: \(none\)"):
        lm.slice_column("b", "src")
    with pytest.raises(ConfigError, match="has no split 'x'"):
        gen.prompts("x")


def test_multiple_choice_splits_are_in_the_same_store():
    from pytest_forgetting.tasks.multiple_choice import MultipleChoiceTask

    task = MultipleChoiceTask(
        splits={
            "test": (["q1", "q2"], [["a", "b"], ["c", "d", "e"]], [1, "e"], ["x", "y"], {"g": ["u", "v"]}),
            "dev": (["q"], [["a", "b"]], [0]),
        }
    )
    assert task.split_names() == ("test", "dev") and task.split("dev")["ids"].tolist() == ["dev/0"]
    assert task.static_outputs("test")["label"].tolist() == [1, 2] and task.slice_column("test", "g").tolist() == [
        "u",
        "v",
    ]
    assert task.data_fingerprint("test") == "c9d866978d000dffd50add79c4086fc54a610f189a2ed231802a26faf0f6b6d9"
    assert task.data_fingerprint("dev") == "ce203ddde298a27939f693679de201a1b12f1f1ddbdbb467321d14168be335dc"
    with pytest.raises(ConfigError, match="has no split 'nope'; splits: test, dev"):
        task.ids("nope")
