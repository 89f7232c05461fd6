"""The ``vggtune`` command: ``vggtune <task> [key=value ...]``, each task a Hydra app over ``conf/<task>.yaml``."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vggtune import __version__
from vggtune.core.errors import RunComplete, UserError
from vggtune.schema.check import check_config
from vggtune.tasks.runs import restore_run_config
from vggtune.training.messages import tidy_lightning_messages
from vggtune.training.sweep import SWEEP_ERROR_FILE, SweepSummary

CONFIG_MODULE = "vggtune.conf"

# task word -> (module with a run(cfg) function, one-line description)
TASKS = {
    "train": ("vggtune.tasks.train", "fine-tune a pretrained VGG on a folder of class folders"),
    "prepare": ("vggtune.tasks.prepare", "split the data as train would and write it as shards for data.stream="),
    "lr_find": ("vggtune.tasks.lr_find", "learning-rate range test on the run train would make; suggests optim.lr"),
    "eval": ("vggtune.tasks.eval", "accuracy, F1, confusion matrix and mistakes of a checkpoint on labelled images"),
    "predict": ("vggtune.tasks.predict", "classify an image or a folder of images into a CSV"),
    "export": ("vggtune.tasks.export", "write a checkpoint as an ONNX or TorchScript file for use without vggtune"),
    "benchmark": ("vggtune.tasks.benchmark", "every deployable format side by side: size, accuracy, latency, speed"),
    "summary": ("vggtune.tasks.summary", "layers, parameter counts and activation memory of a VGG"),
    "embed": (
        "vggtune.tasks.embed",
        "the vector the last layer reads, for every image; 2-D maps, TensorBoard projector",
    ),
    "explain": ("vggtune.tasks.explain", "Grad-CAM heatmaps and feature maps for an image or a folder"),
    "audit": (
        "vggtune.tasks.audit",
        "likely label errors, duplicates and leaks across subsets, outliers; an HTML report",
    ),
    "serve": (
        "vggtune.tasks.serve",
        "an HTTP API (LitServe, dynamic batching) and a web page for a checkpoint or ONNX file",
    ),
}

USAGE = """usage: vggtune <task> [key=value ...] [hydra options]

Tasks:
{tasks}

Examples:
  vggtune train experiment=demo                  # offline demo on generated images
  vggtune train data.root=~/pictures/flowers     # one folder per class
  vggtune train data.root=DIR model=vgg19 optim.lr=3e-4 trainer.max_epochs=20
  vggtune train --cfg job                        # print the composed config
  vggtune prepare data.root=DIR output=SHARDS   # litdata shards (a folder or s3://bucket/prefix)
  vggtune train data.stream=SHARDS               # train from them: no data.root needed
  vggtune lr_find data.root=DIR                  # plot loss vs LR, suggest optim.lr
  vggtune train --help                           # config groups and keys
  vggtune eval ckpt=outputs/train/<run>/checkpoints/best.ckpt
  vggtune predict ckpt=... input=~/pictures/unsorted output=predictions.csv top_k=3
  vggtune export ckpt=... format=onnx output=model.onnx
  vggtune export ckpt=... quantize=int8           # int8 ONNX, checked beside fp32 on held-out images
  vggtune benchmark ckpt=...                      # every format on this CPU; serve backend=auto picks
  vggtune summary model=vgg19 finetune=linear_probe
  vggtune embed ckpt=RUN/checkpoints/best.ckpt data.root=~/pictures/flowers
  vggtune explain ckpt=RUN/checkpoints/best.ckpt input=~/pictures/rose.jpg top_k=3
  vggtune audit data.root=~/pictures/flowers      # then open <run folder>/report.html
  vggtune train data.root=DIR data.exclude=RUN/label_issues.csv   # leave the flagged images out
  vggtune serve ckpt=RUN/checkpoints/best.ckpt port=8000   # then open http://127.0.0.1:8000/

Add --debug to see full tracebacks. Version {version}."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vggtune`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        print(f"vggtune {__version__}")
        return
    task, args = argv[0], argv[1:]
    if task not in TASKS:
        _fail(f"unknown task '{task}': choose one of {', '.join(TASKS)} (vggtune --help lists them)")
    debug = "--debug" in args or os.environ.get("HYDRA_FULL_ERROR") == "1"
    args = [a for a in args if a != "--debug"]
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    from vggtune.preflight import prepare

    try:
        args = prepare(task, args)
    except RunComplete as e:  # nothing to do is not a failure: a requeued job that already finished is done
        print(e)
        return
    except UserError as e:
        _fail(str(e))
    _run_hydra(task, args, debug)


