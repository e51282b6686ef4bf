"""Benchmark: the multi-level autoencoder's encoder (image -> semantic code), Tewari et al. 2018's
"over 250 Hz" (a forward pass under 4 ms at batch 1 on a GPU, supplement Sec. 2).

Run: ``.venv/bin/python benchmarks/bench_encoder.py [--device cpu|cuda] [--size 240] [--width 1.0]``;
prints JSON and writes ``benchmarks/results/encoder_<device>.json``: images per second (Hz) at batch 1
and batch 32 for the AlexNet encoder at the paper's size (240 px, width 1, C = 500 correctives) and for
the encoder the book's cpu profile trains (``--threads 1`` for a CPU shared with other jobs).  The decoder is not part of the timing: it is not needed at test time.
"""

import argparse
import json
import platform
from pathlib import Path

import torch

import facelib
from facelib.book import settings
from facelib.mofa import MoFA, encoder_hz
from facelib.mofa.multilevel import decimate


def run(device: str, size: int, width: float, n_corrective: int, encoder: str = "alexnet", repeats: int = 10,
        encoder_kwargs: dict | None = None) -> dict:
    full = facelib.load_model("open")
    model, _ = decimate(full, 1000)  # the decoder does not enter the timing; a small one builds fast
    net = MoFA(model, size, encoder, width=width, n_corrective=n_corrective, encoder_kwargs=encoder_kwargs)
    out = {"encoder": encoder, "size": size, "width": width, "n_corrective": n_corrective, "code": net.layout.size,
           "device": device}
    for b in (1, 32):
        out[f"hz_b{b}"] = round(encoder_hz(net, b, size, device, repeats=repeats if b == 1 else max(2, repeats // 4)), 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--corrective", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    book = {**settings("05_mofa", "cpu"), **settings("06_correctives", "cpu")}
    res = {"paper": run(args.device, args.size, args.width, args.corrective),
           "book_cpu_profile": run(args.device, book["size"], book["width"], book["C"], book["encoder"],
                                   encoder_kwargs=book["encoder_kwargs"]),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine()}
    print(json.dumps(res, indent=1))
    path = Path(__file__).parent / "results" / f"encoder_{args.device.split(':')[0]}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
