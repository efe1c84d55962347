"""Can one batch teach the tumour? Overfit the demo's CPU-plan network on two tumour-centred patches.

Draws one batch of two 28 x 80 x 80 patches centred on the tumour from preprocessed demo data
(``autoseg synthetic -d Liver -n 16 --num-test 4 --size demo``, ``plan_and_preprocess -c
3d_fullres --target cpu``), trains on it alone for ``--steps`` SGD steps (nnU-Net's 0.01,
momentum 0.99) with Dice + CE (optionally CE class weights) and prints every 10 steps the mean
tumour probability inside the tumour, the liver and the background, and how many voxels argmax
calls tumour. docs/benchmarks.md, "What was tried for the tumour".

    python benchmarks/tumour_overfit.py --data PRE/Dataset001_Liver/autosegPlans_3d_fullres [--class-weights 1 1 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from autoseg.networks.builder import build_network
from autoseg.planners.plans import NetworkTopology
from autoseg.trainers.augmentation import build_val_transforms, deep_supervision_scales
from autoseg.trainers.losses import build_loss
from autoseg.trainers.sampling import PatchSampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="preprocessed 3d_fullres folder of the demo data")
    p.add_argument("--cases", nargs="+", default=["liver_000", "liver_006"])
    p.add_argument("--class-weights", type=float, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args()
    torch.manual_seed(0)
    topo = NetworkTopology(n_stages=5, features_per_stage=[8, 16, 32, 64, 80], kernel_sizes=[[3, 3, 3]] * 5,
                           strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
                           n_conv_per_stage_encoder=[2] * 5, n_conv_per_stage_decoder=[2] * 4)
    sampler = PatchSampler(a.data, a.cases, [28, 80, 80], 2, 1.0, seed=1, rare_class_bias=1.0)
    batch = build_val_transforms(deep_supervision_scales(topo.strides, 4))(**sampler.next_batch())
    x, y = batch["data"], batch["target"]
    print(f"tumour voxels in the batch {(y[0] == 2).sum().item()}, liver {(y[0] == 1).sum().item()}")
    net = build_network("unet", topo, 1, 3, deep_supervision=True)
    loss_fn = build_loss("dice_ce", 3, True, a.class_weights, n_ds_outputs=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    for step in range(1, a.steps + 1):
        out = net(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        opt.step()
        if step % 10 == 0:
            with torch.no_grad():
                prob, ref = torch.softmax(out[0], 1), y[0][:, 0]
                pt = prob[:, 2]
                print(f"step {step}: loss {loss.item():.3f}  p(tumour) in tumour {pt[ref == 2].mean():.3f}, "
                      f"liver {pt[ref == 1].mean():.3f}, background {pt[ref == 0].mean():.3f}; "
                      f"argmax tumour voxels {(prob.argmax(1) == 2).sum().item()}", flush=True)


if __name__ == "__main__":
    main()
