"""Speech recognition with a CTC model (``Wav2Vec2ForCTC``): WER / CER, audio made offline.

The end-to-end checkpoints are tiny ``Wav2Vec2ForCTC`` folders (with their CTC vocabulary)
that read synthetic "tone speech": every letter is a short sine tone of its own pitch, the word
delimiter another one, separated by silence. The base's CTC head is fitted (frame-wise, on
the frozen random encoder) to spell the tones; the tuned one is refitted to a shifted alphabet,
so it gains on that task and loses the original. One test speaks real words with espeak-ng
(skipped when the program is missing).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_forgetting.checkpoints import load_checkpoint  # noqa: E402
from pytest_forgetting.errors import TaskError  # noqa: E402
from pytest_forgetting.evaluate import evaluate  # noqa: E402
from pytest_forgetting.metrics import SPEECH_METRICS  # noqa: E402
from pytest_forgetting.tasks.base import ModelMeta  # noqa: E402
from pytest_forgetting.tasks.speech import (  # noqa: E402
    SpeechRecognitionTask,
    cer,
    ctc_greedy_decode,
    edit_distance,
    error_counts,
    normalize_transcript,
    read_wav,
    synthesize_espeak,
    wer,
)

SR = 16_000
HOP = 320  # the conv strides below: 5 * 4 * 4 * 4
LETTERS = "abcdefgh"
PITCH = {c: 300 * 1.35**i for i, c in enumerate(LETTERS)} | {"|": 250 * 1.35**9}
VOCAB = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
TONE, GAP = 0.06, 0.04


def tones(text: str) -> np.ndarray:
    parts = [np.zeros(int(GAP * SR))]
    n = int(TONE * SR)
    t = np.arange(n) / SR
    for sym in text.replace(" ", "|"):
        parts += [0.5 * np.sin(2 * np.pi * PITCH[sym] * t) * np.hanning(n), np.zeros(int(GAP * SR))]
    return np.concatenate(parts).astype(np.float32)


def frame_targets(text: str, n_frames: int) -> np.ndarray:
    """Which symbol each output frame hears (0 = blank between tones)."""
    labels = np.zeros(n_frames, dtype=np.int64)
    centre = (np.arange(n_frames) * HOP + 200) / SR
    start = GAP
    for sym in text.replace(" ", "|"):
        labels[(centre >= start + 0.01) & (centre <= start + TONE - 0.01)] = VOCAB[sym]
        start += TONE + GAP
    return labels


def random_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join("".join(rng.choice(list(LETTERS), rng.integers(1, 4))) for _ in range(rng.integers(1, 4)))
        for _ in range(n)
    ]


def shifted(text: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] if c in LETTERS else c for c in text)


def tokenizer(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    return transformers.Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )


def tiny_wav2vec2():
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4), conv_bias=True,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True,
        mask_time_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    return transformers.Wav2Vec2ForCTC(config).eval()


def fit_head(model, texts: list[str], spelled: list[str]) -> None:
    """Fit only the CTC head, frame by frame, on the frozen (random) encoder: seconds, not minutes."""
    feats, targets = [], []
    with torch.no_grad():
        for text, spelling in zip(texts, spelled):
            wave = tones(text)
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
            hidden = model.wav2vec2(torch.from_numpy(wave)[None]).last_hidden_state[0]
            feats.append(hidden)
            targets.append(torch.from_numpy(frame_targets(spelling, hidden.shape[0])))
    x, y = torch.cat(feats), torch.cat(targets)
    opt = torch.optim.Adam(model.lm_head.parameters(), lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model.lm_head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def write_wavs(folder: Path, texts: list[str], spell=lambda t: t) -> Path:
    from scipy.io import wavfile

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(texts):
        wavfile.write(folder / f"utt{i:03d}.wav", SR, (tones(text) * 32767).astype(np.int16))
        lines.append(f"utt{i:03d}\t{spell(text)}")
    (folder / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """root with base/ and tuned/ (HF folders with vocabularies) and data/{tones,shifted}/ WAV folders."""
    root = tmp_path_factory.mktemp("speech")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = random_texts(48, seed=0)
        model = tiny_wav2vec2()
        fit_head(model, train, train)
        for name in ("base", "tuned"):
            if name == "tuned":
                fit_head(model, train, [shifted(t) for t in train])
            model.save_pretrained(root / name)
            tokenizer(root / name).save_pretrained(root / name)
            transformers.Wav2Vec2FeatureExtractor(
                sampling_rate=SR, do_normalize=True, return_attention_mask=True
            ).save_pretrained(root / name)
    finally:
        torch.set_num_threads(before)
    # bootstrap paths (WER, CER) decide from 100 examples on, counted by the effective size of their
    # word / character counts (issue 11): 120 of these utterances weigh like 93, 160 like more than 100
    test = random_texts(160, seed=1)
    write_wavs(root / "data" / "tones", test)
    write_wavs(root / "data" / "shifted", test, spell=shifted)
    return root


# -- error rates ----------------------------------------------------------------------------


def test_error_rates_known_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert error_counts("Hello, World!", "hello word") == (1, 2, 1, 11)
    assert normalize_transcript("  It's   FINE—really. ") == "it's fine really"
    # corpus rates pool the edits (a long utterance weighs more), they are not a mean of ratios
    assert wer(["a b c d", "e"], ["a b c d", "x"]) == pytest.approx(1 / 5)
    assert cer(["abcd"], ["abxd"]) == pytest.approx(1 / 4)
    outputs = {
        "word_errors": np.array([0, 1]),
        "ref_words": np.array([4, 1]),
        "char_errors": np.array([0, 1]),
        "ref_chars": np.array([7, 1]),
    }
    assert SPEECH_METRICS["wer"].value(outputs) == pytest.approx(1 / 5)
    assert SPEECH_METRICS["cer"].value(outputs, np.array([1])) == pytest.approx(1.0)
    assert not SPEECH_METRICS["wer"].higher_is_better


@settings(max_examples=60, deadline=None)
@given(st.text("abc ", max_size=8), st.text("abc ", max_size=8), st.text("abc ", max_size=8))
def test_edit_distance_is_a_metric(a, b, c):
    d = edit_distance
    assert d(a, b) == d(b, a)
    assert (d(a, b) == 0) == (a == b)
    assert d(a, c) <= d(a, b) + d(b, c)
    assert abs(len(a) - len(b)) <= d(a, b) <= max(len(a), len(b))


def test_ctc_greedy_decoding_merges_repeats_and_drops_blanks(tmp_path):
    tok = tokenizer(tmp_path)
    # frames: a a <blank> a | <unk> b b <blank> <blank> | (padding frames beyond the length are ignored)
    path = ["a", "a", "<pad>", "a", "|", "<unk>", "b", "b", "<pad>", "<pad>", "|", "h", "h"]
    logits = torch.full((1, len(path), len(VOCAB)), -5.0)
    for t, sym in enumerate(path):
        logits[0, t, VOCAB[sym]] = 5.0
    assert ctc_greedy_decode(logits, torch.tensor([11]), tok, blank_id=0) == ["aa b"]
    assert ctc_greedy_decode(logits, torch.tensor([13]), tok, blank_id=0) == ["aa b h"]


# -- audio and folders ----------------------------------------------------------------------


def test_wav_folder_loader(tmp_path):
    folder = write_wavs(tmp_path / "wavs", ["ab c", "h"])
    task = SpeechRecognitionTask.from_folder(folder)
    assert task.ids("test").tolist() == ["utt000", "utt001"]
    assert task.transcripts("test") == ["ab c", "h"]
    np.testing.assert_allclose(task.audio("test")[1], tones("h"), atol=1e-4)
    # per-utterance .txt files instead of a table; 8 kHz audio is resampled to 16 kHz
    from scipy.io import wavfile

    other = tmp_path / "txt"
    other.mkdir()
    wavfile.write(other / "x.wav", 8000, np.zeros(4000, dtype=np.int16))
    (other / "x.txt").write_text("silence\n")
    assert len(SpeechRecognitionTask.from_folder(other).audio("test")[0]) == 8000
    (other / "y.wav").write_bytes((other / "x.wav").read_bytes())
    with pytest.raises(TaskError, match="no transcript"):
        SpeechRecognitionTask.from_folder(other)
    with pytest.raises(TaskError, match="empty transcript"):
        SpeechRecognitionTask([np.zeros(800)], ["  ?! "])
    with pytest.raises(TaskError, match="only 10 samples"):
        SpeechRecognitionTask([np.zeros(10)], ["a"])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_espeak_ng_speech_round_trip(tmp_path):
    from scipy.io import wavfile

    audio = synthesize_espeak("three one four", voice="en-us", rate=170)
    assert audio.dtype == np.float32 and 0.4 * SR < len(audio) < 3 * SR
    assert 0.05 < float(np.abs(audio).max()) <= 1.0
    wavfile.write(tmp_path / "pi.wav", SR, (audio * 32767).astype(np.int16))
    np.testing.assert_allclose(read_wav(tmp_path / "pi.wav"), audio, atol=1e-4)
    with pytest.raises(TaskError, match="espeak-ng"):
        synthesize_espeak("hello", voice="no-such-voice")


# -- Wav2Vec2ForCTC folders through the plugin ---------------------------------------------


def test_wav2vec2_folder_transcribes_tone_speech(speech):
    loaded = load_checkpoint(str(speech / "base"), role="base")
    assert type(loaded.model).__name__ == "Wav2Vec2ForCTC"
    assert type(loaded.tokenizer).__name__ == "Wav2Vec2CTCTokenizer"
    task = SpeechRecognitionTask.from_folder(speech / "data" / "tones")
    task.name = "tones"
    meta = ModelMeta(tokenizer=loaded.tokenizer, tokenizer_fingerprint="t", config=loaded.config)
    many = evaluate(task, loaded.model, split="test", meta=meta, batch_size=16)  # padded, with attention mask
    few = np.arange(0, 40, 4)
    one = evaluate(task, loaded.model, split="test", meta=meta, batch_size=1, indices=few)
    for key in ("word_errors", "char_errors", "ref_words", "ref_chars"):
        np.testing.assert_array_equal(one.outputs[key], many.outputs[key][few])
    assert SPEECH_METRICS["cer"].value(many.outputs) < 0.05
    assert SPEECH_METRICS["wer"].value(many.outputs) < 0.15
    hyps = task.transcribe(loaded.model, "test", meta)
    assert wer(task.transcripts("test"), [hyps[i] for i in task.ids("test")]) == pytest.approx(
        SPEECH_METRICS["wer"].value(many.outputs)
    )


CONFTEST = """
import pytest_forgetting as pf

