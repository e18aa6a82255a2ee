"""Training throughput through medtl's data pipeline vs the model's own forward+backward on in-memory tensors.

    python benchmarks/train_throughput.py [--data ../shared/data/chest_xray_kermany] [--image-size 96]

Both loops do the same optimiser step (cross-entropy, backward, AdamW) on the same finetune model;
the pipeline loop reads batches from ``data.loaders`` (memory cache, random augmentation in the
loader, ``data.num_workers`` as configured); the reference loop reuses one in-memory batch. The cache
is built before timing. Writes ``benchmarks/results/train_throughput.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from medtl.data import ImageClassificationData
from medtl.models import build_classifier
from medtl.provenance import git_commit, machine_description

HERE = Path(__file__).resolve().parent
PATTERNS = [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]


def images_per_second(model: nn.Module, batches: Iterable[dict], steps: int, warmup: int = 3) -> float:
    """Source images per second over ``steps`` optimiser steps after ``warmup`` steps (loading included)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    iterator, seen, start = iter(batches), 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            seen, start = 0, time.perf_counter()
        batch = next(iterator)
        loss = nn.functional.cross_entropy(model(batch["image"].float()), torch.as_tensor(batch["label"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch["label"])
    return seen / (time.perf_counter() - start)


def endless(loader: Iterable[dict]) -> Iterable[dict]:
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray_kermany"))
    parser.add_argument("--image-size", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-images", type=int, default=1500)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    rows = []
    for size in args.image_size:
        data = ImageClassificationData(root=args.data, patient_id_patterns=PATTERNS, image_size=size,
                                       batch_size=args.batch_size, check=False, max_images=args.max_images)
        data.setup()
        torch.manual_seed(0)
        model = build_classifier("efficientnet_lite0", "finetune", num_classes=len(data.classes), image_size=size)
        train_loader, _ = data.loaders(model.encoder.weights_info, augment=True)  # builds the memory cache
        in_memory = next(iter(train_loader))
        reference = images_per_second(model, endless([in_memory]), args.steps)
        pipeline = images_per_second(model, endless(train_loader), args.steps)
        rows.append({"image_size": size, "batch_size": args.batch_size, "in_memory_img_s": round(reference, 1),
                     "pipeline_img_s": round(pipeline, 1), "ratio": round(pipeline / reference, 3)})
        print(rows[-1])
    write_results(rows, Path(args.results_dir))


def write_results(rows: list[dict], out: Path) -> None:
    commit, machine = git_commit(HERE), machine_description()
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps({"machine": machine, "commit": commit, "rows": rows}, indent=2))
    lines = [f"Machine: {machine}. Commit {commit}. EfficientNet-Lite0 finetune, AdamW step, memory cache + augmentation.",
             "", "| image size | batch | in-memory fwd+bwd img/s | training pipeline img/s | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['image_size']} | {r['batch_size']} | {r['in_memory_img_s']} | {r['pipeline_img_s']} | {r['ratio']} |"
              for r in rows]
    (out / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
