"""The command line's words: each run setting's help line (one place: `cifarlab train`'s
flags, study files and `--help` all take them from here) and each command's examples."""

HELP = {
    "recipe": "a network and training recipe together: fast (the speed recipe for CPUs "
              "and time budgets) or gpu94 (the wide 64-256-256 network for 8 epochs in "
              "batches of 2,000 with airbench94_muon's rates, aimed at 94%% on a GPU with "
              "--compile); other settings given "
              "override it",
    "budget": "training time, e.g. 90s, 5m or 1h: the steps that fit are planned from the "
              "measured speed and the schedule spans them (replaces --epochs); with the "
              "fast recipe and no --filters it also picks the width: 32-128-128 where it buys "
              "the preset 4 epochs, gpu94's network and rates where it buys that 8",
    "progressive": "fraction of the training steps on half-resolution (16x16) images, "
                   "which are 4x cheaper",
    "bn_reestimate": "batch-norm statistics re-estimated on training images before each "
                     "evaluation: auto (while a short run's running averages have not caught "
                     "up), always or never",
    "tta": "test-time augmentation at evaluation: 0 none, 1 flips, 2 flips and 1-pixel shifts",
    "tta_share": "share of the test images given all of --tta's views: the least confident "
                 "by their plain prediction (the rest keep it; 1: every image)",
    "model": "network preset: simple, deep, batchnorm or fast (see `cifarlab models`)",
    "blocks": "number of conv blocks (each ends in a 2x2 max-pool); extra blocks double filters",
    "filters": "filters per block, e.g. 32,64,128",
    "convs_per_block": "convolutions in each block",
    "kernel_size": "convolution kernel size",
    "batchnorm": "batch norm after every convolution",
    "head": "flatten or gap (global average pooling)",
    "dense": "hidden dense layer sizes, e.g. 128,32 ('none' for no hidden layer)",
    "dropout": "dropout rate, at the preset's position",
    "data": "CIFAR-10 folder, archive or image-folder tree (default: $CIFARLAB_DATA, else "
            "the user cache, downloading the official archive if needed)",
    "val_split": "validation images carved from the training set; 0 validates on the test "
                 "set like the original study",
    "fraction": "train on this stratified fraction of the training images, in (0, 1]",
    "split_seed": "seed of the validation split and the training subset",
    "normalize": "unit (pixels in [0, 1], the study's) or standard (per-channel mean/std)",
    "augment": "training augmentation: comma-separated flip, altflip, translate[:N], "
               "cutout[:N], e.g. flip,translate:4 (default none, as in the study)",
    "epochs": "maximum number of epochs",
    "batch_size": "images per training step",
    "optimizer": "adam, adamw, sgd (Nesterov momentum) or muon (orthogonalised updates of "
                 "the convolution filters, SGD for the rest; needs batch norm)",
    "lr": "learning rate (the peak rate with a schedule)",
    "momentum": "SGD momentum (with muon: of the biases, batch-norm shifts and head)",
    "muon_lr": "muon: the filters' relative change per step",
    "muon_momentum": "muon: the filters' Nesterov momentum",
    "bias_lr": "sgd and muon: learning rate of the biases and batch-norm shifts (default: "
               "--lr); their weight decay per step stays that of --lr",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "weight decay",
    "label_smoothing": "label smoothing of the cross-entropy targets",
    "schedule": "learning-rate schedule: constant, onecycle, cosine or linear (warm-up then "
                "linear decay)",
    "warmup": "linear schedule: share of the steps spent warming up (0: straight decay)",
    "whiten_bias": "fast networks (sgd or muon, linear schedule): share of the steps in which "
                   "the whitening stem's bias trains, its rate falling to 0 by then; e.g. "
                   "0.375 as airbench",
    "lookahead": "keep slow weights that move towards the trained ones every 5 steps (over "
                 "a window that widens as the run goes on), pull the network back to them "
                 "each time, and end on them, as the airbench records do",
    "early_stopping": "METRIC:PATIENCE, e.g. val_accuracy:10 or val_loss:5",
    "min_delta": "smallest change of the monitored metric that counts as an improvement",
    "start_from_epoch": "epochs of warm-up before early stopping starts watching",
    "seed": "seed of the weights, shuffling and dropout: same seed, same run",
    "device": "auto, cpu or cuda",
    "compile": "torch.compile the network for training (worth it on a GPU; compiling and "
               "warming up are not counted as training time)",
    "precision": "auto (bf16 on GPUs with native bf16, and for the fast network on CPUs "
                 "with native bf16: AVX-512 BF16 or AMX; else float32), float32, or bf16 "
                 "(refused where it would be emulated)",
}

EXAMPLES = {
    "train": "examples:\n"
             "  cifarlab train --model simple --data ../shared/data/cifar10-jpeg --epochs 10\n"
             "  cifarlab train --model batchnorm --epochs 30 --early-stopping val_accuracy:5\n"
             "  cifarlab train --model simple --blocks 4 --dropout 0.5 --fraction 0.2\n"
             "  cifarlab train --config my-run.toml --seed 3\n"
             "  cifarlab train --resume runs/batchnorm-20261129-101500",
    "evaluate": "example:\n  cifarlab evaluate runs/simple-20261129-101500",
    "models": "example:\n  cifarlab models",
    "study": "examples:\n"
             "  cifarlab study --list\n"
             "  cifarlab study seed --print > my-study.toml\n"
             "  cifarlab study quick --data ../shared/data/cifar10-jpeg --jobs 2 --out runs/quick\n"
             "  cifarlab study seed --data ../shared/data/cifar10-jpeg --seeds 5 --fraction 0.1 "
             "--max-epochs 10 --jobs 2 --out runs/seed-small\n"
             "  cifarlab study quick --budget 15m --data ../shared/data/cifar10-jpeg --jobs 2 "
             "--out runs/quick-15m\n"
             "  cifarlab study my-study.toml --out runs/mine\n"
             "  cifarlab study my-study.toml --executor ray --address head-node:6379",
    "report": "example:\n  cifarlab report runs/quick",
    "export": "examples:\n  cifarlab export runs/batchnorm-20261129-101500 --format onnx\n"
              "  cifarlab export runs/batchnorm-20261129-101500 --format torchscript",
    "predict": "examples:\n  cifarlab predict runs/batchnorm-20261129-101500 cat.jpg holiday/\n"
               "  cifarlab predict runs/batchnorm-20261129-101500 photos/ --top-k 1 --json",
    "compare": "example:\n  cifarlab compare runs/seed-small runs/simple-20261129-101500 "
               "--out runs/comparison",
}
