"""The example's two test sets: folders of WAV files with a transcripts.tsv, written by build_checkpoints.py."""

from pathlib import Path

import pytest_forgetting as pf

DATA = Path(__file__).resolve().parent / "data"


@pf.task("digits-voice-a")
def voice_a():
    """200 held-out digit strings in the voice the base was trained on (en-us)."""
    return pf.SpeechRecognitionTask.from_folder(DATA / "voice-a-test")


@pf.task("digits-voice-b")
def voice_b():
    """200 held-out digit strings in the new voice (Scottish English, female variant, slower)."""
    return pf.SpeechRecognitionTask.from_folder(DATA / "voice-b-test")
