"""The keys of the commands that put a trained model to work (conf/eval.yaml, predict, export, benchmark, serve):
what each accepts and does."""

from __future__ import annotations

from vggtune.schema.kinds import FLAG, TEXT, Anything, Either, Key, Number, OneOf, Text, Whole
from vggtune.schema.tasks import CSV_COLUMNS, TTA_MODES

SUBSETS = ("train", "val", "test")  # a checkpoint's own split.csv subsets
QUANTIZE = ("none", "int8", "bf16")  # export quantize=
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # onnxruntime's calibrators
PRECISIONS = ("fp32", "bf16")  # serve precision= of a checkpoint
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds to

EVAL = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(
        Anything("a path"),
        "The checkpoint to judge: <train run folder>/checkpoints/best.ckpt (it carries classes and preprocessing).",
    ),
    "data.root": Key(
        Anything("a path"),
        "A folder of class folders. null: the images of data.subset in the checkpoint's own training run (its split.csv, next to the checkpoints/ folder).",
        null=True,
    ),
    "data.subset": Key(
        OneOf(*SUBSETS), "train | val | test, used when data.root is null (or data.labels has a split column)"
    ),
    "data.labels": Key(
        Anything("a path"),
        "Or a CSV file with a row per image (path,label[,split]); paths relative to data.root or the CSV's folder.",
        null=True,
    ),
    "data.label_delim": Key(
        TEXT, "several labels per image: null takes the checkpoint's (what train was given)", null=True
    ),
    "data.stream": Key(
        Anything("a path"),
        "Or a stream written by `vggtune prepare` (a folder or s3://bucket/prefix): its data.subset images.",
        null=True,
    ),
    "data.batch_size": Key(Whole(1), "Images per batch."),
    "data.num_workers": Key(Either(OneOf("auto"), Whole(0)), "loader processes: auto = one per core, up to 8"),
    "device": Key(Text(nonempty=True), "auto: a GPU if there is one | cpu | cuda | cuda:1"),
    "calibrate": Key(
        FLAG,
        "Divide the logits by the temperature fitted on the validation set during training (stored in the checkpoint): probabilities that mean what they say. Predictions do not change; the ECE before and after is reported either way.",
    ),
    "tta": Key(
        OneOf(*TTA_MODES),
        "Test-time augmentation, probabilities averaged over views: none | flip (image and its mirror; not for text or digits) | five_crop (four corners and the centre). eval reports the gain over the plain view.",
    ),
    "threshold": Key(
        Either(OneOf("auto"), Number(0, 1, low_open=True, high_open=True)),
        "Several labels per image: auto = each label's threshold from the checkpoint (chosen on the validation images), or one cut for every label, e.g. threshold=0.5.",
        example="threshold=0.5",
    ),
    **CSV_COLUMNS,
}

PREDICT = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(Anything("a path"), "The checkpoint to use: <train run folder>/checkpoints/best.ckpt"),
    "input": Key(
        Anything("a path"), "An image file, or a folder (searched recursively; hidden files and folders are skipped)."
    ),
    "output": Key(
        Anything("a path"),
        "The CSV to write, relative to the folder you run vggtune in. null: predictions.csv in the run folder. A copy always goes to the run folder (outputs/predict/<date>_<time>/predictions.csv).",
        null=True,
    ),
    "top_k": Key(Whole(1), "How many classes to list per image, most probable first."),
    "batch_size": Key(Whole(1), "Images per batch."),
    "num_workers": Key(Either(OneOf("auto"), Whole(0)), "loader processes: auto = one per core, up to 8"),
    "device": Key(Text(nonempty=True), "auto: a GPU if there is one | cpu | cuda | cuda:1"),
    "calibrate": Key(
        FLAG,
        "Divide the logits by the checkpoint's temperature (fitted on the validation set): calibrated probabilities.",
    ),
    "tta": Key(
        OneOf(*TTA_MODES),
        "Test-time augmentation, probabilities averaged over views: none | flip (not for text or digits) | five_crop",
    ),
    "threshold": Key(
        Either(OneOf("auto"), Number(0, 1, low_open=True, high_open=True)),
        "Several labels per image: auto = each label's threshold from the checkpoint, or one cut for all (e.g. 0.5).",
        example="threshold=0.5",
    ),
}