DATA = {data!r}


@pf.task("tones")
def tones():
    return pf.SpeechRecognitionTask.from_folder(DATA + "/tones")


@pf.task("tones-shifted")
def tones_shifted():
    return pf.SpeechRecognitionTask.from_folder(DATA + "/shifted")
"""

TESTS = """
import pytest


@pytest.mark.retains(task="tones", max_drop=0.05)
def test_keeps_wer():
    pass


@pytest.mark.retains(task="tones", metric="cer", max_drop=0.05)
def test_keeps_cer():
    pass


@pytest.mark.improves(task="tones-shifted", metric="cer", min_gain=0.3)
def test_learns_shifted_alphabet():
    pass
"""


def test_ctc_end_to_end(pytester, speech):
    pytester.makeconftest(CONFTEST.format(data=str(speech / "data")))
    pytester.makepyfile(test_speech_gate=TESTS)
    report = pytester.path / "report.json"
    result = pytester.runpytest(
        f"--base-ckpt={speech / 'base'}", f"--tuned-ckpt={speech / 'tuned'}", "--forgetting-device", "cpu",
        "--forgetting-no-cache", "--forgetting-json", str(report), "-p", "no:cacheprovider",
    )  # fmt: skip
    rows = {r["test"].rsplit("::", 1)[-1]: r for r in json.loads(Path(report).read_text())["rows"]}
    keep_wer, keep_cer, learn = rows["test_keeps_wer"], rows["test_keeps_cer"], rows["test_learns_shifted_alphabet"]
    assert keep_wer["metric"] == "wer" and keep_wer["higher_is_better"] is False and keep_wer["n"] == 160
    assert keep_wer["base"] < 0.15 and keep_wer["tuned"] > 0.8, keep_wer
    # every word right before, every word wrong after: each resample gives the same drop, and WER (a
    # ratio of unbounded counts) has no exact rule for that case, so the honest verdict is INCONCLUSIVE
    # (which fails the test by default); CER below moves between utterances and FAILs
    assert keep_wer["verdict"] in ("fail", "inconclusive"), keep_wer
    if keep_wer["verdict"] == "inconclusive":
        assert "no spread" in keep_wer["reason"] or "standard error" in keep_wer["reason"], keep_wer
    assert keep_wer["drop"] == pytest.approx(keep_wer["tuned"] - keep_wer["base"])
    assert keep_cer["verdict"] == "fail" and keep_cer["ci_low"] > 0.05, keep_cer
    assert learn["verdict"] == "pass" and learn["base"] - learn["tuned"] > 0.3, learn
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*tones*wer*"])
