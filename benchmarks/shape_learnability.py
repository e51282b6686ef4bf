"""Is the face's shape visible in a 64-pixel crop, and what makes it slow to learn? (issue 15)

Trains the ``cpu`` profile's ResNet (batch norm, Adam 1e-3, batch 32, fresh renders every step) to
regress the shape coefficients 2..128 alone (coefficient 1, the head size, is hidden by the Sec. 6.1
crop and held at 0) while more and more of the Sec. 5 factors vary:

* ``shape only``: pose, expression, reflectance 0, one fixed monochrome light;
* ``+ pose``: the Sec. 5 head rotation, U(-40, 40) / U(-15, 15) degrees;
* ``+ pose, curriculum``: the same, the rotation ranges grown from 0 to full over the first half;
* ``Sec. 5``: every factor drawn from the Sec. 5 prior (what the book's networks face);
* ``Sec. 5, curriculum``: the same, rotation and expression (around the mouth bias) grown from 0 to
  their full ranges over the first half.

and prints / saves the held-out R^2 of shape coefficients 2..11 (256 faces of the same distribution)
against training steps and seconds, for each seed.

``--variants`` changes the network or its targets (in any mode), to test what might let it see the shape
through the pose:

* ``resnet``: the cpu profile's ResNet as above (global average pool);
* ``4x4 pooled map``: the fc layer reads a 4 x 4 pooled map instead of the global average, so it knows
  where in the crop each feature is;
* ``+ pixel coordinates``: two input channels with the pixel's x and y (CoordConv), the same for the
  same reason;
* ``+ rotation target``: the three head angles regressed as well (in units of 0.4 rad, added to the
  loss), so the network must find the pose it has to see through.

    .venv/bin/python benchmarks/shape_learnability.py [--iters 2000] [--seeds 0] [--modes M] [--variants V]
        -> benchmarks/results/shape_learnability.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import facelib  # noqa: E402
import facelib.inversefacenet as ifn  # noqa: E402
from facelib._atomic import atomic_write_bytes  # noqa: E402
from facelib.book import settings  # noqa: E402
from facelib.data.corpus import render_crops  # noqa: E402
from facelib.model.params import ParamLayout, sample_sec5  # noqa: E402
from facelib.nets import unwrap  # noqa: E402
from facelib.repro import environment  # noqa: E402

MODES = ("shape only", "+ pose", "+ pose, curriculum", "Sec. 5", "Sec. 5, curriculum")
VARIANTS = ("resnet", "4x4 pooled map", "+ pixel coordinates", "+ rotation target")
K = 10  # shape coefficients 2..K+1 are scored


def draw(model, mode: str, n: int, seed: int, frac: float = 1.0) -> torch.Tensor:
    """``(n, m)`` parameters of ``mode`` (see the module docstring); ``frac`` scales the rotation (and,
    for ``Sec. 5, curriculum``, the expression around the mouth bias)."""
    L = ParamLayout.from_model(model)
    th = sample_sec5(model, n, seed=seed).float()
    if mode.startswith("Sec. 5") and frac != 1.0:
        th[:, L["rotation"]] *= frac
        e = th[:, L["expression"]]
        e[:, model.mouth_component] -= model.mouth_bias
        e *= frac
        e[:, model.mouth_component] += model.mouth_bias
    elif not mode.startswith("Sec. 5"):
        fixed = sample_sec5(model, 1, seed=12_345).float().expand(n, -1).clone()  # one light for all
        for g in ("rotation", "expression", "reflectance"):
            fixed[:, L[g]] = 0
        if mode != "shape only":
            fixed[:, L["rotation"]] = th[:, L["rotation"]] * frac
        fixed[:, L["shape"]] = th[:, L["shape"]]
        th = fixed
    th[:, L["shape"].start] = 0  # the head size: invisible after the landmark crop
    return th


def crops(model, theta, size):
    return (render_crops(model, theta, size)["crop"] * 255).round().to(torch.uint8)


def make_net(model, variant: str, seed: int, size: int) -> nn.Module:
    """The cpu profile's ResNet regressor (initialised from ``seed``), changed as ``variant`` says."""
    cfg = dict(settings("inversefacenet", "cpu"), size=size, norm="batch", dropout=0.0, landmarks=False)  # pixels only
    net = ifn.make_regressor(model, cfg, "resnet", seed)
    inner = unwrap(net)  # inside facelib.nets.Standardized
    torch.manual_seed(seed + 99)  # the variant's new layers
    if variant == "4x4 pooled map":
        inner.features[-1] = nn.AdaptiveAvgPool2d(4)
        last = nn.Linear(inner.last.in_features * 16, inner.last.out_features)
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
        inner.last = last
    elif variant == "+ pixel coordinates":
        stem = inner.features[0]
        inner.features[0] = nn.Conv2d(5, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)

        def forward(x, inner=inner):
            B, _, H, W = x.shape
            ys = torch.linspace(-0.5, 0.5, H).view(1, 1, H, 1).expand(B, 1, H, W)
            xs = torch.linspace(-0.5, 0.5, W).view(1, 1, 1, W).expand(B, 1, H, W)
            return inner.last(inner.features(torch.cat([x, xs, ys], 1)).flatten(1))
        inner.forward = forward
    elif variant not in ("resnet", "+ rotation target"):
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return net


