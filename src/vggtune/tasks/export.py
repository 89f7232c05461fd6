"""``vggtune export``: a checkpoint as an ONNX or TorchScript file plus ``<file>.json``, checked after writing;
``quantize=int8`` (ONNX) or ``quantize=bf16`` (TorchScript) also judge the smaller file against fp32 on
held-out images and refuse it when it loses more than ``max_accuracy_drop`` points."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from vggtune.core.checks import check_bool, check_positive_int, is_number
from vggtune.core.errors import UserError
from vggtune.tasks.runs import keep_copy, output_path, rel, report_files, write_json
from vggtune.use import export, heldout, quantize
from vggtune.use.inference import LoadedModel, load_model

log = logging.getLogger(__name__)


def export_checkpoint(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt`` as ``cfg.format`` to ``cfg.output``; return the JSON written beside it."""
    run_dir = Path(cfg.paths.run_dir)
    fmt = export.check_format(cfg.format)
    kind = quantize.check_quantize(cfg.get("quantize", "none"), fmt)
    limits = _check_quantize_keys(cfg) if kind != "none" else {}
    out = output_path(cfg.output, run_dir, "model" + ("" if kind == "none" else f".{kind}") + export.FORMATS[fmt])
    suffix = out.suffix.lower()
    if suffix in (".onnx", ".pt", ".pth") and (suffix == ".onnx") != (fmt == "onnx"):  # a likely slip, not an error
        log.warning("output=%s ends in %s, but format=%s writes a %s file", out.name, out.suffix, fmt, fmt)
    loaded = load_model(cfg.ckpt, "cpu")  # exported and checked on the CPU, where onnxruntime runs by default
    model = _exported(cfg, loaded)
    if fmt == "torchscript":
        log.warning(
            "TorchScript is deprecated in torch %s (torch.jit.load warns, and a later torch may drop it); "
            "format=onnx is the portable choice",
            torch.__version__,
        )
    log.info(
        "Exporting %s (%s, %d classes) to %s%s ...",
        rel(loaded.path),
        loaded.module.hparams["arch"],
        len(loaded.class_names),
        rel(out),
        "" if kind == "none" else f" ({kind})",
    )

    if kind == "int8":
        check, quantized = _write_int8(cfg, loaded, model, out, limits)
    elif kind == "bf16":
        check, quantized = _write_bf16(cfg, loaded, model, out, limits)
    else:
        check, quantized = export.write(model, loaded.preprocessing, fmt, out), None
    info = export.describe(
        out,
        fmt,
        model,
        loaded.preprocessing,
        loaded.class_names,
        loaded.module.hparams["arch"],
        loaded.path,
        loaded.thresholds() if loaded.multilabel else None,
        loaded.temperature if loaded.module.calibration is not None else None,
    )
    info["check"] = check
    if quantized is not None:
        info["quantized"] = quantized
    sidecar = out.with_name(out.name + ".json")
    write_json(sidecar, info)
    copied = keep_copy(sidecar, run_dir, "export.json")
    size = out.stat().st_size / 2**20
    checked = {"none": "", "int8": "the fp32 graph it was quantized from ", "bf16": "the bf16 file "}[kind]
    lines = [
        f"Exported: {rel(out)} ({size:.0f} MiB)  input {info['input_name']}: float32 {info['input_shape']}, "
        f"RGB in [0, 1], normalised inside; output: {info['output']}",
        f"  {checked}checked with {check['runtime']} on {check['batch']} random images: max abs difference "
        f"{check['max_abs_diff']:.2g} from PyTorch",
        f"  calibration: {info['calibration']['how']}",
    ]
    if quantized is not None:
        lines.append("  " + describe_quantized(quantized))
    lines.append(
        f"  {rel(sidecar)}: class names, input size, mean and std, calibration"
        + (", the quantization and its check" if quantized else "")
    )
    log.info("\n".join(lines))
    report_files(
        run_dir,
        {"export.json": f"a copy of {rel(sidecar)}"}
        if copied
        else {out.name: "the exported model", sidecar.name: "class names, input size, mean and std"},
    )
    if quantized is not None and not quantized["within_tolerance"]:
        raise UserError(_too_lossy(quantized, out))
    return info


def _check_quantize_keys(cfg: DictConfig) -> dict:
    drop = cfg.get("max_accuracy_drop", 1.0)
    if not is_number(drop) or drop < 0:
        raise UserError(f"max_accuracy_drop is in accuracy points (0 or more, e.g. 1), got {drop!r}")
    root = cfg.get("calibration_root")
    if root is not None and not Path(str(root)).expanduser().is_dir():
        raise UserError(
            f"calibration_root={root} is not a folder: pass a folder of training images, or leave it "
            "out to calibrate on the checkpoint's own training split"
        )
    return {
        "images": check_positive_int("calibration_images", cfg.get("calibration_images", 300)),
        "method": quantize.check_method(cfg.get("calibration_method", "minmax")),
        "max_drop": float(drop),
        "force": check_bool("force", cfg.get("force", False)),
        "root": None if root is None else str(Path(str(root)).expanduser()),
    }


