"""Training throughput: the real training loop through medtl's data pipeline vs the same loop on one in-memory
batch, for the layouts and recipes medtl can train with.

    python benchmarks/train_throughput.py [--data ../shared/data/chest_xray_kermany] [--image-size 224]

Every figure is ``Trainer._train_epoch`` (forward, backward, gradient clipping, AdamW step, schedule) over
``--steps`` batches after a warm-up pass, EfficientNet-Lite0 finetune. ``pipeline``: batches from ``data.loaders``
(memory cache built before timing, random augmentation in the loader); ``in-memory``: one cached batch again and
again, the model's own speed. Configurations: ``before`` (contiguous layout, every stage trains: medtl's default
until the layout became ``auto``), ``auto`` (the layout the machine picks), ``auto`` with the first stages frozen
(``model.frozen_stages``), and that with bfloat16 autocast (``trainer.amp=true``) or with the model compiled
(``torch.compile``, inductor; compilation happens in the warm-up and is not timed), and ``recipe``: the frozen
stages with the training augmentation of ``+experiment=chest_xray`` (read from its config: today another site's
acquisition drawn once per batch in the loader's collation). The ratio is the pipeline's speed over the model's best in-memory speed at any measured
batch size. Also the frozen encoder's feature extraction (what the linear probe and LP-FT encode once), in
float32 and in bfloat16 autocast (``trainer.features.dtype``), on one in-memory batch. Run it alone: another torch
process on the same cores slows it several times. Writes ``benchmarks/results/train_throughput.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from medtl import CONFIG_DIR
from medtl.data import ImageClassificationData
from medtl.engine import Trainer
from medtl.engine.loop import encode_features
from medtl.engine.runtime import in_memory_format, memory_format_for, native_bfloat16
from medtl.models import build_classifier
from medtl.provenance import git_commit, machine_description, markdown_table

HERE = Path(__file__).resolve().parent
PATTERNS = [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]
# the frozen stages with +experiment=chest_xray's training augmentation (read from its config)
RECIPE = "recipe: auto, frozen_stages=3, chest_xray augmentation"
# name: (trainer.memory_format, model.frozen_stages, trainer.amp (bfloat16 autocast on CPU), torch.compile)
CONFIGS = {"before": ("contiguous", 0, False, False), "auto": ("auto", 0, False, False),
           "auto, frozen_stages=3": ("auto", 3, False, False),
           "auto, frozen_stages=3, bf16 autocast": ("auto", 3, True, False),
           "auto, frozen_stages=3, torch.compile": ("auto", 3, False, True),
           RECIPE: ("auto", 3, False, False)}


def experiment_augmentation(experiment: str = "chest_xray") -> dict:
    """``data.augment`` of ``+experiment=<experiment>`` as composed by Hydra (the recipe's training augmentation)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name="config", overrides=[f"+experiment={experiment}"])
    return OmegaConf.to_container(config.data.augment, resolve=True)


def images_per_second(trainer: Trainer, model: torch.nn.Module, batches: list[dict] | object, steps: int) -> float:
    """Source images per second of the training loop over ``steps`` batches, after one warm-up pass of 3 batches."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with in_memory_format(model, memory_format_for(model, trainer.memory_format)):
        trainer.max_steps_per_epoch = 3
        trainer._train_epoch(model, batches, optimizer, scheduler, 0, 1)
        trainer.max_steps_per_epoch = steps
        return trainer._train_epoch(model, batches, optimizer, scheduler, 0, 1)["train/images_per_s"]


def measure(data: ImageClassificationData, size: int, name: str, batch_sizes: list[int], steps: int) -> list[dict]:
    layout, frozen, amp, compiled = CONFIGS[name]
    rows = []
    for batch_size in batch_sizes:
        torch.manual_seed(0)
        model = build_classifier("efficientnet_lite0", "finetune", num_classes=len(data.classes), image_size=size,
                                 frozen_stages=frozen)
        trainer = Trainer(partial(torch.optim.AdamW), progress=False, device="cpu", memory_format=layout, amp=amp)
        model = torch.compile(model) if compiled else model  # inductor; compiled in the 3-batch warm-up
        data.batch_size = batch_size
        train_loader, _ = data.loaders(model.encoder.weights_info, augment=True)  # builds the memory cache
        one = next(iter(train_loader))
        in_memory = images_per_second(trainer, model, [one] * (steps + 3), steps)
        pipeline = images_per_second(trainer, model, train_loader, steps)
        rows.append({"image_size": size, "config": name, "batch_size": batch_size,
                     "in_memory_img_s": round(in_memory, 1), "pipeline_img_s": round(pipeline, 1)})
        print(rows[-1], flush=True)
    best = max(r["in_memory_img_s"] for r in rows)
    for row in rows:
        row["ratio_to_best_in_memory"] = round(row["pipeline_img_s"] / best, 3)
    return rows


def encoding_rows(data: ImageClassificationData, size: int, batch_size: int, repeats: int) -> list[dict]:
    """Images per second of :func:`encode_features` (the frozen encoder, channels-last) over one in-memory batch
    of ``batch_size`` encoded ``repeats`` times after a warm-up, in float32 and in bfloat16 autocast."""
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=len(data.classes), image_size=size)
    data.batch_size = batch_size
    one = next(iter(data.loaders(model.encoder.weights_info, augment=False)[0]))
    layout = memory_format_for(model, "auto")
    rows = []
    with in_memory_format(model, layout):
        for dtype in ("float32", "bfloat16"):
            bf16 = dtype == "bfloat16"
            encode_features(model, [one], torch.device("cpu"), False, bfloat16=bf16, memory_format=layout)
            start = time.perf_counter()
            encode_features(model, [one] * repeats, torch.device("cpu"), False, bfloat16=bf16, memory_format=layout)
            seconds = time.perf_counter() - start
            rows.append({"image_size": size, "features": dtype, "batch_size": len(one["label"]),
                         "img_s": round(len(one["label"]) * repeats / seconds, 1),
                         "auto_chooses_it": (dtype == "bfloat16") == native_bfloat16(torch.device("cpu"))})
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray_kermany"))
    parser.add_argument("--image-size", type=int, nargs="+", default=[224])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--encode-batch-size", type=int, default=64, help="0: skip the feature-extraction rows")
    parser.add_argument("--max-images", type=int, default=800)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--out-name", default="train_throughput")
    args = parser.parse_args(argv)
    rows, encoding = [], []
    for size in args.image_size:
        data = training_data(args, size)
        for name in args.configs:
            config_data = training_data(args, size, experiment_augmentation()) if name == RECIPE else data
            rows += measure(config_data, size, name, args.batch_size, args.steps)
        if args.encode_batch_size:
            encoding += encoding_rows(data, size, args.encode_batch_size, repeats=3)
    write_results(rows, Path(args.results_dir), args.out_name, encoding)


def training_data(args: argparse.Namespace, size: int, augment: dict | None = None) -> ImageClassificationData:
    """The first ``--max-images`` of ``--data`` at ``size`` px, set up, with ``augment`` (default: medtl's)."""
    data = ImageClassificationData(root=args.data, patient_id_patterns=PATTERNS, image_size=size, check=False,
                                   max_images=args.max_images, augment=augment)
    data.setup()
    return data


def write_results(rows: list[dict], out: Path, name: str = "train_throughput", encoding: list[dict] | None = None) -> None:
    commit, machine = git_commit(HERE), machine_description()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "commit": commit, "rows": rows,
                                                  "encoding": encoding or []}, indent=2))
    table = markdown_table(pd.DataFrame(rows).rename(columns={
        "image_size": "image size", "config": "configuration", "batch_size": "batch", "in_memory_img_s": "in-memory img/s",
        "pipeline_img_s": "pipeline img/s", "ratio_to_best_in_memory": "pipeline / best in-memory"}))
    header = (f"Machine: {machine}. Commit {commit}. EfficientNet-Lite0 finetune, the training "
              "loop's step (AdamW, gradient clipping), memory cache + augmentation.")
    text = header + "\n\n" + table + "\n"
    if encoding:
        text += ("\nFeature extraction (frozen encoder, channels-last, one in-memory batch; `trainer.features.dtype=auto` "
                 "chooses the row marked):\n\n" + markdown_table(pd.DataFrame(encoding).rename(columns={
                     "image_size": "image size", "batch_size": "batch", "auto_chooses_it": "auto"})) + "\n")
    (out / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