def run(model, mode: str, iters: int, seed: int, size: int, points: int = 8, variant: str = "resnet") -> dict:
    L = ParamLayout.from_model(model)
    sh, rot = L["shape"], L["rotation"]
    net = make_net(model, variant, seed, size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    test_th = draw(model, mode, 256, 10**6 + seed)
    test_x = crops(model, test_th, size)
    t_true = test_th[:, sh.start + 1:sh.start + 1 + K]
    curve, spent = [], 0.0
    for i in range(iters):
        t0 = time.perf_counter()
        frac = min(1.0, i / (0.5 * iters)) if mode.endswith("curriculum") else 1.0
        th = draw(model, mode, 32, seed * 1_000_003 + i, frac)
        net.train()
        p = net(ifn.to_network(crops(model, th, size)))
        loss = (p[:, sh.start + 1:sh.stop] - th[:, sh.start + 1:sh.stop]).square().mean()
        if variant == "+ rotation target":
            loss = loss + ((p[:, rot] - th[:, rot]) / 0.4).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        spent += time.perf_counter() - t0
        if (i + 1) % max(1, iters // points) == 0 or i + 1 == iters:
            pred = ifn.predict(net, test_x)[:, sh.start + 1:sh.start + 1 + K]
            r2 = 1 - (pred - t_true).square().mean(0) / t_true.var(0)
            curve.append({"step": i + 1, "train_s": round(spent, 1), "r2_mean": round(float(r2.mean()), 3),
                          "r2": [round(float(v), 2) for v in r2]})
            print(f"{mode:20s} {variant:20s} seed {seed} step {i + 1:5d} {spent:6.0f} s  mean R^2 {float(r2.mean()):.2f}",
                  flush=True)
    return {"mode": mode, "variant": variant, "seed": seed, "curve": curve}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--variants", nargs="+", default=["resnet"], choices=VARIANTS)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "shape_learnability.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("FACELIB_THREADS", "2")))
    model = facelib.load_model("open")
    runs = [run(model, mode, args.iters, seed, args.size, variant=v)
            for seed in args.seeds for mode in args.modes for v in args.variants]
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    key = lambda r: (r["mode"], r.get("variant", "resnet"), r["seed"])  # noqa: E731
    if old.get("iters") == args.iters and old.get("size") == args.size:  # keep the other runs
        done = {key(r) for r in runs}
        runs = [r for r in old["runs"] if key(r) not in done] + runs
    runs.sort(key=lambda r: (MODES.index(r["mode"]), VARIANTS.index(r.get("variant", "resnet")), r["seed"]))
    out = {"iters": args.iters, "size": args.size, "scored": f"shape coefficients 2..{K + 1}", "net": "resnet (cpu profile)",
           "command": "python benchmarks/shape_learnability.py --iters N --seeds S [--modes M] [--variants V]",
           "environment": environment(), "runs": runs}
    atomic_write_bytes(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
