import pytest


@pytest.fixture(scope="session")
def open_model():
    """The open face model (built once per machine and cached; about 10 s the first time)."""
    import facelib

    return facelib.load_model("open")


@pytest.fixture(scope="module")
def one_thread():
    """One PyTorch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the
    fit's small tensor ops gain nothing from two, and two OpenMP threads spinning against other jobs on
    a shared 2-core CPU made them several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
