"""A tiny nnU-Net v2 trained-model folder, built by the tests.

The folder is what ``nnUNetv2_train`` leaves (and what a site copies from
TotalSegmentator's weights): ``dataset.json``, ``plans.json`` and
``fold_N/checkpoint_final.pth``, here for a two-stage ``PlainConvUNet``
without normalisation whose weights are set by hand so that its output is
known voxel for voxel: the network passes each voxel's Hounsfield value
through unchanged (a centre-only 3x3x3 kernel in the first encoder stage and
in the last decoder stage, the lower stage silenced), and its 1x1x1
segmentation layer turns that value ``h`` into the logits ``(0, h - 100,
2h - 600)``. So a voxel above 500 HU is label 2, one above 100 HU label 1,
anything else background: :func:`expected_labels`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from numpy.typing import NDArray

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
FEATURES = (4, 8)
PATCH = (16, 32, 32)

#: the label of a voxel above each threshold (Hounsfield units)
THRESHOLDS = ((500.0, 2), (100.0, 1))


def arch_kwargs() -> dict[str, Any]:
    """The plans' ``arch_kwargs`` (with class names as strings, as plans.json holds them)."""
    return {
        "n_stages": 2,
        "features_per_stage": list(FEATURES),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2]],
        "n_conv_per_stage": [1, 1],
        "n_conv_per_stage_decoder": [1],
        "conv_bias": True,
        "norm_op": None,
        "norm_op_kwargs": {},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def plans(spacing: tuple[float, float, float], transpose: tuple[int, int, int]) -> dict[str, Any]:
    """A plans.json for one 3d_fullres configuration at ``spacing`` (nnU-Net's axis order)."""
    backward = [int(i) for i in np.argsort(transpose)]
    return {
        "dataset_name": "Dataset901_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [24, 48, 48],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose),
        "transpose_backward": backward,
        "configurations": {
            CONFIGURATION: {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(PATCH),
                "median_image_size_in_voxels": [24, 48, 48],
                "spacing": list(spacing),
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                              "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                             "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": {
                    "network_class_name":
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": arch_kwargs(),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 3071.0, "mean": 0.0, "median": 0.0, "min": -1024.0,
                  "percentile_00_5": -1024.0, "percentile_99_5": 3071.0, "std": 1.0}
        },
    }  # fmt: skip


def network(labels: int = 3) -> PlainConvUNet:
    """The network with the hand-set weights described in the module docstring.

    ``labels`` outputs: 0 background, 1 above 100 HU, 2 above 500 HU, and any
    further one never wins (a very negative bias).
    """
    net = PlainConvUNet(
        input_channels=1,
        n_stages=2,
        features_per_stage=list(FEATURES),
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [2, 2, 2]],
        n_conv_per_stage=[1, 1],
        num_classes=labels,
        n_conv_per_stage_decoder=[1],
        conv_bias=True,
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        first = net.encoder.stages[0][0].convs[0].conv
        first.weight[0, 0, 1, 1, 1] = 1.0  # channel 0 carries the value
        last = net.decoder.stages[-1].convs[0].conv  # input: (upsampled lower stage, skip)
        last.weight[0, FEATURES[0], 1, 1, 1] = 1.0  # channel 0 of the skip
        seg = net.decoder.seg_layers[-1]
        seg.weight[1, 0] = 1.0
        seg.bias[1] = -100.0
        seg.weight[2, 0] = 2.0
        seg.bias[2] = -600.0
        for extra in range(3, labels):
            seg.bias[extra] = -1.0e6
    return net


def expected_labels(hu: NDArray[np.float32]) -> NDArray[np.uint8]:
    """What the network makes of ``hu``, voxel for voxel."""
    out = np.zeros(hu.shape, dtype=np.uint8)
    for threshold, label in reversed(THRESHOLDS):
        out[hu > threshold] = label
    return out


def write_model_folder(
    root: Path,
    *,
    labels: dict[str, int] | None = None,
    spacing: tuple[float, float, float] = (2.5, 8.0, 8.0),
    transpose: tuple[int, int, int] = (0, 1, 2),
    folds: tuple[int, ...] = (0,),
) -> Path:
    """Write the folder at ``root`` and return it.

    Parameters
    ----------
    labels : dict, optional
        dataset.json's ``labels``; default background, ``liver`` (1), ``bone`` (2).
    spacing : tuple
        The plans' target spacing, in nnU-Net's (SimpleITK's) axis order.
    transpose : tuple
        The plans' ``transpose_forward``.
    folds : tuple of int
        Folds to write (all with the same weights).
    """
    labels = labels or {"background": 0, "liver": 1, "bone": 2}
    root.mkdir(parents=True, exist_ok=True)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")
    (root / "plans.json").write_text(json.dumps(plans(spacing, transpose), indent=1), "utf-8")
    net = network(max(labels.values()) + 1)
    for fold in folds:
        (root / f"fold_{fold}").mkdir(exist_ok=True)
        checkpoint = {
            "network_weights": net.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 1,
            "init_args": {"plans": {}, "configuration": CONFIGURATION, "fold": fold,
                          "dataset_json": dataset, "device": "cpu"},
            "trainer_name": TRAINER,
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }  # fmt: skip
        torch.save(checkpoint, root / f"fold_{fold}" / "checkpoint_final.pth")
    return root
