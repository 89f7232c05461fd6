"""``vggtune export``: a checkpoint as an ONNX or TorchScript file plus ``<file>.json``, checked after writing."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from vggtune.core.checks import check_bool
from vggtune.tasks.runs import keep_copy, output_path, rel, report_files, write_json
from vggtune.use import export
from vggtune.use.inference import load_model

log = logging.getLogger(__name__)


def export_checkpoint(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt`` as ``cfg.format`` to ``cfg.output``; return the JSON written beside it."""
    run_dir = Path(cfg.paths.run_dir)
    fmt = export.check_format(cfg.format)
    out = output_path(cfg.output, run_dir, "model" + export.FORMATS[fmt])
    suffix = out.suffix.lower()
    if suffix in (".onnx", ".pt", ".pth") and (suffix == ".onnx") != (fmt == "onnx"):  # a likely slip, not an error
        log.warning("output=%s ends in %s, but format=%s writes a %s file", out.name, out.suffix, fmt, fmt)
    loaded = load_model(cfg.ckpt, "cpu")  # exported and checked on the CPU, where onnxruntime runs by default
    net = loaded.module.model.to(memory_format=torch.contiguous_format)
    calibrate = check_bool("calibrate", cfg.get("calibrate", True)) and not loaded.multilabel
    model = export.ExportedClassifier(net, loaded.preprocessing, logits=bool(cfg.logits),
                                      temperature=loaded.temperature if calibrate else 1.0,
                                      multilabel=loaded.multilabel).eval()
    if fmt == "torchscript":
        log.warning("TorchScript is deprecated in torch %s (torch.jit.load warns, and a later torch may drop it); "
                    "format=onnx is the portable choice", torch.__version__)
    log.info("Exporting %s (%s, %d classes) to %s ...", rel(loaded.path), loaded.module.hparams["arch"],
             len(loaded.class_names), rel(out))

    check = export.write(model, loaded.preprocessing, fmt, out)
    info = export.describe(out, fmt, model, loaded.preprocessing, loaded.class_names,
                           loaded.module.hparams["arch"], loaded.path,
                           loaded.thresholds() if loaded.multilabel else None,
                           loaded.temperature if loaded.module.calibration is not None else None)
    info["check"] = check
    sidecar = out.with_name(out.name + ".json")
    write_json(sidecar, info)
    copied = keep_copy(sidecar, run_dir, "export.json")
    size = out.stat().st_size / 2**20
    log.info("\n".join([
        f"Exported: {rel(out)} ({size:.0f} MiB)  input {info['input_name']}: float32 {info['input_shape']}, "
        f"RGB in [0, 1], normalised inside; output: {info['output']}",
        f"  checked with {check['runtime']} on {check['batch']} random images: max abs difference "
        f"{check['max_abs_diff']:.2g} from PyTorch",
        f"  calibration: {info['calibration']['how']}",
        f"  {rel(sidecar)}: class names, input size, mean and std, calibration"]))
    report_files(run_dir, {"export.json": f"a copy of {rel(sidecar)}"} if copied else
                 {out.name: "the exported model", sidecar.name: "class names, input size, mean and std"})
    return info


def run(cfg: DictConfig) -> str:
    """The ``vggtune export`` task: returns the name of the exported file."""
    return export_checkpoint(cfg)["file"]
