"""The engine behind :class:`~pytest_forgetting.session.ForgettingSession`, one module per stage.

Every cache key (evaluations and prepared inputs) is built in :mod:`.keys`.
"""