def _exported(cfg: DictConfig, loaded: LoadedModel, dtype: torch.dtype = torch.float32) -> export.ExportedClassifier:
    calibrate = check_bool("calibrate", cfg.get("calibrate", True)) and not loaded.multilabel
    net = loaded.module.model.to(memory_format=torch.contiguous_format)
    return export.ExportedClassifier(
        net,
        loaded.preprocessing,
        logits=bool(cfg.logits),
        temperature=loaded.temperature if calibrate else 1.0,
        multilabel=loaded.multilabel,
        dtype=dtype,
    ).eval()


def _write_int8(
    cfg: DictConfig, loaded: LoadedModel, model: export.ExportedClassifier, out: Path, limits: dict
) -> tuple[dict, dict]:
    """The fp32 ONNX file (checked against PyTorch), quantized from it, then judged beside it on held-out images."""
    fp32 = out.with_name(f".{out.stem}.fp32.onnx")
    try:
        check = export.write(model, loaded.preprocessing, "onnx", fp32)
        held = heldout.held_out(loaded, cfg.data.root, cfg.data.subset)  # read before the minutes of calibration
        batches, source, paths = heldout.calibration_batches(loaded, limits["root"], limits["images"])
        log.info("Calibrating on %d images of %s (%s) ...", len(paths), source, limits["method"])
        settings = quantize.quantize_int8(fp32, out, batches, limits["method"], export.INPUT_NAME)
        reference = heldout.probabilities(export.onnx_session_runner(fp32), held.images)
    finally:
        fp32.unlink(missing_ok=True)
    candidate = heldout.probabilities(export.onnx_session_runner(out), held.images)
    settings["calibration_source"] = source
    settings["calibration_files"] = [str(p) for p in paths]
    return check, _judged(settings, reference, candidate, held, loaded, limits)


def _write_bf16(
    cfg: DictConfig, loaded: LoadedModel, model: export.ExportedClassifier, out: Path, limits: dict
) -> tuple[dict, dict]:
    """The fp32 model's probabilities first (converting the network to bf16 changes it in place), then the file."""
    held = heldout.held_out(loaded, cfg.data.root, cfg.data.subset)
    with torch.inference_mode():
        reference = heldout.probabilities(model, held.images)
    bf16 = _exported(cfg, loaded, torch.bfloat16)
    check = export.write(bf16, loaded.preprocessing, "torchscript", out)
    candidate = heldout.probabilities(export.torchscript_runner(out), held.images)
    settings = {
        "runtime": f"torch {torch.__version__}",
        "format": "bfloat16 weights and arithmetic, float32 in and out",
        **quantize.cpu_record(),
    }
    return check, _judged(settings, reference, candidate, held, loaded, limits)


def _judged(
    settings: dict,
    reference: torch.Tensor,
    candidate: torch.Tensor,
    held: heldout.HeldOut,
    loaded: LoadedModel,
    limits: dict,
) -> dict:
    thresholds = loaded.thresholds() if loaded.multilabel else None
    comparison = heldout.compare(reference, candidate, held, loaded.class_names, thresholds)
    within = comparison["accuracy_drop_points"] <= limits["max_drop"]
    return {
        **settings,
        "cpu": quantize.cpu_record(),
        "check": comparison,
        "max_accuracy_drop": limits["max_drop"],
        "within_tolerance": within or limits["force"],
        "forced": limits["force"] and not within,
    }


def describe_quantized(q: dict) -> str:
    """One line: the held-out agreement and accuracy of the quantized file beside fp32."""
    c = q["check"]
    return (
        f"on {c['images']} images of {c['source']}: answers as fp32 on {100 * c['agreement']:.1f}%, accuracy "
        f"{c['quantized']['acc']:.4f} vs fp32 {c['fp32']['acc']:.4f} ({c['accuracy_drop_points']:+.2f} points "
        f"lost; max_accuracy_drop={q['max_accuracy_drop']:g})" + (", forced" if q.get("forced") else "")
    )


def _too_lossy(q: dict, out: Path) -> str:
    c = q["check"]
    hint = "try calibration_method=entropy or more calibration_images, " if "calibration_method" in q else ""
    return (
        f"the quantized {out.name} loses {c['accuracy_drop_points']:.2f} accuracy points against fp32 on "
        f"{c['images']} held-out images, more than max_accuracy_drop={q['max_accuracy_drop']:g}; it is kept "
        f"for inspection, marked refused in its JSON: {hint}export without quantize, or pass force=true to "
        "accept it"
    )


def run(cfg: DictConfig) -> str:
    """The ``vggtune export`` task: returns the name of the exported file."""
    return export_checkpoint(cfg)["file"]
