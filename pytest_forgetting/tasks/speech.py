"""Speech recognition with CTC models (e.g. ``Wav2Vec2ForCTC``): word and character error rates.

Per utterance the task records the edit distance between the greedy CTC transcript and the
reference, in words and in characters, and the reference's length. ``wer`` and ``cer`` pool
those over utterances (total edits / total reference units, the usual corpus-level rates),
so the paired bootstrap over utterances gives their intervals. Lower is better.

Audio is mono float32 at 16 kHz (other rates are resampled when the task is built),
normalised per utterance to zero mean and unit variance as the Wav2Vec2 feature extractor
does. Whether the model gets an attention mask follows the rule of that feature extractor:
only for models whose config says ``feat_extract_norm == "layer"``; the others get zero
padding, exactly as in their training, and both models always see the same batches.
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TaskError
from ..metrics import SPEECH_METRICS
from .base import ModelMeta, _build_splits, _paired_split, _SplitTask
from .batching import Ragged, trimmed_batches
from .classification import logits_of

SAMPLING_RATE = 16_000


# -- error rates -----------------------------------------------------------------------------


def edit_distance(ref: Sequence[Any], hyp: Sequence[Any]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences.

    Strings (characters) or lists of hashable items (words). Computed by ``rapidfuzz`` (the engine
    of jiwer) when it is installed (``pip install pytest-forgetting[speech]``), else in Python;
    the counts are the same.
    """
    fast = _fast_levenshtein()
    if fast is not None:
        return int(fast(ref, hyp))
    return python_edit_distance(ref, hyp)


@functools.cache
def _fast_levenshtein() -> Any:
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:
        return None
    return Levenshtein.distance


def python_edit_distance(ref: Sequence[Any], hyp: Sequence[Any]) -> int:
    """The same distance in pure Python (O(len(ref) x len(hyp)); the fallback without rapidfuzz)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


_KEEP = re.compile(r"[^\w\s']")


def normalize_transcript(text: str) -> str:
    """Case-folded, punctuation (but apostrophes) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("_", " ")
    return " ".join(_KEEP.sub(" ", text).split())


