"""The config groups that ``vggtune train`` composes (conf/<group>/*.yaml): each key that vggtune itself reads,
with what it accepts and what it does. Keys of a group's options are declared together (``optim.momentum`` is
sgd's). Lightning's own keys, passed through to Lightning as they are (``trainer.*`` but ``max_epochs``, the
``_target_`` callbacks and loggers but for the keys below), are not declared here: the reference shows their
comments in conf/, and the command line checks an override of one against the type of its default.
"""

from __future__ import annotations

from vggtune.schema.kinds import FLAG, TEXT, Anything, Either, Key, Number, OneOf, Whole

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
# vgg: VGG's own fc6/fc7 (pretrained) and a new last layer | pooled: fastai's head, all new.
HEADS = ("vgg", "pooled")
SCHEDULES = ("linear_probe", "freeze_unfreeze", "gradual", "full")
BN_MODES = ("frozen", "train")
AUGMENT_LEVELS = ("none", "light", "crop", "strong")
VERIFY_MODES = ("header", "full", "files")
ON_BAD_IMAGE = ("skip", "fail")
PROGRESS_MODES = ("auto", "bar", "plain")
WANDB_MODES = ("offline", "online", "disabled")

DATA = {
    "root": Key(
        Anything("a path"),
        "A folder of class folders (split here), or a folder with train/ val/ [test/] of class folders.",
        null=True,
    ),
    "labels": Key(
        Anything("a path"),
        "Or a CSV file with a row per image: its path (relative to root, or to the CSV's folder, or absolute) and its label, optionally its subset (train/val/test: the CSV's own split). root defaults to the CSV's folder.",
        null=True,
    ),
    "path_column": Key(
        TEXT, "null: the first of path, filename, file, image, image_path, fname, file_name, name", null=True
    ),
    "label_column": Key(TEXT, "null: the first of label, labels, class, category, target, y", null=True),
    "split_column": Key(
        TEXT, "null: split or subset if the CSV has one, else a seeded split by val_split/test_split", null=True
    ),
    "label_delim": Key(
        TEXT,
        "Several labels per image (multi-label): the character(s) between the labels of a CSV cell; on the command line quote the whole override: \"data.label_delim=' '\" or \"data.label_delim=';'\". The loss is then BCE, the outputs sigmoid probabilities, and monitor defaults to val/map.",
        null=True,
    ),
    "val_split": Key(
        Number(0, 1, high_open=True),
        "The share of the images held out for validation (a seeded split, stratified by class); 0 is refused: the best checkpoint is chosen on them.",
    ),
    "test_split": Key(
        Number(0, 1, high_open=True), "The share held out as the test split (evaluated at the end with test_after_fit)."
    ),
    "image_size": Key(Whole(32), "Crop size in pixels; null takes the weights' own (224).", null=True),
    "batch_size": Key(Whole(1), "Per device: with trainer.devices=4 a step sees 4 x batch_size images."),
    "num_workers": Key(
        Either(OneOf("auto"), Whole(0)),
        "Loader processes: auto = one per core, up to 8; 0 loads in the training process.",
    ),
    "pin_memory": Key(
        Either(OneOf("auto"), FLAG),
        "Page-locked host memory for faster copies to a GPU: auto = on when training on a GPU.",
    ),
    "augment": Key(
        OneOf(*AUGMENT_LEVELS),
        'none (default) | light: fastai\'s aug_transforms() set (mirror flip, rotation up to 10 degrees, zoom up to 1.1, brightness and contrast 0.2; no crop, and no warp: data.warp=0.2 adds a warp) | crop: a random resized crop keeping 35% of the area or more, and the flip (the earlier light) | strong: any crop, flip, TrivialAugment, random erasing. Measured (docs/recipe.md, bench/README.md "Augmentation"): on 5-epoch fine-tunes of small data sets, none wins.',
    ),
    "crop_scale": Key(
        Number(0, 1, low_open=True),
        "The steps of light and crop; null takes the level's value. The smallest share of the image's area a random training crop keeps (1.0: no crop; light 1.0, crop 0.35).",
        null=True,
    ),
    "flip": Key(FLAG, "a mirrored letter is another letter"),
    "rotate": Key(
        Number(0, 180),
        "After the crop and flip (torchvision v2; the image cache and the stream draw the same on the device): rotation in [-rotate, rotate] degrees and zoom in [1, zoom] together, then a perspective warp (RandomPerspective's distortion_scale), each with probability affine_p; then brightness and contrast factors in [1 - x, 1 + x], each with probability lighting_p. light: 10, 1.1, 0 (off), 0.75, 0.2, 0.2, 0.75; crop: 0 (zoom 1: off). degrees either way (light: 10)",
        null=True,
    ),
    "zoom": Key(Number(1, 4), "zoom in [1, zoom], with the rotation (light: 1.1)", null=True),
    "warp": Key(
        Number(0, 1),
        "RandomPerspective's distortion_scale: it pulls the corners in, leaving fill borders (light: 0, off; measured: bench/README.md)",
        null=True,
    ),
    "affine_p": Key(Number(0, 1), "probability of the rotation+zoom, and of the warp (light: 0.75)", null=True),
    "brightness": Key(Number(0, 0.99), "brightness factor in [1 - x, 1 + x] (light: 0.2)", null=True),
    "contrast": Key(Number(0, 0.99), "contrast factor in [1 - x, 1 + x] (light: 0.2)", null=True),
    "lighting_p": Key(Number(0, 1), "probability of each of brightness and contrast (light: 0.75)", null=True),
    "mixup": Key(
        Number(0),
        "Mix training images in pairs (torchvision.transforms.v2's MixUp and CutMix): MixUp blends two images, CutMix pastes a patch of one into the other, and the target becomes the two classes' shares. The value is the alpha of the Beta distribution the share is drawn from: 0 is off, 0.2 (MixUp) and 1.0 (CutMix) are usual; with both set each batch draws one. train/acc then counts the class with the larger share.",
        example="data.mixup=0.2",
    ),
    "cutmix": Key(
        Number(0),
        "The alpha of CutMix's Beta distribution, as data.mixup is MixUp's: 0 is off, 1.0 is usual.",
        example="data.cutmix=1.0",
    ),
    "balance": Key(
        OneOf("none", "sampler", "loss"),
        "Unbalanced classes: none | sampler (each epoch draws len(train) images with replacement, every class equally likely) | loss (class weights in the training loss: n / (classes x images of the class), or class_weights, a list in class order or a mapping by class name).",
    ),
    "class_weights": Key(
        Anything("a list of positive numbers in class order, or a mapping by class name"),
        "data.balance=loss: the class weights to use instead of n / (classes x images of the class); null: those.",
        null=True,
    ),
    "verify": Key(
        OneOf(*VERIFY_MODES),
        "header: fast check of every file before training | full: decode every image | files: only that each file exists and is not empty (a 100,000-row CSV: 37 s with header, 7 s with files on 2 cores; bench/labels_csv.py)",
    ),
    "on_bad_image": Key(OneOf(*ON_BAD_IMAGE), "skip: leave bad files out and list them | fail: stop at the first"),
    "exclude": Key(
        Anything("a path, or a list of paths"),
        "Leave images out (after the split, which the others keep), each listed in skipped_images.txt: a CSV with a path column (vggtune audit's label_issues.csv), a text file of paths, or a list: data.exclude=[cats/a.jpg]",
        null=True,
    ),
    "cache_features": Key(
        FLAG,
        "With finetune=linear_probe: compute each image's frozen-backbone output once and train the head from it (augmentation off). Kept in cache_dir, keyed by model, weights, preprocessing and files.",
    ),
    "cache_images": Key(
        Either(OneOf("auto"), FLAG),
        "Decode and resize every image once into a uint8 file in cache_dir, then crop, flip and normalise batches on the device: what keeps a GPU fed. auto = on when training on a GPU (augment light/none). Built once per node (local rank 0; the other ranks wait), a few MB at a time straight into the file.",
    ),
    "cache_workers": Key(
        Either(OneOf("auto"), Whole(1)),
        "Processes decoding images for that cache: auto = one per core (the node's other ranks are waiting); 1 = in-process",
    ),
    "cache_dir": Key(
        Anything("a path"),
        "Where data.cache_images and data.cache_features keep their files (one per model, preprocessing and file set).",
    ),
    "stream": Key(
        Anything("a path"),
        "Train from shards written by `vggtune prepare` (a folder or s3://bucket/prefix) instead of the image files: classes and split come from the stream (data.root is not needed), batches are cropped, flipped and normalised on the device as with cache_images. Object storage: credentials and endpoint from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) or storage_options.",
        null=True,
    ),
    "storage_options": Key(
        Anything("a mapping"),
        "Passed to boto3's S3 client (litdata's storage_options), e.g. {endpoint_url: 'http://127.0.0.1:9000'}",
        null=True,
    ),
    "seed": Key(Whole(), "The split's seed: the run's seed."),
    "arch": Key(TEXT, "The model's architecture (model.arch), which sets the preprocessing."),
    "family": Key(
        TEXT,
        "demo, demo_multilabel: which generated images: letters-b (A to E), letters-a (K to O), textures, shapes; colours (the multi-label demo).",
    ),
    "per_class": Key(Whole(1), "demo: generated images per class."),
    "source_size": Key(Whole(8), "demo, demo_multilabel: the generated images' side in pixels."),
    "classes": Key(Whole(2), "demo: how many classes (letters) to generate."),
    "images": Key(Whole(1), "demo_multilabel: how many grids to generate."),
}

