"""Training throughput: the real training loop through medtl's data pipeline vs the same loop on one in-memory
batch, for the layouts and recipes medtl can train with.

    python benchmarks/train_throughput.py [--data ../shared/data/chest_xray_kermany] [--image-size 224]

Every figure is ``Trainer._train_epoch`` (forward, backward, gradient clipping, AdamW step, schedule) over
``--steps`` batches after a warm-up pass, EfficientNet-Lite0 finetune. ``pipeline``: batches from ``data.loaders``
(memory cache built before timing, random augmentation in the loader); ``in-memory``: one cached batch again and
again, the model's own speed. Configurations: ``before`` (contiguous layout, every stage trains: medtl's default
until the layout became ``auto``), ``auto`` (the layout the machine picks), ``auto`` with the first stages frozen
(``model.frozen_stages``), and that with bfloat16 autocast (``trainer.amp=true``) or with the model compiled
(``torch.compile``, inductor; compilation happens in the warm-up and is not timed). The ratio is the pipeline's speed over the model's best in-memory speed at any measured
batch size. Run it alone: another torch process on the same cores slows it several times. Writes
``benchmarks/results/train_throughput.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from medtl.data import ImageClassificationData
from medtl.engine import Trainer
from medtl.engine.runtime import in_memory_format, memory_format_for
from medtl.models import build_classifier
from medtl.provenance import git_commit, machine_description, markdown_table

HERE = Path(__file__).resolve().parent
PATTERNS = [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]
# name: (trainer.memory_format, model.frozen_stages, trainer.amp (bfloat16 autocast on CPU), torch.compile)
CONFIGS = {"before": ("contiguous", 0, False, False), "auto": ("auto", 0, False, False),
           "auto, frozen_stages=3": ("auto", 3, False, False),
           "auto, frozen_stages=3, bf16 autocast": ("auto", 3, True, False),
           "auto, frozen_stages=3, torch.compile": ("auto", 3, False, True)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray_kermany"))
    parser.add_argument("--image-size", type=int, nargs="+", default=[224])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--max-images", type=int, default=800)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--out-name", default="train_throughput")
    args = parser.parse_args()
    rows = []
    for size in args.image_size:
        data = ImageClassificationData(root=args.data, patient_id_patterns=PATTERNS, image_size=size,
                                       check=False, max_images=args.max_images)
        data.setup()
        for name in args.configs:
            rows += measure(data, size, name, args.batch_size, args.steps)
    write_results(rows, Path(args.results_dir), args.out_name)


def write_results(rows: list[dict], out: Path, name: str = "train_throughput") -> None:
    commit, machine = git_commit(HERE), machine_description()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "commit": commit, "rows": rows},
                                                          indent=2))
    table = markdown_table(pd.DataFrame(rows).rename(columns={
        "image_size": "image size", "config": "configuration", "batch_size": "batch", "in_memory_img_s": "in-memory img/s",
        "pipeline_img_s": "pipeline img/s", "ratio_to_best_in_memory": "pipeline / best in-memory"}))
    header = (f"Machine: {machine}. Commit {commit}. EfficientNet-Lite0 finetune, the training "
              "loop's step (AdamW, gradient clipping), memory cache + augmentation.")
    (out / f"{name}.md").write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