def _usage() -> str:
    width = max(map(len, TASKS))
    tasks = "\n".join(f"  {name.ljust(width)}  {desc}" for name, (_, desc) in TASKS.items())
    return USAGE.format(tasks=tasks, version=__version__)


def _fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _run_hydra(task: str, args: list[str], debug: bool) -> None:
    original_argv = list(sys.argv)

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=task, version_base="1.3")
    def entry(cfg: DictConfig):
        # Lightning's DDP launcher re-runs sys.argv for ranks 1..N: give it the task word back.
        sys.argv = [original_argv[0], task, *args]
        try:
            return _call_task(task, cfg)
        except Exception as e:  # noqa: BLE001 - turned into one line when it is the user's to fix
            if task == "train" and cfg.get("resume"):
                restore_run_config(Path(cfg.paths.run_dir))
            user_error = find_user_error(e)
            if _in_sweep() and not debug:  # one failed job must not end the others: record it and go on
                return _failed_job(e, user_error)
            if user_error is None or debug:
                raise
            discard_empty_run()
            _fail(str(user_error))

    sys.argv = [original_argv[0], *args]
    SweepSummary.failed = None
    try:
        entry()
    except KeyboardInterrupt:
        _fail("interrupted", status=130)
    finally:
        sys.argv = original_argv
    if SweepSummary.failed:  # the other jobs ran and the summary is written; the exit status still says so
        _fail(SweepSummary.failed)


def _failed_job(e: Exception, user_error: UserError | None) -> float:
    """A sweep job that failed: its one-line reason in ``error.txt`` (the sweep summary shows it), NaN."""
    from hydra.core.hydra_config import HydraConfig

    job_dir = Path(HydraConfig.get().runtime.output_dir)
    if user_error is not None:
        reason = str(user_error)
    else:  # a bug rather than bad input: the traceback goes to the job's log
        logging.getLogger(__name__).exception("job %s failed", job_dir.name)
        reason = f"{type(e).__name__}: {_first_line(e)} (the traceback is in {job_dir.name}/*.log)"
    print(f"error: job {job_dir.name}: {reason}", file=sys.stderr)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / SWEEP_ERROR_FILE).write_text(reason + "\n", encoding="utf-8")
    return float("nan")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def discard_empty_run() -> None:
    """Remove the run folder of a run refused before it produced anything (only Hydra's files in it).

    Also ``outputs/<task>/`` and ``outputs/`` when that leaves them empty, so that a first command
    that fails leaves the folder it ran in as it was.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.name == hydra_cfg.job.name:  # outputs/<task>/<time>: this run may have made both
            for folder in (run_dir.parent, run_dir.parent.parent):
                if not folder.is_dir() or any(folder.iterdir()):
                    break
                folder.rmdir()


def _call_task(task: str, cfg: DictConfig):
    check_config(cfg, task)  # again for a sweep's jobs, which the command line's checks did not see; before torch loads
    module = importlib.import_module(TASKS[task][0])
    quiet_lightning()
    if os.environ.get("LOCAL_RANK", "0") != "0":
        # DDP ranks started by Lightning share rank zero's terminal: only warnings from them.
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
    return module.run(cfg)


def quiet_lightning() -> None:
    """Lightning adds its own console handler on import; Hydra's root handlers already print and log it."""
    logging.getLogger("lightning").handlers.clear()
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Run folders are fresh (vggtune.preflight) except when resuming, where the checkpoints are the point.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # Frozen BatchNorm layers are in eval mode on purpose (see vggtune.model.finetune).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # data.stream: litdata's StreamingDataset has a length and splits its shards across workers itself.
    warnings.filterwarnings("ignore", message=r".*Your `IterableDataset` has `__len__` defined.*")
    tidy_lightning_messages()  # every task: its device lines and tips


def find_user_error(e: BaseException | None) -> UserError | None:
    """The UserError behind ``e``, also when Hydra's instantiate wrapped it."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
