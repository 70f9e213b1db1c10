"""Session-scoped fixtures (so they work under ``@hypothesis.given``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .state import state

if TYPE_CHECKING:
    from .api import Forgetting


@pytest.fixture(scope="session")
def forgetting(request: pytest.FixtureRequest) -> Forgetting:
    """compare / assert_retains / assert_improves against the configured checkpoints."""
    from .api import Forgetting

    return Forgetting(state(request.config))


def _fixture_error(exc: Exception) -> None:
    __tracebackhide__ = True
    from .escape import terminal  # file and tensor names in the message: one visible line

    pytest.fail(terminal(exc), pytrace=False)


@pytest.fixture(scope="session")
def base_model(request: pytest.FixtureRequest) -> Any:
    """The base checkpoint's nn.Module: loaded once, lazily, on the chosen device, in eval mode."""
    from .errors import ForgettingError

    sess = state(request.config).session
    try:
        return sess.load(sess.base_slot()).model
    except ForgettingError as exc:
        _fixture_error(exc)


@pytest.fixture(scope="session")
def _forgetting_candidate(request: pytest.FixtureRequest) -> str | None:
    """The tuned candidate of this test (parametrised when several --tuned-ckpt are given)."""
    return getattr(request, "param", None)


@pytest.fixture(scope="session")
def tuned_model(request: pytest.FixtureRequest, _forgetting_candidate: str | None) -> Any:
    """The tuned checkpoint's nn.Module (one per candidate): loaded once, lazily, on the chosen device, in eval mode."""
    from .errors import ForgettingError
    from .session import TunedRegression

    sess = state(request.config).session
    try:
        return sess.load(sess.tuned_slot(_forgetting_candidate)).model
    except (ForgettingError, TunedRegression) as exc:
        _fixture_error(exc)


@pytest.fixture(scope="session")
def finetune(request: pytest.FixtureRequest) -> Any:
    """finetune(model=None, train=..., strategy="full", lr=..., epochs=..., seed=0, **options) -> nn.Module.

    A deterministic short fine-tune of (a copy of) the base checkpoint; see pytest_forgetting.finetune.
    """
    from .finetune import fixture

    return fixture(request.config)
