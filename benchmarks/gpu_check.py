"""GPU check: autoseg's CUDA paths on one machine in under 8 minutes, as one table.

    python benchmarks/gpu_check.py [--budget-s 450] [--json gpu_check.json]

Without a CUDA GPU it prints one line saying so and exits 0. On a CUDA machine it checks:

1. **Training speed**: AMP iterations/s (bf16 on compute capability 8.0+, else float16 with a
   GradScaler, as ``autoseg train`` chooses) of the 3d_fullres U-Net that the planner gives a
   LiTS-sized dataset (spacing 1.0 x 0.77 x 0.77 mm, median 432 x 512 x 512, 131 cases, 3 labels:
   patch 128^3, batch 2, 6 stages 32..320), with deep supervision, Dice + CE (batch Dice) and
   SGD, on GPU-resident synthetic batches (the data loader is not part of it). When
   ``dynamic_network_architectures`` (nnU-Net v2's network package) is importable, nnU-Net v2's
   PlainConvUNet for the same plan runs through the same loop as the reference (goal: autoseg
   >= nnU-Net v2).
2. **Prediction** of a synthetic 512 x 512 x 300 CT (0.7 x 0.7 x 1.0 mm) with 1 fold and mirroring
   (8 passes), step 0.5: the sliding window alone on the resampled volume (time, forwards/s,
   peak GPU memory), then ``predict_cases`` from the NIfTI file to the written mask (time, peak
   GPU memory) and the ``autoseg predict`` command in a fresh process (wall time). Goal: < 20 s.
3. **Out-of-memory fallback**: in a child process, a 600 x 512 x 512 volume (a 1.9 GB float32
   accumulator) is predicted once freely, then again under
   ``torch.cuda.set_per_process_memory_fraction`` set to one forward pass plus half the
   accumulator: the run must fall back to a CPU accumulator (warning logged) and give the same
   probabilities.
4. **DDP**: with 2+ GPUs, 2 processes (NCCL, via ``autoseg.trainers.distributed.context``) train
   the same network with 1 patch each (global batch 2, batch Dice gathered over ranks): it/s,
   and the weights must be identical on both ranks afterwards.

Each check reports a row (``ok``, ``MISS`` for a speed goal not met, ``FAIL`` for an error or a wrong
result, ``skip``); the exit status is 1 when a row is ``FAIL``. Checks that would start after
``--budget-s`` seconds are skipped. ``--cpu-smoke`` runs the same code on the CPU with a tiny plan
(the test suite uses it; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

LABELS = {"background": 0, "liver": 1, "tumor": 2}
DATASET = "Dataset901_GpuCheck"
CASE_SPACING_ZYX = (1.0, 0.7, 0.7)
TARGET_PREDICT_S = 20.0
NNUNET_SPEED_RATIO = 0.97  # autoseg it/s at least this fraction of nnU-Net's counts as met (timing noise)


@dataclass
class Row:
    check: str
    result: str
    goal: str = ""
    status: str = "ok"  # ok, MISS, FAIL, skip, info


@dataclass
class Setup:
    """What every check uses: the device, the plan and the sizes (tiny ones for --cpu-smoke)."""

    device: torch.device
    smoke: bool
    cfg: object  # ConfigurationPlan
    case_shape: tuple[int, int, int]  # the synthetic CT, z y x
    oom_shape: tuple[int, int, int]  # the OOM check's (already preprocessed) volume
    train_seconds: float
    warmup: int


def lits_plan(smoke: bool):
    """The 3d_fullres configuration the planner gives a LiTS-sized dataset (tiny for --cpu-smoke)."""
    from autoseg.planners.planner import plan_configuration
    from autoseg.planners.plans import ChannelNormalization

    norm = [ChannelNormalization("ct", mean=99.0, std=39.0, lower=-17.0, upper=201.0)]
    median = [16, 32, 32] if smoke else [432, 512, 512]
    cfg = plan_configuration("3d_fullres", [1.0, 0.77, 0.77], median, float(np.prod(median)) * 131, len(LABELS), 8.0,
                             norm, "gpu_check_3d_fullres", True)
    if smoke:
        cfg.topology.features_per_stage = [max(2, f // 8) for f in cfg.topology.features_per_stage]
        cfg.batch_size = 2
    return cfg


def make_setup(a: argparse.Namespace) -> Setup:
    smoke = a.cpu_smoke
    if smoke:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend (and the smoke run's processes run side by side)
    return Setup(device=torch.device("cpu" if smoke else "cuda"), smoke=smoke, cfg=lits_plan(smoke),
                 case_shape=(16, 40, 40) if smoke else (300, 512, 512),
                 oom_shape=(24, 48, 48) if smoke else (600, 512, 512),
                 train_seconds=0.2 if smoke else a.train_seconds, warmup=1 if smoke else 10)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else 0.0


# -- 0. the machine ------------------------------------------------------------------------------

def check_environment(s: Setup, a: argparse.Namespace) -> list[Row]:
    from autoseg.networks.precision import amp_dtype

    dtype = amp_dtype(s.device.type, "auto")
    amp = {torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler", None: "float32"}[dtype]
    topo = s.cfg.topology
    plan = (f"patch {s.cfg.patch_size}, batch {s.cfg.batch_size}, {topo.n_stages} stages "
            f"{topo.features_per_stage[0]}..{topo.features_per_stage[-1]}, batch Dice {s.cfg.batch_dice}")
    if s.device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        gpu = (f"{p.name}, cc {p.major}.{p.minor}, {p.total_memory / 1024**3:.0f} GiB, {torch.cuda.device_count()} GPU(s); "
               f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        gpu = f"CPU smoke run; torch {torch.__version__}"
    return [Row("machine", gpu, status="info"), Row("AMP chosen", amp, status="info"), Row("LiTS-sized plan", plan, status="info")]


# -- 1. training speed ---------------------------------------------------------------------------

def _nnunet_network(topo, in_ch: int, num_classes: int):
    """nnU-Net v2's PlainConvUNet for the same topology, or None when its package is not installed."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        return None
    return PlainConvUNet(in_ch, topo.n_stages, topo.features_per_stage, torch.nn.Conv3d, topo.kernel_sizes, topo.strides,
                         topo.n_conv_per_stage_encoder, num_classes, topo.n_conv_per_stage_decoder, conv_bias=True,
                         norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def synthetic_batch(batch: int, patch, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random image and a target with a liver-like box and a tumour inside, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *patch, generator=g)
    y = torch.zeros(batch, 1, *patch, dtype=torch.long)
    lo, hi = [p // 4 for p in patch], [3 * p // 4 for p in patch]
    y[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    y[:, :, patch[0] // 2 - 4:patch[0] // 2 + 4, patch[1] // 2 - 4:patch[1] // 2 + 4, patch[2] // 2 - 4:patch[2] // 2 + 4] = 2
    return x.to(device), y.to(device)


def train_iterations_per_s(net: torch.nn.Module, s: Setup, dev: torch.device, batch: int, seconds: float,
                           warmup: int) -> tuple[float, float, float]:
    """(it/s, peak GPU GB, last loss) of autoseg's training step (AMP, deep supervision, Dice+CE, SGD, clipping).

    Under a process group the batch-Dice counts are gathered over the ranks, as ``autoseg train`` does.
    """
    from autoseg.networks.precision import amp_dtype, autocast, enable_cudnn_benchmark, make_grad_scaler
    from autoseg.trainers.augmentation import deep_supervision_scales
    from autoseg.trainers.losses import build_loss, downsample_targets

    cfg = s.cfg
    enable_cudnn_benchmark(dev)
    dtype = amp_dtype(dev.type, "auto" if not s.smoke else "off")
    scaler = make_grad_scaler(dev.type, dtype)
    n_heads = cfg.topology.n_stages - 1
    loss_fn = build_loss("dice_ce", len(LABELS), cfg.batch_dice, None, n_heads)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    x, y = synthetic_batch(batch, cfg.patch_size, dev)
    targets = downsample_targets(y, deep_supervision_scales(cfg.topology.strides, n_heads))
    net.train()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(dev.type, dtype):
            out = net(x)
        loss = loss_fn([o.float() for o in out], targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            opt.step()
        return loss

    for _ in range(warmup):
        step()
    _sync(dev)
    _reset_peak(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        loss = step()
        n += 1
        if n % 5 == 0 or s.smoke:
            _sync(dev)
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(dev)
    return n / (time.perf_counter() - t0), _peak_gb(dev), float(loss.detach())


def check_training(s: Setup, a: argparse.Namespace) -> list[Row]:
    from autoseg.networks.builder import build_network

    cfg = s.cfg
    torch.manual_seed(0)
    ours = build_network("unet", cfg.topology, 1, len(LABELS), deep_supervision=True).to(s.device)
    it_s, peak, loss = train_iterations_per_s(ours, s, s.device, cfg.batch_size, s.train_seconds, s.warmup)
    del ours
    row = Row("train it/s (autoseg U-Net)", f"{it_s:.2f} it/s ({250 / it_s:.0f} s per 250-iteration epoch), "
              f"peak {peak:.1f} GB, loss {loss:.3f}", ">= nnU-Net v2 (not installed here: pip install dynamic-network-architectures)")
    rows = [row]
    try:
        ref_net = None if s.smoke else _nnunet_network(cfg.topology, 1, len(LABELS))
        if ref_net is None:
            return rows
        ref_it_s, ref_peak, _ = train_iterations_per_s(ref_net.to(s.device), s, s.device, cfg.batch_size, s.train_seconds,
                                                       s.warmup)
    except Exception as e:  # a reference that does not build or run must not hide autoseg's figure
        rows.append(Row("train it/s (nnU-Net v2 PlainConvUNet)", f"{type(e).__name__}: {str(e)[:200]}", status="skip"))
        return rows
    row.goal = f">= nnU-Net v2: {ref_it_s:.2f} it/s (ratio {it_s / ref_it_s:.2f})"
    row.status = "ok" if it_s >= NNUNET_SPEED_RATIO * ref_it_s else "MISS"
    rows.append(Row("train it/s (nnU-Net v2 PlainConvUNet)", f"{ref_it_s:.2f} it/s, peak {ref_peak:.1f} GB", status="info"))
    return rows


# -- 2. prediction -------------------------------------------------------------------------------

def write_fake_model(results: Path, cfg) -> None:
    """A 1-fold 'trained' model folder for ``cfg`` (untrained weights: speed does not depend on them)."""
    from autoseg.datasets.layout import DatasetInfo, save_dataset_info
    from autoseg.io.json_io import save_json
    from autoseg.networks.builder import build_network
    from autoseg.planners.plans import Plans
    from autoseg.model.checkpoint import save_checkpoint
    from autoseg.model.training_config import TrainingConfig

    folder = results / DATASET / "3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    Plans(dataset_name=DATASET, plans_name="gpu_check", gpu_memory_gb=8.0, transpose_forward=[0, 1, 2],
          transpose_backward=[0, 1, 2], original_median_spacing_mm=list(cfg.spacing_mm), original_median_shape_vox=list(cfg.median_shape_vox),
          num_input_channels=1, labels=dict(LABELS), configurations={"3d_fullres": cfg}).save(folder / "plans.json")
    save_dataset_info(DatasetInfo(name="GpuCheck", channel_names={"0": "CT"}, labels=dict(LABELS), numTraining=1), folder)
    torch.manual_seed(0)
    weights = build_network("unet", cfg.topology, 1, len(LABELS)).state_dict()
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", weights, {"epoch": 0, "fold": "0", "network": "unet"})
    training = TrainingConfig(dataset=DATASET, configuration="3d_fullres", fold="0", num_input_channels=1,
                              num_classes=len(LABELS))
    save_json(asdict(training), folder / "fold_0" / "training.json")


def _resampled_shape(shape, spacing, target) -> list[int]:
    return [int(round(n * sp / t)) for n, sp, t in zip(shape, spacing, target)]


def check_prediction(s: Setup, a: argparse.Namespace) -> list[Row]:
    from autoseg.datasets.synthetic import make_case
    from autoseg.inference.inputs import InputCase
    from autoseg.model.trained import TrainedModel
    from autoseg.inference.predictor import PredictOptions, predict_cases
    from autoseg.inference.sliding_window import SlidingWindowSettings, predict_sliding_window, window_grid
    from autoseg.io.images import write_image
    from autoseg.networks.builder import build_network

    cfg, dev, rows = s.cfg, s.device, []
    amp = "off" if s.smoke else "auto"
    # (a) the sliding window alone on the resampled volume
    torch.manual_seed(0)
    net = build_network("unet", cfg.topology, 1, len(LABELS), deep_supervision=False).to(dev).eval()
    shape = _resampled_shape(s.case_shape, CASE_SPACING_ZYX, cfg.spacing_mm)
    settings = SlidingWindowSettings(patch_size=cfg.patch_size, step=0.5, mirror=True, device=str(dev), amp=amp)
    predict_sliding_window([net], torch.zeros(1, *cfg.patch_size), len(LABELS), settings)  # warm-up: cuDNN autotuning
    data = torch.randn(1, *shape)
    _sync(dev)
    _reset_peak(dev)
    t0 = time.perf_counter()
    probs = predict_sliding_window([net], data, len(LABELS), settings)
    _sync(dev)
    t_sw = time.perf_counter() - t0
    n_windows = len(window_grid(shape, cfg.patch_size, 0.5)[1])
    ok = bool(torch.isfinite(probs).all()) and probs.shape[1:] == tuple(shape)
    rows.append(Row("predict: sliding window only",
                    f"{shape} -> {n_windows} windows x 8 passes in {t_sw:.1f} s ({n_windows * 8 / t_sw:.0f} forwards/s), "
                    f"peak {_peak_gb(dev):.2f} GB", "", "ok" if ok else "FAIL"))
    del probs, data, net
    # (b) the case from its file to the written mask, in this process; (c) the command in a fresh process
    with tempfile.TemporaryDirectory(prefix="autoseg_gpu_check_") as tmp:
        root = Path(tmp)
        img, _, geom = make_case(s.case_shape, CASE_SPACING_ZYX, np.random.default_rng(0), flip_direction=True,
                                 origin_xyz=(-180.0, -200.0, 40.0))
        write_image(img, geom, root / "in" / "ct_0000.nii")
        del img
        write_fake_model(root / "results", cfg)
        model = TrainedModel(root / "results" / DATASET, "3d_fullres", folds=["0"])
        options = PredictOptions(device=str(dev), amp=amp, postprocess=False, overwrite=True, num_export_workers=2)
        case = InputCase("ct", [root / "in" / "ct_0000.nii"], "ct.nii.gz")
        _reset_peak(dev)
        t0 = time.perf_counter()
        summary = predict_cases(model, [case], root / "out", options)
        _sync(dev)
        t_case = time.perf_counter() - t0
        ok = summary.predicted == ["ct"] and any((root / "out").glob("ct.nii*"))
        status = "FAIL" if not ok else ("ok" if t_case < TARGET_PREDICT_S or s.smoke else "MISS")
        rows.append(Row("predict: 512x512x300 CT, 1 fold + mirroring",
                        f"{t_case:.1f} s file to mask (model load included), peak {_peak_gb(dev):.2f} GB", f"< {TARGET_PREDICT_S:.0f} s",
                        status))
        env = dict(os.environ, AUTOSEG_RESULTS=str(root / "results"), PYTHONPATH=str(REPO))
        if s.smoke:
            env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "autoseg", "predict", "-i", str(root / "in"), "-o", str(root / "out_cli"), "-d", DATASET,
               "-c", "3d_fullres", "-f", "0", "--device", dev.type, "--amp", amp, "--export-threads", "2", "--no-postprocessing"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(60.0, a.budget_s))
        t_cli = time.perf_counter() - t0
        ok = r.returncode == 0 and any((root / "out_cli").glob("ct.nii*"))
        status = "FAIL" if not ok else ("ok" if t_cli < TARGET_PREDICT_S or s.smoke else "MISS")
        rows.append(Row("predict: 'autoseg predict' command", f"{t_cli:.1f} s wall (fresh process: imports, CUDA, model load)"
                        + ("" if ok else f"; exit {r.returncode}: {r.stderr.strip()[-300:]}"), f"< {TARGET_PREDICT_S:.0f} s", status))
    return rows


# -- 3. out-of-memory fallback (child process: the memory cap stays there) ----------------------

class _OomOnce(torch.nn.Module):
    """--cpu-smoke only: raises the out-of-memory error once (a CPU cannot be capped)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.fired = inner, False

    def forward(self, x):
        if not self.fired:
            self.fired = True
            from autoseg.inference.sliding_window import out_of_memory_error
            raise out_of_memory_error()("CUDA out of memory (simulated by --cpu-smoke)")
        return self.inner(x)


def oom_child(a: argparse.Namespace) -> int:
    """Predict freely, then under a memory cap; print one JSON line with what happened."""
    import autoseg.inference.sliding_window as sw
    from autoseg.inference.sliding_window import SlidingWindowSettings, predict_sliding_window
    from autoseg.networks.builder import build_network
    from autoseg.networks.precision import amp_dtype, autocast, enable_cudnn_benchmark

    s = make_setup(a)
    cfg, dev = s.cfg, s.device
    torch.manual_seed(0)
    net = build_network("unet", cfg.topology, 1, len(LABELS), deep_supervision=False).to(dev).eval()
    settings = SlidingWindowSettings(patch_size=cfg.patch_size, step=1.0, mirror=False, device=str(dev),
                                     amp="off" if s.smoke else "auto")
    data = torch.randn(1, *s.oom_shape)
    acc_bytes = 4 * len(LABELS) * int(np.prod(s.oom_shape))
    enable_cudnn_benchmark(dev)
    ref = predict_sliding_window([net], data, len(LABELS), settings)  # free run; cuDNN has tuned its algorithms after it
    with torch.inference_mode(), autocast(dev.type, amp_dtype(dev.type, settings.amp)):  # one forward's peak, weights included
        x = torch.zeros(1, 1, *cfg.patch_size, device=dev)
        _sync(dev)
        _reset_peak(dev)
        net(x)
        _sync(dev)
    fwd_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    del x
    messages: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logging.getLogger(sw.__name__).addHandler(Grab())
    cap_gb = float("nan")
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        cap = int(1.15 * fwd_peak) + acc_bytes // 2  # the accumulator plus a forward cannot fit, a forward alone can
        cap_gb = cap / 1024**3
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), dev)
        torch.cuda.reset_peak_memory_stats(dev)
        nets = [net]
    else:
        sw.accumulator_devices = lambda d: [d, torch.device("cpu")]
        nets = [_OomOnce(net)]
    t0 = time.perf_counter()
    out = predict_sliding_window(nets, data, len(LABELS), settings)
    seconds = time.perf_counter() - t0
    result = {
        "fell_back": any("CPU memory" in m for m in messages),
        "max_abs_diff": float((out.float() - ref.float()).abs().max()),
        "argmax_agreement": float((out.argmax(0) == ref.argmax(0)).float().mean()),
        "seconds": seconds,
        "cap_gb": cap_gb,
        "forward_peak_gb": fwd_peak / 1024**3,
        "accumulator_gb": acc_bytes / 1024**3,
        "peak_under_cap_gb": _peak_gb(dev),
    }
    print("OOM_CHILD " + json.dumps(result))
    return 0


def check_oom_fallback(s: Setup, a: argparse.Namespace) -> list[Row]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--oom-child"] + (["--cpu-smoke"] if s.smoke else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, a.budget_s), env=dict(os.environ, PYTHONPATH=str(REPO)))
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("OOM_CHILD ")), None)
    if r.returncode != 0 or line is None:
        return [Row("OOM fallback (memory cap)", f"child exit {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}", status="FAIL")]
    res = json.loads(line.split(" ", 1)[1])
    same = res["max_abs_diff"] < 1e-2 and res["argmax_agreement"] > 0.999
    ok = res["fell_back"] and same
    text = (f"{list(s.oom_shape)} under a {res['cap_gb']:.2f} GB cap (1.15 x forward {res['forward_peak_gb']:.2f} GB + half the "
            f"{res['accumulator_gb']:.2f} GB accumulator): fell back {res['fell_back']}, {res['seconds']:.1f} s, "
            f"peak {res['peak_under_cap_gb']:.2f} GB, max |dp| {res['max_abs_diff']:.1e}, argmax agree {res['argmax_agreement']:.4f}")
    return [Row("OOM fallback (memory cap)", text, "falls back, same result", "ok" if ok else "FAIL")]


# -- 4. DDP, 2 processes -------------------------------------------------------------------------

def _ddp_worker(rank: int, world: int, port: int, a: argparse.Namespace, out_file: str) -> None:
    import torch.distributed as dist

    from autoseg.networks.builder import build_network
    from autoseg.trainers import distributed as dist_utils

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    s = make_setup(a)
    ctx = dist_utils.context(s.device.type)
    dev = torch.device("cuda", ctx.local_rank) if s.device.type == "cuda" else s.device
    try:
        torch.manual_seed(ctx.rank)  # different initial weights: DDP must broadcast rank 0's
        net = build_network("unet", s.cfg.topology, 1, len(LABELS), deep_supervision=True).to(dev)
        model = dist_utils.wrap(net, dev)
        batch, _ = dist_utils.rank_batch(s.cfg.batch_size, 0.33, ctx.rank, ctx.world_size)
        it_s, peak, loss = train_iterations_per_s(model, s, dev, batch, s.train_seconds, s.warmup)
        flat = torch.cat([p.detach().float().reshape(-1) for p in net.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        if ctx.is_main:
            Path(out_file).write_text(json.dumps({"it_s": it_s, "peak_gb": peak, "identical": same, "batch_per_rank": batch,
                                                  "backend": dist.get_backend(), "loss": loss}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_ddp(s: Setup, a: argparse.Namespace) -> list[Row]:
    import torch.multiprocessing as mp

    if not s.smoke and torch.cuda.device_count() < 2:
        return [Row("DDP 2 processes", f"skipped: {torch.cuda.device_count()} GPU visible", status="skip")]
    with tempfile.TemporaryDirectory(prefix="autoseg_gpu_check_ddp_") as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(_ddp_worker, args=(2, _free_port(), a, str(out)), nprocs=2, join=True)
        res = json.loads(out.read_text())
    text = (f"{res['backend']}, {res['batch_per_rank']} patch per rank: {res['it_s']:.2f} it/s, peak {res['peak_gb']:.1f} GB "
            f"per GPU, weights identical on both ranks: {res['identical']}")
    return [Row("DDP 2 processes", text, "identical weights", "ok" if res["identical"] else "FAIL")]


# -- the table -----------------------------------------------------------------------------------

CHECKS = (("machine", check_environment), ("training", check_training), ("prediction", check_prediction),
          ("OOM fallback", check_oom_fallback), ("DDP", check_ddp))


def print_table(rows: list[Row]) -> None:
    w_check = max(len(r.check) for r in rows)
    w_status = max(len(r.status) for r in rows)
    print()
    print(f"{'check':<{w_check}}  {'status':<{w_status}}  result [goal]")
    print("-" * (w_check + w_status + 60))
    for r in rows:
        print(f"{r.check:<{w_check}}  {r.status:<{w_status}}  {r.result}" + (f"  [{r.goal}]" if r.goal else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=450.0, help="start no check after this many seconds (default 450)")
    ap.add_argument("--train-seconds", type=float, default=30.0, help="timed training per network (default 30)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--cpu-smoke", action="store_true", help="run every check on the CPU with a tiny plan (tests only)")
    ap.add_argument("--oom-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.oom_child:
        return oom_child(a)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); nothing to check on this machine")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    s = make_setup(a)
    start, rows = time.monotonic(), []
    for name, check in CHECKS:
        if time.monotonic() - start > a.budget_s:
            rows.append(Row(name, f"not run: the {a.budget_s:.0f} s budget is spent", status="skip"))
            continue
        t0 = time.monotonic()
        print(f"gpu_check: {name} ...", flush=True)
        try:
            rows += check(s, a)
        except Exception as e:  # one failing check must not hide the others
            traceback.print_exc()
            rows.append(Row(name, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", status="FAIL"))
        print(f"gpu_check: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    rows.append(Row("total", f"{time.monotonic() - start:.0f} s", "< 480 s", "ok" if time.monotonic() - start < 480 else "MISS"))
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
