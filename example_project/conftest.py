"""pytest configuration of the example model repo.

Property tests explore a fixed, seeded sequence of examples: a pre-merge gate must not turn red
by chance, nor stay red because one unlucky draw was saved in ``.hypothesis/`` and replayed first
in every later run. The ``ci`` profile (the default here) derandomises Hypothesis and keeps no
example database; ``HYPOTHESIS_PROFILE=explore`` searches with fresh randomness and remembers its
failures, for a local hunt.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
