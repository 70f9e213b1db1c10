"""What fine-tuning the recogniser on a new voice must keep, and what it must gain."""

import pytest


@pytest.mark.retains(task="digits-voice-a", max_drop=0.05)
def test_keeps_first_voice_wer():
    """Word error rate on the original voice may rise by at most 5 points."""


@pytest.mark.retains(task="digits-voice-a", metric="cer", max_drop=0.03)
def test_keeps_first_voice_cer():
    """Character error rate on the original voice may rise by at most 3 points."""


@pytest.mark.improves(task="digits-voice-b", min_gain=0.10)
def test_learns_new_voice():
    """The point of the fine-tune: word error rate on the new voice at least 10 points lower."""
