"""Images per second through medtl's deterministic pipeline: first pass (decode) vs cached pass.

    python benchmarks/io_throughput.py [--data ../shared/data/chest_xray_kermany] [--limit 0]

For the JPEGs of ``train/`` and for 12-bit MONOCHROME1 DICOM copies of them (written to a temporary
folder first), measures one pass with an empty disk cache (``data.cache=disk``: decode, window,
resize, write) and a second pass that reads the cache. Writes
``benchmarks/results/io_throughput.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from medtl.data import ImageClassificationData
from medtl.data.demo import write_dx_dicom
from medtl.models.registry import WeightsInfo

HERE = Path(__file__).resolve().parent
PATTERNS = [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]


def dicom_copies(root: Path, out: Path, limit: int) -> Path:
    """Write every JPEG of ``root/train`` as a 12-bit MONOCHROME1 DICOM with a rescale, same tree."""
    jpegs = sorted((root / "train").rglob("*.jpeg"))[: limit or None]
    for jpeg in tqdm(jpegs, desc="writing DICOM copies", unit="image"):
        target = out / "train" / jpeg.parent.name / (jpeg.stem + ".dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        grey = np.asarray(Image.open(jpeg).convert("L"), dtype=np.float64) / 255.0
        write_dx_dicom(target, grey, "P", monochrome1=True, rescale=(2.0, -1024.0))
    return out


def one_pass(data: ImageClassificationData) -> tuple[int, float]:
    """Run every training and validation item through the deterministic pipeline once."""
    weights = WeightsInfo(source="benchmark")
    start = time.perf_counter()
    count = 0
    for split in ("train", "val"):
        dataset = data.dataset(split, _deterministic(data, weights), weights)
        for index in range(len(dataset)):
            dataset[index]
            count += 1
    return count, time.perf_counter() - start


def _deterministic(data: ImageClassificationData, weights: WeightsInfo):  # type: ignore[no-untyped-def]
    from medtl.data.transforms import eval_transforms

    return eval_transforms(data.image_size, weights, data.intensity, data.dicom, storage_dtype=np.float16)


def measure(root: Path, label: str, limit: int, cache_dir: Path) -> dict:
    data = ImageClassificationData(root=str(root), patient_id_patterns=PATTERNS, image_size=224, cache="disk",
                                   cache_dir=str(cache_dir), check=False, max_images=limit or None)
    data.setup()
    first_n, first_s = one_pass(data)
    cached_n, cached_s = one_pass(data)
    size_mb = sum(p.stat().st_size for p in cache_dir.glob("*.pt")) / 2**20
    source_mb = sum(Path(p).stat().st_size for p in data.frame["path"]) / 2**20
    return {"source": label, "images": first_n, "first_pass_img_s": round(first_n / first_s, 1),
            "cached_pass_img_s": round(cached_n / cached_s, 1), "source_mb": round(source_mb, 1),
            "cache_mb": round(size_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray_kermany"))
    parser.add_argument("--limit", type=int, default=0, help="use about this many images (0: all)")
    args = parser.parse_args()
    root = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(root, "JPEG (as published)", args.limit, Path(tmp) / "cache_jpeg")]
        dicom_root = dicom_copies(root, Path(tmp) / "dicom", args.limit)
        rows.append(measure(dicom_root, "DICOM copies (12-bit MONOCHROME1, rescale)", args.limit, Path(tmp) / "cache_dcm"))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    data = os.path.relpath(args.data, HERE.parent)
    (out / "io_throughput.json").write_text(json.dumps({"machine": machine, "data": data, "runs": rows}, indent=2))
    lines = [f"Machine: {machine}. 224 px, deterministic pipeline (decode, window, letterbox, normalise).", "",
             "| source | images | first pass (img/s) | cached pass (img/s) | source files (MB) | disk cache (MB) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['images']} | {r['first_pass_img_s']} | {r['cached_pass_img_s']} | "
              f"{r['source_mb']} | {r['cache_mb']} |" for r in rows]
    (out / "io_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
