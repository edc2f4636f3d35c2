"""`edgekit demo`: the longest chain that runs end to end on the shipped models.

Today: synthetic data -> accuracy of both shipped models on its test split -> a short fine-tune of the
shipped detector (transfer learning) -> its accuracy again. The export, engine build and stream stages
join this chain as they land.
"""

import time
from pathlib import Path
from typing import Dict, List

from .errors import EdgekitError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "detection": ROOT / "models" / "detector" / "edgenet-det-s.safetensors",
    "segmentation": ROOT / "models" / "segmenter" / "edgenet-seg-s.safetensors",
}


def shipped_checkpoint(task: str) -> Path:
    path = SHIPPED[task]
    if not path.is_file():
        raise EdgekitError(f"{path}: shipped {task} model not found (is this a complete checkout?)")
    return path


def run(out: Path, seed: int = 1) -> List[Dict]:
    from .data.writer import write_dataset
    from .train.loop import TrainConfig, evaluate_checkpoint, train

    data = out / "data"
    t0 = time.perf_counter()
    print(f"[1/3] synthetic data (seed {seed}) -> {data}")
    write_dataset(data, seed=seed, counts={"train": 160, "val": 40, "test": 100}, videos=1, video_frames=60,
                  overwrite=True, progress=False)
    rows = []
    print("[2/3] accuracy of the shipped models on its test split")
    for task in ("detection", "segmentation"):
        ckpt = shipped_checkpoint(task)
        rows.append({"model": ckpt.name, **evaluate_checkpoint(ckpt, data, "test")})
    print("[3/3] fine-tune the shipped detector for 2 epochs on the new training split (transfer learning)")
    run_dir = out / "finetune-det"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cfg = TrainConfig(task="detection", data=str(data), out=str(run_dir), init=str(shipped_checkpoint("detection")),
                      epochs=2, lr=2e-4, warmup_epochs=0.0, progress=False)
    train(cfg)
    rows.append({"model": "fine-tuned " + SHIPPED["detection"].name,
                 **evaluate_checkpoint(run_dir / "best.safetensors", data, "test")})
    print()
    print("| model | test images | mAP@0.5 | mAP@0.5:0.95 | mIoU |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        m50 = f"{r['mAP50']:.3f}" if "mAP50" in r else ""
        m5095 = f"{r['mAP50_95']:.3f}" if "mAP50_95" in r else ""
        miou = f"{r['mIoU']:.3f}" if "mIoU" in r else ""
        print(f"| {r['model']} | {r['images']} | {m50} | {m5095} | {miou} |")
    print(f"\nfine-tuned checkpoint: {run_dir / 'best.safetensors'}  (curves: {run_dir / 'loss_curve.png'})")
    print(f"synthetic video with ground truth: {data / 'videos' / 'stream_00.mp4'}")
    print(f"demo took {time.perf_counter() - t0:.0f} s")
    return rows
