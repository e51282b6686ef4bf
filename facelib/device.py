"""Devices: one place that turns ``device="auto"`` into a ``torch.device``."""

import torch


def pick_device(device="auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is present, else ``cpu``; anything else is passed to torch.

    ValueError for a string torch does not know as a device, and for ``cuda`` without a usable GPU
    (a CPU-only torch build, or no device visible)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device; expected 'auto', 'cpu', 'cuda' or "
                         f"'cuda:N' ({type(e).__name__} from torch)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {device!r} asked for, but {why} (torch {torch.__version__}); "
                         "use device 'cpu' or 'auto'")
    return dev
