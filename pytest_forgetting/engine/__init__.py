"""The engine behind :class:`~pytest_forgetting.session.ForgettingSession`, one module per stage.

A check runs as a pipeline (``ForgettingSession._run_check``):

1. **load** (:mod:`.models`): the two checkpoints' slots, fingerprints, loading and placement, the
   refusals remembered per slot (load errors, NaN/Inf weights, incompatible label maps or vocabularies);
2. **prepare and run** (:mod:`.evaluation`): inputs prepared once per task and tokenizer, each
   model evaluated (base and tuned evaluations cached on disk, CUDA out of memory backed off),
   the tuned outputs aligned to the base's by example id;
3. **decide** (:mod:`.decision`): pure: check, task, metric and the two evaluations -> the
   comparison and the row (fixed-n, or sequential with ``--forgetting-early-stop``).

Every cache key (evaluations and prepared inputs) is built in :mod:`.keys`.
"""