MODEL = {
    "arch": Key(OneOf(*ARCHS), "The VGG of torchvision to fine-tune (the option's name)."),
    "weights": Key(
        Anything("a path"),
        "imagenet (torchvision's IMAGENET1K_V1, downloaded once) | none (random init) | /path/to/state_dict.pth",
    ),
    "dropout": Key(
        Number(0, 1, high_open=True),
        "Dropout of the head's hidden layers (model.head=pooled: half of it before the first).",
    ),
    "label_smoothing": Key(
        Number(0, 1, high_open=True),
        "Label smoothing of the training loss (cross-entropy against 1 - e on the class, e spread over all classes); validation and test losses stay plain. One label per image only.",
        example="model.label_smoothing=0.1",
    ),
    "head": Key(
        OneOf(*HEADS),
        "pooled (default): fastai's head on the conv blocks (max+avg pool, BatchNorm, 512 hidden), all new | vgg: keep the pretrained fc6/fc7 and replace only the last layer (docs/recipe.md)",
    ),
    "compile": Key(FLAG, "Compile the model with torch.compile (GPU; the first steps are slow while it compiles)."),
    "channels_last": Key(Either(OneOf("auto"), FLAG), "channels_last memory format: auto = on a GPU."),
}

FINETUNE = {
    "name": Key(OneOf(*SCHEDULES), "The schedule (the option's name): freeze_unfreeze, full, gradual or linear_probe."),
    "unfreeze_at_epoch": Key(
        Whole(0),
        "The epoch (from 0) at which the frozen groups start to train (freeze_unfreeze, gradual); 0 with linear_probe.",
    ),
    "every_n_epochs": Key(Whole(1), "gradual: one more group unfreezes every this many epochs."),
    "train_fc": Key(FLAG, "Whether fc6/fc7 train along with the head while the conv blocks are frozen."),
    "lr_decay": Key(
        Number(0, 1, low_open=True),
        "Each layer group's learning rate is the base LR x lr_decay ** its depth (head 0, fc 1, block5 2, ... block1 6); 1: the same LR everywhere.",
    ),
    "backbone_lr_ratio": Key(
        Number(0, 1, low_open=True), "set e.g. 0.1 to give every non-head group 0.1 x the base LR instead", null=True
    ),
    "bn": Key(OneOf(*BN_MODES), "frozen: BatchNorm of frozen groups in eval mode | train"),
}

