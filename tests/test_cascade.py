"""Two-stage cascade: 3d_lowres cross-validation predictions feed 3d_cascade_fullres as one-hot channels."""

import numpy as np
import torch

from autoseg.cli import main
from autoseg.preprocessing.case_store import load_case

from conftest import write_blob_dataset

FAST = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0"]


def test_cascade_trains_on_lowres_predictions_and_predicts(autoseg_env, tmp_path, capsys):
    raw = autoseg_env["raw"] / "Dataset003_Liver"
    write_blob_dataset(raw, n=4, shape=(16, 48, 48), spacing=(2.0, 1.0, 1.0))
    # a tiny memory budget makes the fullres patch small enough that nnU-Net's rules plan a cascade
    assert main(["plan_and_preprocess", "-c", "3d_fullres", "3d_lowres", "--gpu-memory", "0.01", "-np", "1"]) == 0
    assert "3d_cascade_fullres" in capsys.readouterr().out
    assert main(["train", "-c", "3d_cascade_fullres", "-f", "0", *FAST]) == 1  # lowres folds missing: clear error
    assert "train every 3d_lowres fold first" in capsys.readouterr().err
    assert main(["train", "-c", "3d_lowres", "-f", "0..3", *FAST]) == 0
    assert main(["train", "-c", "3d_cascade_fullres", "-f", "0", *FAST]) == 0
    pre = autoseg_env["pre"] / "Dataset003_Liver"
    data, seg, _ = load_case(pre / "autosegPlans_3d_cascade_fullres", "case_000")
    assert data.shape[0] == 1 + 2  # image + one-hot liver, tumour
    assert set(np.unique(np.asarray(data[1:]))) <= {0.0, 1.0}
    fold = autoseg_env["res"] / "Dataset003_Liver" / "3d_cascade_fullres" / "fold_0"
    ck = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    first_conv = next(v for k, v in ck["network"].items() if k.endswith("weight") and v.dim() == 5)
    assert first_conv.shape[1] == 3
    assert (fold / "validation" / "summary.json").is_file()
    out = tmp_path / "pred"
    assert main(["predict", "-c", "3d_cascade_fullres", "-i", str(raw / "imagesTr"), "-o", str(out), "--no-tta"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 4