def error_counts(reference: str, hypothesis: str) -> tuple[int, int, int, int]:
    """(word edits, reference words, character edits, reference characters), after normalisation."""
    ref, hyp = normalize_transcript(reference), normalize_transcript(hypothesis)
    ref_words, hyp_words = ref.split(), hyp.split()
    return edit_distance(ref_words, hyp_words), len(ref_words), edit_distance(ref, hyp), len(ref)


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate (a reference implementation, also used by the tests)."""
    counts = [error_counts(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(c[0] for c in counts) / max(1, sum(c[1] for c in counts))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate."""
    counts = [error_counts(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(c[2] for c in counts) / max(1, sum(c[3] for c in counts))


# -- audio -----------------------------------------------------------------------------------


def resample(audio: np.ndarray, from_rate: int, to_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Polyphase resampling (scipy), float32 out."""
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate:
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(from_rate), int(to_rate))
    return resample_poly(audio, to_rate // g, from_rate // g).astype(np.float32)


def _as_float_audio(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == 2:  # (samples, channels) -> mono
        data = data.mean(axis=1)
    if data.ndim != 1:
        raise TaskError(f"audio must be one-dimensional (mono samples), got shape {data.shape}")
    if data.dtype.kind == "i":
        return (data.astype(np.float32) / float(np.iinfo(data.dtype).max)).astype(np.float32)
    if data.dtype.kind == "u":  # 8-bit WAV is unsigned
        info = np.iinfo(data.dtype)
        return ((data.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)).astype(np.float32)
    return data.astype(np.float32)


def read_wav(source: str | Path | bytes, rate: int = SAMPLING_RATE) -> np.ndarray:
    """A WAV file (path or bytes) as mono float32 at ``rate``."""
    from scipy.io import wavfile

    try:
        sr, data = wavfile.read(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (OSError, ValueError) as exc:
        where = "WAV bytes" if isinstance(source, bytes) else str(source)
        raise TaskError(f"cannot read {where}: {exc}") from None
    return resample(_as_float_audio(data), sr, rate)


def synthesize_espeak(
    text: str, *, voice: str = "en-us", rate: int = 160, pitch: int = 50, sampling_rate: int = SAMPLING_RATE
) -> np.ndarray:
    """Speak ``text`` with the ``espeak-ng`` program (Debian package espeak-ng): mono float32 at ``sampling_rate``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TaskError("synthesising speech needs the espeak-ng program: apt-get install espeak-ng")
    known = _espeak_voices(exe)
    if known and voice.split("+")[0].lower() not in known:
        # espeak-ng silently falls back to its default voice; a typo would change the data unnoticed
        raise TaskError(f"espeak-ng has no voice {voice!r}; see `espeak-ng --voices` (e.g. en-us, en-gb, en-us+f3)")
    try:
        proc = subprocess.run(
            [exe, "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", "--", text],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TaskError(f"espeak-ng failed on {text[:40]!r}: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        raise TaskError(
            f"espeak-ng (voice {voice!r}) failed on {text[:40]!r}: {proc.stderr.decode(errors='replace').strip()}"
        )
    return _read_streamed_wav(proc.stdout, sampling_rate)


@functools.lru_cache(maxsize=2)
def _espeak_voices(exe: str) -> frozenset[str]:
    """Languages, voice names and voice files that ``espeak-ng --voices`` lists (lower case)."""
    try:
        proc = subprocess.run([exe, "--voices"], capture_output=True, timeout=30, check=False, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    names: set[str] = set()
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update(c.lower() for c in (cols[1], cols[3], cols[4], cols[4].rsplit("/", 1)[-1]))
    return frozenset(names)


def _read_streamed_wav(data: bytes, rate: int) -> np.ndarray:
    """WAV bytes written to a pipe: the size fields may be placeholders, so read the data chunk to the end."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TaskError("espeak-ng did not write a WAV stream")
    pos, sr, bits, channels = 12, None, None, 1
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if cid == b"fmt ":
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            sr = int.from_bytes(data[body + 4 : body + 8], "little")
            bits = int.from_bytes(data[body + 14 : body + 16], "little")
        elif cid == b"data":
            if sr is None or bits != 16:
                raise TaskError(f"unsupported WAV stream (rate {sr}, {bits} bits)")
            raw = data[body:]
            raw = raw[: len(raw) - len(raw) % (2 * channels)]
            samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
            return resample(_as_float_audio(samples if channels > 1 else samples[:, 0]), sr, rate)
        pos = body + size + (size & 1)
    raise TaskError("WAV stream has no data chunk")


# -- the task ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CTCContext:
    tokenizer: Any
    use_mask: bool


class SpeechRecognitionTask(_SplitTask):
    """Utterances (mono audio) with reference transcripts, for CTC models; ``wer`` (default) and ``cer``.

    ``audio[i]`` is a 1-D array (float in [-1, 1] or integer PCM) at ``sampling_rate``; it is
    resampled to 16 kHz. The tokenizer (the CTC vocabulary, e.g. ``Wav2Vec2CTCTokenizer``)
    comes from the checkpoint; the blank is the model's ``config.pad_token_id`` (else the
    tokenizer's pad token), and the tokenizer's word delimiter (``|``) becomes a space.
    Transcripts and hypotheses are compared after ``normalize_transcript``.
    """

    metrics = SPEECH_METRICS
    default_metric = "wer"

    def __init__(
        self,
        audio: Sequence[Any] | None = None,
        transcripts: Sequence[str] | None = None,
        ids: Sequence[Any] | None = None,
        *,
        sampling_rate: int = SAMPLING_RATE,
        normalize_audio: bool = True,
        splits: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        super().__init__()
        if splits is None:
            splits = _paired_split("SpeechRecognitionTask", audio, transcripts, ids, columns,
                                   needs="audio and transcripts", counts=("utterances", "transcripts"))  # fmt: skip
        self.normalize_audio = bool(normalize_audio)
        for name, (split_ids, items, cols) in _build_splits(splits, "SpeechRecognitionTask").items():
            waves, texts = [], []
            for uid, item in zip(split_ids.tolist(), items):
                try:
                    wave, text = item
                except (TypeError, ValueError):
                    raise TaskError(
                        f"SpeechRecognitionTask split {name!r}: expected (audio, transcript) pairs"
                    ) from None
                wave = resample(_as_float_audio(wave), sampling_rate)
                if len(wave) < 400:  # 25 ms: shorter than the first convolutions' receptive field
                    raise TaskError(
                        f"SpeechRecognitionTask split {name!r}: utterance {uid!r} has only {len(wave)} samples"
                    )
                if not np.isfinite(wave).all():
                    raise TaskError(f"SpeechRecognitionTask split {name!r}: utterance {uid!r} contains NaN/Inf")
                if not normalize_transcript(str(text)):
                    raise TaskError(f"SpeechRecognitionTask split {name!r}: utterance {uid!r} has an empty transcript")
                waves.append(wave)
                texts.append(str(text))
            self._add_split(name, split_ids, cols, audio=waves, transcripts=texts)

    @classmethod
    def from_folder(cls, folder: str | Path, *, transcripts: str = "transcripts.tsv") -> SpeechRecognitionTask:
        """WAV files of a folder with their transcripts: ``transcripts.tsv`` (``file<TAB>text`` per line,
        the file name with or without ``.wav``), else a ``.txt`` beside each ``.wav``. Ids are the file stems."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TaskError(f"{folder} is not a folder of WAV files")
        table = folder / transcripts
        pairs: list[tuple[str, str]] = []
        if table.is_file():
            for lineno, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                name, sep, text = line.partition("\t")
                if not sep:
                    raise TaskError(f"{table}:{lineno}: expected 'file<TAB>transcript'")
                pairs.append((name.strip().removesuffix(".wav"), text.strip()))
        else:
            for wav in sorted(folder.glob("*.wav")):
                txt = wav.with_suffix(".txt")
                if not txt.is_file():
                    raise TaskError(f"{wav} has no transcript: add {txt.name} or a {transcripts} table")
                pairs.append((wav.stem, txt.read_text(encoding="utf-8").strip()))
        if not pairs:
            raise TaskError(f"{folder}: no utterances found")
        audio = []
        for stem, _ in pairs:
            path = folder / f"{stem}.wav"
            if not path.is_file():
                raise TaskError(f"{table}: {path.name} is missing")
            audio.append(read_wav(path))
        return cls(audio, [t for _, t in pairs], [s for s, _ in pairs])

    def audio(self, split: str) -> list[np.ndarray]:
        return self._field(split, "audio")

    def transcripts(self, split: str) -> list[str]:
        return self._field(split, "transcripts")

    def fingerprint_parts(self, split: str) -> Sequence[Any]:
        return self.ids(split), self.normalize_audio, self.audio(split), self.transcripts(split)

    def prepare_key(self, meta: ModelMeta) -> str:
        return f"{meta.tokenizer_fingerprint}:{_wants_mask(meta.config)}"

    def prepare(self, split: str, meta: ModelMeta) -> Any:
        if meta.tokenizer is None:
            raise TaskError(
                f"task {self.name!r} needs the CTC vocabulary: the checkpoint folder has no tokenizer "
                "(save it with Wav2Vec2CTCTokenizer(...).save_pretrained(folder))"
            )
        waves = []
        for wave in self.audio(split):
            if self.normalize_audio:
                wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
            waves.append(np.ascontiguousarray(wave, dtype=np.float32))
        return {
            "waves": waves, "lengths": np.array([len(w) for w in waves], dtype=np.int64),
            "references": self.transcripts(split), "context": _CTCContext(meta.tokenizer, _wants_mask(meta.config)),
        }  # fmt: skip

    def batches(self, prepared: Any, indices: np.ndarray, batch_size: int) -> Iterator[Any]:
        # zero padding per batch (a split's longest utterance would be too much), with the attention mask
        audio = {"input_values": Ragged(prepared["waves"], fill=0.0, dtype=np.float32)}
        for chunk, _, inputs in trimmed_batches(audio, prepared["lengths"], indices, batch_size, mask="attention_mask"):
            references = [prepared["references"][i] for i in chunk.tolist()]
            yield {**inputs, "references": references, "context": prepared["context"]}

    def forward(self, model: Any, batch: Any) -> dict[str, Any]:
        import torch

        ctx: _CTCContext = batch["context"]
        values, mask = batch["input_values"], batch["attention_mask"]
        out = model(input_values=values, attention_mask=mask) if ctx.use_mask else model(input_values=values)
        logits = logits_of(out)
        if logits.ndim != 3 or logits.shape[0] != values.shape[0]:
            raise TaskError(
                f"task {self.name!r} needs a CTC model returning logits (batch, frames, vocab); "
                f"got {tuple(logits.shape)}"
            )
        frames = output_frames(model, mask.sum(dim=1), logits.shape[1])
        valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < frames[:, None]
        finite = (torch.isfinite(logits).all(dim=2) | ~valid).all(dim=1)
        blank = _blank_id(model, ctx.tokenizer)
        hyps = ctc_greedy_decode(logits, frames, ctx.tokenizer, blank)
        counts = torch.tensor(
            [error_counts(r, h) for r, h in zip(batch["references"], hyps)], dtype=torch.long
        ).reshape(-1, 4)
        counts = counts.to(logits.device)
        return {
            "word_errors": counts[:, 0],
            "ref_words": counts[:, 1],
            "char_errors": counts[:, 2],
            "ref_chars": counts[:, 3],
            "finite": finite,
        }

    def transcribe(self, model: Any, split: str, meta: ModelMeta, batch_size: int = 16) -> dict[str, str]:
        """Greedy transcripts of a split by example id (for reading; scoring goes through ``evaluate``)."""
        import torch

        prepared = self.prepare(split, meta)
        ids = self.ids(split)
        hyps: list[str] = []
        with torch.inference_mode():
            for batch in self.batches(prepared, np.arange(len(ids)), batch_size):
                ctx = batch["context"]
                kwargs = {"attention_mask": batch["attention_mask"]} if ctx.use_mask else {}
                logits = logits_of(model(input_values=batch["input_values"], **kwargs))
                frames = output_frames(model, batch["attention_mask"].sum(dim=1), logits.shape[1])
                hyps.extend(ctc_greedy_decode(logits, frames, ctx.tokenizer, _blank_id(model, ctx.tokenizer)))
        return dict(zip(ids.tolist(), hyps))


def output_frames(model: Any, sample_lengths: Any, n_frames: int) -> Any:
    """Valid logit frames per utterance (the model's own length formula when it has one)."""
    import torch

    fn = getattr(model, "_get_feat_extract_output_lengths", None)
    if fn is None:
        return torch.full_like(sample_lengths, n_frames)
    return torch.clamp(fn(sample_lengths).to(sample_lengths.dtype), max=n_frames)


def ctc_greedy_decode(logits: Any, frames: Any, tokenizer: Any, blank_id: int) -> list[str]:
    """Best path: argmax per frame, repeats merged, blanks and special tokens dropped, word delimiter -> space."""
    best = logits.argmax(dim=-1).cpu().numpy()
    lengths = frames.cpu().numpy()
    delimiter = getattr(tokenizer, "word_delimiter_token", None) or "|"
    special = {t for t in getattr(tokenizer, "all_special_tokens", []) if t != delimiter}
    texts = []
    for row, n in zip(best, lengths):
        path = row[: int(n)]
        if len(path):
            keep = np.concatenate([[True], path[1:] != path[:-1]]) & (path != blank_id)
            path = path[keep]
        tokens = [t for t in tokenizer.convert_ids_to_tokens([int(i) for i in path]) if t not in special]
        texts.append(" ".join("".join(tokens).replace(delimiter, " ").split()))
    return texts


def _blank_id(model: Any, tokenizer: Any) -> int:
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise TaskError("cannot tell the CTC blank: neither the model config nor the tokenizer has a pad token id")
    return int(pad)


def _wants_mask(config: Any) -> bool:
    """The Wav2Vec2 feature extractor's rule: an attention mask only for layer-norm feature encoders."""
    if config is None:
        return True
    norm = getattr(config, "feat_extract_norm", None)
    return norm is None or norm == "layer"