OPTIM = {
    "lr": Key(
        Number(0, low_open=True),
        "The base learning rate, the head's; lower layer groups get finetune.lr_decay ** depth of it.",
        example="optim.lr=1e-3",
    ),
    "weight_decay": Key(Number(0), "Decoupled weight decay (AdamW) or L2 penalty (SGD)."),
    "fused": Key(
        FLAG,
        "fused: one kernel for all tensors; 2x faster than foreach on a CPU for VGG's 130M parameters (adamw); an sgd step over them takes 0.07 s instead of 0.36 s with foreach (vgg11, 2 cores, bench/README.md)",
    ),
    "momentum": Key(Number(0, 1), "sgd: momentum."),
    "nesterov": Key(FLAG, "sgd: Nesterov momentum."),
}

SCHEDULER = {
    "warmup_fraction": Key(
        Number(0, 1, high_open=True), "cosine: the share of the run spent warming up linearly from 0."
    ),
    "final_ratio": Key(Number(0, 1), "cosine: the LR at the end, as a share of the initial LR."),
    "pct_start": Key(
        Number(0, 1, low_open=True, high_open=True), "one_cycle: the share of the run the learning rate rises for."
    ),
    "div_factor": Key(Number(0, low_open=True), "one_cycle: the LR starts at lr / div_factor."),
    "final_div_factor": Key(
        Number(0, low_open=True), "one_cycle: the LR ends at lr / (div_factor x final_div_factor)."
    ),
    "cycle_momentum": Key(FLAG, "one_cycle: cycle AdamW's beta1 (SGD's momentum) 0.95 -> 0.85 -> 0.95 against the LR."),
    "monitor": Key(TEXT, "plateau: the metric whose stalling lowers the LR."),
    "factor": Key(
        Number(0, 1, low_open=True, high_open=True), "plateau: the LR is multiplied by this when the metric stalls."
    ),
    "patience": Key(Whole(0), "plateau: validation epochs without improvement before the LR drops."),
    "step_epochs": Key(Whole(1), "step: the LR drops every this many epochs."),
    "gamma": Key(Number(0, 1, low_open=True), "step: the LR is multiplied by this at each drop."),
}