EXPORT = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(Anything("a path"), "The checkpoint to export: <train run folder>/checkpoints/best.ckpt"),
    "format": Key(OneOf("onnx", "torchscript"), "onnx (needs pip install 'vggtune[export]') | torchscript"),
    "output": Key(
        Anything("a path"),
        "The file to write, relative to the folder you run vggtune in. null: model.onnx or model.pt in the run folder (outputs/export/<date>_<time>/).",
        null=True,
    ),
    "logits": Key(FLAG, "false: the model returns softmax probabilities | true: raw logits."),
    "calibrate": Key(
        FLAG,
        "Fold the checkpoint's temperature (fitted on the validation set) into the softmax: calibrated probabilities. With logits=true the temperature is only written to the JSON.",
    ),
    "quantize": Key(
        OneOf(*QUANTIZE),
        "Quantize: none | int8 (format=onnx: onnxruntime static quantization, QDQ, per-channel int8 weights; about 4x smaller and several times faster on a CPU, measured by `vggtune benchmark`) | bf16 (format=torchscript, on a CPU with avx512_bf16 or amx_bf16). The quantized file is judged beside fp32 on held-out images.",
    ),
    "calibration_images": Key(
        Whole(1),
        "int8: how many training images set the activation ranges (a seeded sample of the checkpoint's train split, through its own preprocessing; never the images it is then judged on), and how.",
    ),
    "calibration_method": Key(OneOf(*CALIBRATION_METHODS), "minmax | entropy | percentile (onnxruntime's calibrators)"),
    "calibration_root": Key(
        Anything("a path"),
        "null: the checkpoint's own train split; or a folder of training images (labels not needed).",
        null=True,
    ),
    "data.root": Key(
        Anything("a path"),
        "The held-out images the quantized file is judged on, beside fp32: null = the checkpoint's own data.subset split, or a folder of class folders.",
        null=True,
    ),
    "data.subset": Key(OneOf(*SUBSETS), "The checkpoint's own split to judge on when data.root is null."),
    "max_accuracy_drop": Key(
        Number(0),
        "Refuse (exit 2, the file kept for inspection) a quantized file that loses more accuracy points than this.",
    ),
    "force": Key(FLAG, "true: keep and accept it anyway (its JSON says it was forced)"),
}

BENCHMARK = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(Anything("a path"), "The checkpoint to measure: <train run folder>/checkpoints/best.ckpt"),
    "data.root": Key(
        Anything("a path"),
        "The held-out images every format is scored on: null = the checkpoint's own data.subset split, or a folder of class folders.",
        null=True,
    ),
    "data.subset": Key(OneOf(*SUBSETS), "The checkpoint's own split to score on when data.root is null."),
    "formats": Key(
        Anything("a list of formats"),
        "Which formats: eager_fp32 (what serve runs a checkpoint with), eager_bf16 (a CPU with avx512_bf16 or amx_bf16 only), torchscript, onnx_fp32, onnx_int8 (onnxruntime static quantization). null: all of them.",
        null=True,
    ),
    "max_accuracy_drop": Key(
        Number(0), "The recommendation's tolerance: accuracy points a format may lose against eager fp32."
    ),
    "calibration_images": Key(Whole(1), "onnx_int8's calibration, as in `vggtune export quantize=int8`."),
    "calibration_method": Key(
        OneOf(*CALIBRATION_METHODS), "onnx_int8: onnxruntime's calibrator, as export's calibration_method."
    ),
    "calibration_root": Key(
        Anything("a path"),
        "onnx_int8: null = the checkpoint's own train split, or a folder of training images.",
        null=True,
    ),
    "latency_runs": Key(
        Whole(1),
        "Timing: batch-1 runs for the latency percentiles (at most 10 s a format), and batches for the throughput.",
    ),
    "throughput_batch": Key(Whole(1), "Images per batch of the throughput runs."),
    "throughput_batches": Key(Whole(1), "Batches timed for the throughput."),
    "threads": Key(
        Whole(1),
        "CPU threads for every format (PyTorch and onnxruntime alike); null: PyTorch's default, one per core.",
        null=True,
    ),
}


