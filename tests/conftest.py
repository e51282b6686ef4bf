import pytest


@pytest.fixture(scope="session")
def open_model():
    """The open face model (built once per machine and cached; about 10 s the first time)."""
    import facelib

    return facelib.load_model("open")
