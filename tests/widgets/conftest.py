"""Headless widget tests: widgets construct without a kernel (ipywidgets uses a dummy comm)."""
import pytest

from widget_helpers import FakeMagics, frontend_update


@pytest.fixture
def magics():
    return FakeMagics()


@pytest.fixture
def update():
    return frontend_update
