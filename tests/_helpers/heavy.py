"""Heavy imports, once per process, for the tiers whose tests run pytester in-process or drive torch.

pytester's in-process runs restore sys.modules afterwards; torch cannot be imported twice in one process, so the
heavy libraries are imported once here, before any inner run, and ``keep_heavy_modules`` keeps them (and every
installed library) in sys.modules across inner runs. Importing this module applies the patch.
"""

from __future__ import annotations

import numpy  # noqa: F401
import safetensors.torch  # noqa: F401
import scipy.stats  # noqa: F401
import torch  # noqa: F401

# the same holds for the plugin's own modules: classes must stay identical across inner runs
import pytest_forgetting.api  # noqa: F401
import pytest_forgetting.checkpoints  # noqa: F401
import pytest_forgetting.session  # noqa: F401
import pytest_forgetting.tasks  # noqa: F401
from _helpers.pytester_modules import keep_heavy_modules

keep_heavy_modules()