PATHS = {
    "output_dir": Key(
        Anything("a path"), "Where runs go: outputs/<task>/<date>_<time>/ (relative to the folder you run vggtune in)."
    ),
    "data_dir": Key(Anything("a path"), "Where generated data goes (the demo's images and weights)."),
    "run_dir": Key(
        Anything("a path"), "This run's folder, chosen by Hydra (hydra.run.dir) when the run starts.", null=True
    ),
}

CALLBACKS = {
    "progress_bar.mode": Key(
        OneOf(*PROGRESS_MODES),
        "auto: a bar when stdout is a terminal, plain lines otherwise (nohup, SLURM, a pipe); or bar, plain.",
    ),
    "progress_bar.refresh_seconds": Key(
        Number(0), "The bar is redrawn (and the loss read back from the device) at most this often, in seconds."
    ),
    "progress_bar.every_n_steps": Key(
        Whole(1), "Off a terminal: a line every this many training steps, and one per epoch."
    ),
}

LOGGER = {
    "log_best_checkpoint": Key(
        FLAG,
        "logger=mlflow, logger=wandb: upload checkpoints/best.ckpt when training ends (MLflow: best/best.ckpt among the run's artifacts; W&B: a model artifact model-<run id>); false: none. last.ckpt is never uploaded: with the optimizer's state it is up to 3x the weights.",
    ),
    "images_every_n_epochs": Key(
        Whole(0),
        "logger=tensorboard: the validation confusion matrix and prediction grid every n epochs and after the last one; 0: no images.",
    ),
    "grid_images": Key(
        Whole(0),
        "Validation images in the prediction grid: mistakes first (most confident first), then the least sure hits.",
    ),
    "wandb.mode": Key(
        OneOf(*WANDB_MODES),
        "offline (default): nothing leaves the machine; upload later with `wandb sync <run>/wandb/offline-run-*`. online: streams to W&B, with your key in WANDB_API_KEY (or from `wandb login`).",
    ),
}

TRAINER = {
    "max_epochs": Key(Whole(1), "Epochs of the run: the learning-rate and freeze schedules are laid out over it."),
}


GROUPS = {
    "data": DATA,
    "model": MODEL,
    "finetune": FINETUNE,
    "optim": OPTIM,
    "scheduler": SCHEDULER,
    "callbacks": CALLBACKS,
    "logger": LOGGER,
    "trainer": TRAINER,
    "paths": PATHS,
}