SERVE = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(
        Anything("a path"),
        "What to serve, exactly one of: a training checkpoint (<train run folder>/checkpoints/best.ckpt), or a file written by `vggtune export` (needs its .json beside it; .onnx on onnxruntime, .pt in TorchScript). model=<file> on the command line means onnx=<file> (either kind of file).",
        null=True,
    ),
    "onnx": Key(
        Anything("a path"),
        "Or a file written by `vggtune export` (.onnx or .pt, with its .json beside it); model=<file> on the command line means onnx=<file>.",
        null=True,
    ),
    "backend": Key(
        OneOf("auto"),
        "What runs the model: null = what ckpt= or model= names (a checkpoint in PyTorch; an .onnx file in onnxruntime, a .pt file in TorchScript) | auto = with ckpt=, the fastest format within tolerance that `vggtune benchmark ckpt=...` found on this machine (the checkpoint in fp32 or bf16, or a file it exported).",
        null=True,
    ),
    "precision": Key(
        OneOf(*PRECISIONS),
        "ckpt=: fp32 | bf16 (the network in bfloat16; a CPU with avx512_bf16 or amx_bf16, or a GPU). A file runs in the precision it was exported in (vggtune export quantize=int8 | bf16).",
    ),
    "host": Key(
        OneOf(*HOSTS),
        "127.0.0.1: this machine only. 0.0.0.0: every interface (only behind a firewall or a proxy you trust; without an api_key the server prints a warning).",
    ),
    "api_key": Key(
        Text(nonempty=True),
        "A secret clients send in the X-API-Key header (LitServe's check; also asked for by /health, /info and /stats); null: none (or LitServe's LIT_SERVER_API_KEY environment variable). See docs/serve-overload.md.",
        null=True,
    ),
    "port": Key(Whole(1024, 65535), "The port to listen on."),
    "device": Key(Text(nonempty=True), "auto: a GPU if there is one | cpu | cuda"),
    "workers_per_device": Key(Whole(1), "Model processes per device, each with its own copy of the model."),
    "api_servers": Key(
        Whole(1), "HTTP processes in front of them (they read the uploads); null: one per model process.", null=True
    ),
    "max_batch_size": Key(
        Whole(1),
        "Dynamic batching: requests arriving within batch_timeout seconds of each other run as one batch of up to max_batch_size requests. 1: no batching. Measured in bench/serve_load.py (bench/README.md).",
    ),
    "batch_timeout": Key(Number(0), "Seconds a batch waits for more requests (see max_batch_size); below timeout."),
    "top_k": Key(Whole(1), 'Classes listed per image when a request does not say (?top_k= or "top_k" in the JSON).'),
    "calibrate": Key(
        FLAG, "Divide the logits by the checkpoint's temperature: calibrated probabilities (as predict does)."
    ),
    "tta": Key(
        OneOf(*TTA_MODES), "Test-time augmentation (checkpoints only): none | flip (not for text or digits) | five_crop"
    ),
    "threshold": Key(
        Either(OneOf("auto"), Number(0, 1, low_open=True, high_open=True)),
        "Several labels per image: auto = each label's threshold from the checkpoint, or one cut for all (0.5).",
        example="threshold=0.5",
    ),
    "max_request_mb": Key(
        Whole(1),
        "Requests: larger bodies get 413; so do images of more pixels (checked before decoding: no decompression bombs).",
    ),
    "max_pixels": Key(Whole(1), "Images of more pixels get 413, checked before decoding (no decompression bombs)."),
    "max_queue": Key(
        Whole(0),
        "Requests in flight (queued or in the batch being computed) at most; past it a request gets 503 with Retry-After at once instead of a long wait. 32 = two batches of max_batch_size=16: one computing, one ready behind it, so the model never idles; at VGG16's 2.4-6.5 requests/s on 2-core CPUs (224 px, bench/README.md) that is 5-13 s of work, inside timeout. Raise it with max_batch_size or on a GPU. 0 or null: no bound.",
        null=True,
    ),
    "timeout": Key(
        Number(0),
        "Seconds a request may wait for a model worker to take it (then 504; one already taken runs to the end; 0: no timeout), and SIGTERM's wait for the requests in flight (drain_timeout).",
    ),
    "drain_timeout": Key(Number(0), "Seconds SIGTERM waits for the requests in flight before the server stops."),
    "log_level": Key(
        OneOf("critical", "error", "warning", "info", "debug", "trace"),
        "uvicorn's access log: info shows every request",
    ),
}
