"""The engine tier: torch and the plugin's heavy modules are imported once, before any pytester in-process run."""

import _helpers.heavy  # noqa: F401
