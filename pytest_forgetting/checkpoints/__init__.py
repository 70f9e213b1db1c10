"""Loading the base and the fine-tuned checkpoint, safely.

Checkpoints arrive in pull requests, so every file this module reads is untrusted input.
The rules, in the order they are applied:

* Nothing here ever unpickles with ``weights_only=False``. Pickle formats (``.bin``, ``.pt``,
  ``.pth``, ``.ckpt``, ``.pkl``) are refused unless the user opts in, and even then they go
  through ``torch.load(..., weights_only=True)`` only.
* A checkpoint that carries Python code (``auto_map`` in its config, any ``*.py`` file, an
  ``attn_implementation`` naming a hub kernel) is refused unless the user says they trust its
  author; models are loaded with an explicit built-in attention implementation.
* Files are checked before a third-party loader sees them: each must resolve inside the
  checkpoint folder (or, for a Hugging Face cache snapshot, its repository's ``blobs``), never
  into /proc, /sys or /dev, be a regular file (a FIFO would hang the reader) of a plausible
  size (configs 4 MiB, tokenizer files 128 MiB, others 256 MiB), and not a Git LFS pointer; small files are
  read at most cap + 1 bytes; safetensors and GGUF headers are validated by hand; JSON is
  parsed with its errors caught.
* Loaders never read the checkpoint itself: they get private copies, taken once from one
  open file each and fstat-checked (``staging.Stage``), so a link cannot lead them out of the folder
  and a file rewritten while memory-mapped cannot kill the process with SIGBUS.
* Model sizes are checked before anything is allocated, for every loader: a config (or GGUF
  metadata, or PEFT adapter config) must describe exactly what the weight files hold (a meta
  device build against the tensors in the headers); a factory's module against the header.
* Messages quote file contents only as short, escaped excerpts (tokens, labels, tensor names).
* Loading is strict: a missing, unexpected or mis-shaped weight is an error, never a randomly
  initialised layer evaluated as if it had been trained.
* Every problem is a one-line :class:`~pytest_forgetting.errors.CheckpointError`.

torch, transformers, safetensors and peft are imported inside the functions that need them:
pytest imports the plugin in every run of every project.

Where things are:

* ``load.py``: ``load_checkpoint`` (the steps above, in order) and ``load_metadata``;
* ``refs.py``: a reference -> an existing path or a hub snapshot, and which kind of checkpoint
  it is (``records.Target``: what will be read and fingerprinted);
* ``safety.py``: the checks of files, sizes, JSON, configs, remote code and pickles;
  ``headers.py``: safetensors / GGUF headers by hand; ``staging.py``: the private copies;
* ``loaders/``: one module per format behind the ``Loader`` protocol, chosen in
  ``loaders/__init__.py`` (``hf.py`` loads a Hugging Face folder, ``peft.py`` an adapter,
  ``gguf.py`` a GGUF file, ``state_dict.py`` bare weights into a ``--model-factory`` module);
* ``fingerprint.py``: ``fingerprint_ref`` and the ``FileDigests`` store it is given;
* ``compat.py``: ``check_compatible`` and the placeholder-label rule; ``factory.py``:
  ``--model-factory``; ``records.py``: ``LoadedCheckpoint`` and ``Target``.
"""

from __future__ import annotations

from .compat import check_compatible
from .factory import resolve_factory
from .fingerprint import FileDigests, fingerprint_ref  # noqa: F401
from .load import load_checkpoint, load_metadata, nonfinite_params  # noqa: F401
from .loaders.hf import DEVICE_MAP_NEEDS_HF_FOLDER  # noqa: F401
from .records import KINDS, PICKLE_SUFFIXES, LoadedCheckpoint, Ref  # noqa: F401

# private names other modules and tests reach through this package
from .refs import _locate  # noqa: F401  (mismatch.py: does a reference exist)
from .safety import _attn_kwarg, _unknown_attn_implementations  # noqa: F401  (tests/hostile)

# FileDigests, load_metadata, DEVICE_MAP_NEEDS_HF_FOLDER, PICKLE_SUFFIXES and Ref are public too
# (session.py, cache.py, tests), outside __all__ as they always were
__all__ = [
    "KINDS",
    "LoadedCheckpoint",
    "check_compatible",
    "fingerprint_ref",
    "load_checkpoint",
    "nonfinite_params",
    "resolve_factory",
]
