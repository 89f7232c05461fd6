"""Each command's own keys (conf/<task>.yaml, beside the groups it composes): what each accepts and does.

``TASKS`` says which config groups (vggtune.schema.groups) each command composes, so that every key of its
composed config has one declaration (a task's own ``data.*`` keys, eval's say, are its own: not the data group).
"""

from __future__ import annotations

from vggtune.schema.groups import DATA
from vggtune.schema.kinds import FLAG, TEXT, Anything, Either, Key, Number, OneOf, Text, Whole

# What `vggtune train` logs at the end of each validation (vggtune.model.module); val/acc_top5 with 6+ classes.
MONITORS = ("val/acc", "val/bal_acc", "val/f1", "val/loss", "val/acc_top5", "val/acc_best")
MULTILABEL_MONITORS = ("val/map", "val/acc", "val/f1", "val/f1_tuned", "val/loss", "val/acc_best")
# A CSV's columns and the stream's storage options mean what they mean for train (the data group).
CSV_COLUMNS = {f"data.{k}": DATA[k] for k in ("path_column", "label_column", "split_column", "storage_options")}
TTA_MODES = ("none", "flip", "five_crop")
FIXES = ("auto", "relabel", "drop")  # audit.fix
AUDIT_VECTORS = ("conv", "fc7")  # audit.vectors (vggtune.tasks.audit.image_vectors)
# audit.filter_by: ours first (vggtune.inspect.label_issues.find_label_issues), then cleanlab's own filter_by.
AUDIT_FILTERS = (
    "lowest_self_confidence",
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)

TRAIN = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "seed": Key(
        Whole(), "Seeds the split, the initialisation, the loaders and the augmentation (Lightning's seed_everything)."
    ),
    "ckpt_path": Key(
        Anything("a path"), "Resume training from a checkpoint file (e.g. <run>/checkpoints/last.ckpt).", null=True
    ),
    "resume": Key(
        Anything("a path"),
        "Resume a run in its own folder: resume=<run folder> (finds checkpoints/last.ckpt).",
        null=True,
    ),
    "monitor": Key(
        OneOf(*MONITORS, *(m for m in MULTILABEL_MONITORS if m not in MONITORS)),
        "The metric that picks the best checkpoint and that sweeps optimise. several labels per image (data.label_delim): val/map unless given here",
    ),
    "monitor_mode": Key(
        OneOf("max", "min"), "max: a higher monitor is better (val/acc) | min: a lower one (val/loss)."
    ),
    "threshold": Key(
        Either(OneOf("auto"), Number(0, 1, low_open=True, high_open=True)),
        "Several labels per image: auto picks each label's probability threshold on the validation images (maximising its F1; kept in the checkpoint, used by eval, predict and export), or one cut for all, e.g. 0.5.",
        example="threshold=0.5",
    ),
    "test_after_fit": Key(FLAG, "Evaluate the best checkpoint on the test split at the end, when there is one."),
    # experiment=demo: its steps around the fine-tune (vggtune.tasks.demo)
    "demo.pretrain.family": Key(TEXT, "The generated family the demo's stand-in for ImageNet weights is trained on."),
    "demo.pretrain.per_class": Key(Whole(1), "Its images per class."),
    "demo.pretrain.epochs": Key(Whole(1), "Its epochs."),
    "demo.compare_from_scratch": Key(
        FLAG, "After the fine-tune, train the same network from random init on the same images and say both."
    ),
}

LR_FIND = {
    "lr_find.min_lr": Key(Number(0, low_open=True), "The range test's first learning rate."),
    "lr_find.max_lr": Key(Number(0, low_open=True), "Its last learning rate (above lr_find.min_lr)."),
    "lr_find.num_training": Key(
        Whole(5), "Training steps of the range test (the data loader repeats if an epoch is shorter)."
    ),
    "lr_find.early_stop_threshold": Key(
        Number(0, low_open=True),
        "Stop once the loss exceeds this many times the best loss so far (null: run every step).",
        null=True,
    ),
}

AUDIT = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(
        Anything("a path"),
        "A checkpoint written by `vggtune train` (its classes must be the data's); null: the pretrained network of model= and model.weights= (imagenet, or a state-dict file).",
        null=True,
    ),
    "device": Key(Text(nonempty=True), "auto (a GPU if there is one) | cpu | cuda"),
    "seed": Key(Whole(), "the folds, the heads' initialisation and order"),
    "audit.folds": Key(
        Whole(2),
        "Stratified folds over every image: each image's probabilities come from a head that never saw its label.",
    ),
    "audit.vectors": Key(
        OneOf(*AUDIT_VECTORS),
        "The vectors the folds' heads read: conv (the last conv block averaged over its positions, 512 values) | fc7 (what the network's last layer reads: fc7's 4096, or the pooled head's 512; what `vggtune embed` writes). bench/audit.py, 20% flipped labels, 60 a class, 3 seeds: F1 0.93 with conv, 0.75 with fc7.",
    ),
    "audit.c": Key(
        Number(0, low_open=True),
        "Each fold's head: scikit-learn's LogisticRegression on the standardised vectors, with this C (the inverse of its L2 strength; scikit-learn's and cleanlab's default, 1.0; bench/audit.py measured 0.1 to 10).",
    ),
    "audit.filter_by": Key(
        OneOf(*AUDIT_FILTERS),
        "Which images are likely mislabelled: lowest_self_confidence (as many as cleanlab's default filter flags, those whose given label has the lowest out-of-fold probability; bench/audit.py: F1 0.02-0.09 above cleanlab's default) | cleanlab's own filter_by choices.",
    ),
    "audit.near_duplicate": Key(
        Number(0, 1, low_open=True),
        "Two images are near copies at or above this cosine similarity of their 16 x 16 grey copies (each less its own mean and the data set's; bench/audit.py: planted resized JPEG copies >= 0.996, distinct letters <= 0.986).",
    ),
    "audit.fix": Key(
        OneOf(*FIXES),
        "cleaned_labels.csv: relabel (a likely error takes the suggested label) | auto (the suggested label when its out-of-fold probability is at least relabel_above, drop=1 otherwise) | drop (always drop=1). bench/audit.py, retraining on it after 20% flipped labels, 3 seeds: relabel won back 0.64 and 0.61 of what the noise cost (60 and 20 a class), auto 0.86 and 0.39. The val/test copy of an exact duplicate of another subset's image is marked drop=1 either way.",
    ),
    "audit.relabel_above": Key(
        Number(0, 1), "audit.fix=auto: the out-of-fold probability a suggestion needs to replace the label"
    ),
    "audit.odd.min_side": Key(Whole(1), "Odd images: the shorter side under this many pixels."),
    "audit.odd.max_aspect": Key(Number(1), "Odd images: sides in a ratio above this."),
    "audit.odd.min_std": Key(Number(0), "Odd images: the grey copy's standard deviation under this (a blank image)."),
    "audit.report_rows": Key(Whole(1), "report.html shows this many rows per tab (the CSV files hold them all)."),
}


