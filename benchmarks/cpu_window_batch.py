"""Seconds per sliding window on a CPU by forward batch size: why windows and flips go in pairs.

PyTorch runs a batch of one through a thin 3D network (the CPU plans' 8 base features) with its
slow im2col convolution (``slow_conv3d``) instead of oneDNN. Prints the median time per window of
the demo's CPU plan network (patch 28 x 80 x 80, features 8..80, random weights) at each batch size.

    python benchmarks/cpu_window_batch.py [--batches 1 2 4 8] [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autoseg.networks.builder import build_network
from autoseg.planners.plans import NetworkTopology


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=8)
    a = p.parse_args()
    topo = NetworkTopology(n_stages=5, features_per_stage=[8, 16, 32, 64, 80], kernel_sizes=[[3, 3, 3]] * 5,
                           strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
                           n_conv_per_stage_encoder=[2] * 5, n_conv_per_stage_decoder=[2] * 4)
    net = build_network("unet", topo, 1, 3, deep_supervision=False).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, patch 28x80x80, features 8..80")
    for b in a.batches:
        x = torch.randn(b, 1, 28, 80, 80)
        times = []
        with torch.inference_mode():
            net(x), net(x)  # warm-up: oneDNN primitives are built on first use
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                net(x)
                times.append((time.perf_counter() - t0) / b)
        print(f"batch {b}: {statistics.median(times):.3f} s per window")


if __name__ == "__main__":
    main()
