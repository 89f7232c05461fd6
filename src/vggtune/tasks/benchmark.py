"""``vggtune benchmark``: every format vggtune can serve, side by side on this machine and on the checkpoint's
held-out images: file size, accuracy and macro F1, latency at batch 1, throughput at batch 16, and the share
of the CPU's measured peak; the fastest format within ``max_accuracy_drop`` of fp32 is named, and
``vggtune serve backend=auto`` serves it.

The exported files are written into the run folder (``files/``), each with the JSON ``export`` writes, so
the recommended one can be served as it is.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vggtune.core.checks import check_positive_int, is_number
from vggtune.core.errors import UserError
from vggtune.tasks.export import export_checkpoint
from vggtune.tasks.runs import rel, report_files, write_csv, write_json
from vggtune.use import benchmark, export, heldout, quantize
from vggtune.use.inference import LoadedModel, load_model

log = logging.getLogger(__name__)
FORMATS = ("eager_fp32", "eager_bf16", "torchscript", "onnx_fp32", "onnx_int8")
PRECISION = {
    "eager_fp32": "fp32",
    "eager_bf16": "bf16",
    "torchscript": "fp32",
    "onnx_fp32": "fp32",
    "onnx_int8": "int8",
}
COLUMNS = [
    "format",
    "precision",
    "file_mb",
    "acc",
    "f1",
    "agreement",
    "accuracy_drop_points",
    "p50_ms",
    "p99_ms",
    "images_per_s",
    "gflop_per_s",
    "peak_share",
]


def run_benchmark(cfg: DictConfig) -> dict:
    """Measure every format in ``cfg.formats`` (those this machine can run); returns what benchmark.json holds."""
    settings = _settings(cfg)
    run_dir = Path(cfg.paths.run_dir)
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    loaded = load_model(cfg.ckpt, "cpu")
    held = heldout.held_out(loaded, cfg.data.root, cfg.data.subset)
    thresholds = loaded.thresholds() if loaded.multilabel else None
    size = loaded.preprocessing.image_size
    flops = benchmark.flops_per_image(loaded.module.model, size)
    log.info(
        "Benchmarking %s (%s at %d px, %.2f GFLOP an image) on %d images of %s; CPU: %s, %d threads",
        rel(loaded.path),
        loaded.module.hparams["arch"],
        size,
        flops / 1e9,
        len(held.targets),
        held.source,
        quantize.cpu_name(),
        torch.get_num_threads(),
    )
    probe = benchmark.peak(quantize.has_bf16(), threads=settings["threads"])
    log.info("Peak of this CPU (matrix products):\n%s", "\n".join(f"  {k}: {v}" for k, v in probe["how"].items()))

    rows, reference, skipped = [], None, {}
    files = run_dir / "files"
    for name in settings["formats"]:
        why = _unavailable(name)
        if why:
            skipped[name] = why
            log.info("  %s: skipped (%s)", name, why)
            continue
        log.info("  %s ...", name)
        run, path = _format(name, cfg, loaded, files, settings)
        probs = heldout.probabilities(run, held.images)
        reference = probs if reference is None else reference
        rows.append(
            _measure(
                name,
                run,
                path or loaded.path,
                probs,
                reference,
                held,
                loaded,
                thresholds,
                flops,
                probe["gops"],
                settings,
            )
        )
    best = recommend(rows, settings["max_drop"])
    result = {
        "checkpoint": str(loaded.path.resolve()),
        "checkpoint_version": _version(loaded.path),
        "arch": loaded.module.hparams["arch"],
        "image_size": size,
        "gflop_per_image": flops / 1e9,
        "data": {"source": held.source, "images": len(held.targets), "left_out": held.left_out},
        "cpu": quantize.cpu_record(),
        "peak": probe,
        "settings": settings,
        "formats": rows,
        "skipped": skipped,
        "max_accuracy_drop": settings["max_drop"],
        "recommended": best,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "benchmark.json", result)
    write_csv(run_dir / "benchmark.csv", COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
    write_json(benchmark.benchmark_file(loaded.path), {**result, "run_dir": str(run_dir.resolve())})
    log.info(table(result))
    report_files(
        run_dir,
        {
            "benchmark.json": "every format's numbers, the CPU, the peak probe and the recommendation",
            "benchmark.csv": "the table",
            "files/": "the exported files, each with its JSON",
        },
    )
    return result


def _settings(cfg: DictConfig) -> dict:
    formats = list(cfg.get("formats") or FORMATS)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown format {unknown[0]!r} in formats: choose from {', '.join(FORMATS)}")
    drop = cfg.get("max_accuracy_drop", 1.0)
    if not is_number(drop) or drop < 0:
        raise UserError(f"max_accuracy_drop is in accuracy points (0 or more, e.g. 1), got {drop!r}")
    threads = cfg.get("threads")
    return {
        "formats": formats,
        "max_drop": float(drop),
        "threads": None if threads is None else check_positive_int("threads", threads),
        "latency_runs": check_positive_int("latency_runs", cfg.get("latency_runs", 30)),
        "batch": check_positive_int("throughput_batch", cfg.get("throughput_batch", 16)),
        "batches": check_positive_int("throughput_batches", cfg.get("throughput_batches", 3)),
        "calibration_images": check_positive_int("calibration_images", cfg.get("calibration_images", 300)),
        "calibration_method": quantize.check_method(cfg.get("calibration_method", "minmax")),
        "calibration_root": cfg.get("calibration_root"),
    }


def _unavailable(name: str) -> str:
    if name == "eager_bf16" and not quantize.has_bf16():
        return f"this CPU ({quantize.cpu_name()}) has no bf16 instructions: it would be emulated"
    if name.startswith("onnx"):
        try:
            export.check_format("onnx")
        except UserError as e:
            return str(e)
    return ""


def _format(name: str, cfg: DictConfig, loaded: LoadedModel, files: Path, settings: dict):
    """(a batch -> probabilities function, the file it runs or None for the checkpoint itself)."""
    if name.startswith("eager"):
        dtype = torch.bfloat16 if name == "eager_bf16" else torch.float32
        model = export.ExportedClassifier(
            copy.deepcopy(loaded.module.model),
            loaded.preprocessing,
            temperature=loaded.temperature if not loaded.multilabel else 1.0,
            multilabel=loaded.multilabel,
            dtype=dtype,
        ).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        return run, None
    out = files / {"torchscript": "model.pt", "onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"}[name]
    overrides = {
        "format": "torchscript" if name == "torchscript" else "onnx",
        "quantize": "int8" if name == "onnx_int8" else "none",
        "force": True,  # judged here, by this table
        "calibration_images": settings["calibration_images"],
        "calibration_method": settings["calibration_method"],
        "calibration_root": settings["calibration_root"],
    }
    export_cfg = OmegaConf.create(
        {
            "ckpt": cfg.ckpt,
            "output": str(out),
            "logits": False,
            "calibrate": True,
            "data": {"root": cfg.data.root, "subset": cfg.data.subset},
            "max_accuracy_drop": 100.0,
            "paths": {"run_dir": str(files)},
            **overrides,
        }
    )
    with _quiet(), export.quiet_torchscript():
        export_checkpoint(export_cfg)
    if name == "torchscript":
        return export.torchscript_runner(out), out
    return export.onnx_session_runner(out, settings["threads"] or torch.get_num_threads()), out


@contextmanager
def _quiet():
    """The exports' own report lines: the benchmark's table says what matters."""
    loggers = [logging.getLogger(name) for name in ("vggtune.tasks.export", "vggtune.tasks.runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _measure(
    name, run, path: Path, probs, reference, held, loaded, thresholds, flops: int, gops: dict, settings: dict
) -> dict:
    comparison = heldout.compare(reference, probs, held, loaded.class_names, thresholds)
    one = held.images[:1]
    batch = held.images[: settings["batch"]]
    while len(batch) < settings["batch"]:  # fewer held-out images than a batch: repeat them
        batch = torch.cat([batch, held.images])[: settings["batch"]]
    lat = benchmark.latency_ms(run, one, settings["latency_runs"])
    tput = benchmark.throughput(run, batch, settings["batches"])
    precision = PRECISION[name]
    achieved = flops * tput["images_per_s"] / 1e9
    peak = gops.get(precision)
    return {
        "format": name,
        "precision": precision,
        "file": str(path),
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "acc": round(comparison["quantized"]["acc"], 4),
        "f1": round(comparison["quantized"]["f1"], 4),
        **({"map": round(comparison["quantized"]["map"], 4)} if thresholds is not None else {}),
        "agreement": round(comparison["agreement"], 4),
        "accuracy_drop_points": comparison["accuracy_drop_points"],
        "p50_ms": round(lat["p50_ms"], 2),
        "p99_ms": round(lat["p99_ms"], 2),
        "latency_runs": lat["runs"],
        "images_per_s": round(tput["images_per_s"], 2),
        "gflop_per_s": round(achieved, 1),
        "peak_share": round(achieved / peak, 3) if peak else None,
    }


def recommend(rows: list[dict], max_drop: float) -> dict | None:
    """The format with the highest throughput among those within ``max_drop`` points of fp32 (None: no row)."""
    within = [r for r in rows if r["accuracy_drop_points"] <= max_drop]
    if not within:
        return None
    best = max(within, key=lambda r: r["images_per_s"])
    return {
        "format": best["format"],
        "file": best["file"],
        "images_per_s": best["images_per_s"],
        "accuracy_drop_points": best["accuracy_drop_points"],
    }


def table(result: dict) -> str:
    """The terminal table, then the recommendation in one line."""
    head = (
        f"{'format':<12} {'file MB':>8} {'acc':>7} {'F1':>7} {'agree':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'img/s@' + str(result['settings']['batch']):>9} {'peak':>6}"
    )
    lines = [head]
    for r in result["formats"]:
        share = f"{100 * r['peak_share']:.0f}%" if r["peak_share"] is not None else "-"
        lines.append(
            f"{r['format']:<12} {r['file_mb']:>8.1f} {r['acc']:>7.4f} {r['f1']:>7.4f} {r['agreement']:>6.3f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['images_per_s']:>9.1f} {share:>6}"
        )
    for name, why in result["skipped"].items():
        lines.append(f"{name:<12} skipped: {why}")
    best = result["recommended"]
    lines.append(
        f"Fastest within {result['max_accuracy_drop']:g} accuracy point(s) of fp32: {best['format']} "
        f"({best['images_per_s']:.1f} images/s at batch {result['settings']['batch']}); serve it with "
        f"`vggtune serve ckpt={rel(result['checkpoint'])} backend=auto`"
        if best
        else f"No format is within {result['max_accuracy_drop']:g} accuracy point(s) of fp32"
    )
    lines.append(
        "peak: the format's GFLOP/s over this CPU's matrix-product peak in its precision (benchmark.json: "
        "the arithmetic)"
    )
    return "\n".join(lines)


def _version(path: Path) -> str:
    from vggtune.serve.backends import file_version

    return file_version(path)


def run(cfg: DictConfig) -> str:
    """The ``vggtune benchmark`` task: returns the recommended format."""
    best = run_benchmark(cfg)["recommended"]
    return best["format"] if best else "none"