EMBED = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(
        Anything("a path"),
        "A checkpoint written by `vggtune train`; null: the pretrained ImageNet network of model=.",
        null=True,
    ),
    "device": Key(Text(nonempty=True), "auto (a GPU if there is one) | cpu | cuda"),
    "seed": Key(Whole(), "t-SNE's random state"),
    "metric": Key(
        Text(nonempty=True),
        "Distance for t-SNE and the silhouette score: euclidean | cosine | any scikit-learn metric.",
    ),
    "tsne.perplexity": Key(Number(0, low_open=True), "lowered automatically when there are few images"),
    "projector_max": Key(
        Whole(1),
        "Write at most this many vectors (a random sample) for TensorBoard's projector, which holds them as text.",
    ),
    "data.root": Key(
        Anything("a path"),
        "A folder of class folders (or of train/ val/ [test/] class folders): every image is embedded.",
        null=True,
    ),
    "data.labels": Key(
        Anything("a path"),
        "Or a CSV file with a row per image (path,label): every row is embedded. data.root: its paths' folder.",
        null=True,
    ),
    "data.label_delim": Key(
        TEXT, "several labels per CSV cell: points are coloured by each image's first label", null=True
    ),
    "data.stream": Key(
        Anything("a path"),
        "Or a stream written by `vggtune prepare` (a folder or s3://bucket/prefix): every subset is embedded, from its stored squares (without ckpt, data.image_size defaults to the one it was prepared for).",
        null=True,
    ),
    "data.image_size": Key(
        Whole(32),
        "Crop size in pixels, without ckpt only (a checkpoint brings its own); null: 224 (or the stream's).",
        null=True,
    ),
    "data.batch_size": Key(Whole(1), "Images per batch."),
    "data.num_workers": Key(Either(OneOf("auto"), Whole(0)), "Loader processes: auto = one per core, up to 8."),
    "data.verify": Key(OneOf("header", "full"), "header | full: decode every image while looking for bad files"),
    "data.on_bad_image": Key(
        OneOf("skip", "fail"), "skip: leave bad files out and list them | fail: stop at the first"
    ),
    **CSV_COLUMNS,
}

EXPLAIN = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "ckpt": Key(
        Anything("a path"),
        "A checkpoint written by `vggtune train`; null: the pretrained ImageNet network of model=.",
        null=True,
    ),
    "input": Key(Anything("a path"), "An image file, or a folder: every image in it and its subfolders."),
    "top_k": Key(Whole(1), "Heatmaps for this many of the most probable classes."),
    "layer": Key(
        OneOf("block1", "block2", "block3", "block4", "block5"),
        "Grad-CAM on the last conv layer of this block: block1 ... block5 (coarser and more about the class).",
    ),
    "channels": Key(Whole(1), "Feature maps shown per conv block: its strongest channels."),
    "device": Key(Text(nonempty=True), "auto (a GPU if there is one) | cpu | cuda"),
    "data.image_size": Key(
        Whole(32), "Crop size in pixels, without ckpt only (a checkpoint brings its own); null: 224.", null=True
    ),
}

PREPARE = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "seed": Key(Whole(), "The split's seed, as train's."),
    "output": Key(
        Anything("a path"),
        "Where the shards go: a new (or empty) folder, or s3://bucket/prefix (an S3-compatible server: set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or data.storage_options).",
    ),
    "format": Key(
        OneOf("uint8", "jpeg"),
        "uint8: each image's centre square as raw pixels (exact, 3 x size^2 bytes) | jpeg: that square as a JPEG",
    ),
    "quality": Key(Whole(1, 95), "format=jpeg: JPEG quality, 1 to 95"),
    "chunk_bytes": Key(
        Either(Text(nonempty=True), Whole(1)),
        "litdata shard size: what a worker downloads at a time from object storage",
    ),
    "num_workers": Key(Either(OneOf("auto"), Whole(0)), "Processes resizing the images: auto = one per core, up to 8"),
}

SUMMARY = {
    "task_name": Key(TEXT, "The command's name: the run folder outputs/<task_name>/... and the log's name."),
    "model.num_classes": Key(
        Whole(1), "Outputs of the last layer: 1000 (ImageNet) here; `vggtune train` takes one per class folder."
    ),
    "data.image_size": Key(Whole(32), "Input crop in pixels; null takes the weights' own (224).", null=True),
}
