"""Importable helpers of the test suite (tests/ is on sys.path through tests/conftest.py).

- ``_helpers.project``: the tiny linear model project of the pytester tests (``K``, ``TINY_MODELS``, ``CONFTEST``,
  ``linear_weights``, ``save_weights``, ``Project``); torch is imported only inside the functions that need it.
- ``_helpers.heavy``: imports torch and the other heavy libraries once and keeps them across pytester's in-process
  runs; imported by the conftest of every tier but tests/unit.
- ``_helpers.checkpoint_models``: tiny BERT checkpoints, tokenizers and adapters (imports torch and transformers).
"""
