"""`edgekit demo`: the longest chain that runs end to end on the shipped models.

Today: synthetic test data -> export each shipped model to ONNX (parity-checked) -> INT8 engine on the
best available backend, calibrated on calibration/synth -> accuracy of checkpoint and engine on the
test split. The stream runner joins this chain when it lands.
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
CALIBRATION = ROOT / "calibration" / "synth"


def shipped_checkpoint(task: str) -> Path:
    path = SHIPPED[task]
    if not path.is_file():
        raise EdgekitError(f"{path}: shipped {task} model not found (is this a complete checkout?)")
    return path


def _accuracy(task: str, m: Dict) -> str:
    return f"mAP@0.5 {m['mAP50']:.3f}, mAP@0.5:0.95 {m['mAP50_95']:.3f}" if task == "detection" \
        else f"mIoU {m['mIoU']:.3f}"


def run(out: Path, seed: int = 1) -> List[Dict]:
    from .build import BuildOptions, build_engine
    from .data import datasets
    from .data.writer import write_dataset
    from .engine import open_engine
    from .evaluate import evaluate
    from .export import export
    from .train.loop import evaluate_checkpoint

    t0 = time.perf_counter()
    data = out / "data"
    print(f"[1/4] synthetic test images and a video (seed {seed}) -> {data}")
    write_dataset(data, seed=seed, counts={"train": 0, "val": 0, "test": 100}, videos=1, video_frames=60,
                  overwrite=True, progress=False)
    rows = []
    for task in ("detection", "segmentation"):
        ckpt = shipped_checkpoint(task)
        onnx_path = out / f"{ckpt.stem}.onnx"
        print(f"[2/4] export {ckpt.name} -> {onnx_path}")
        rep = export(ckpt, onnx_path)
        worst = max(p.max_abs for p in rep.parity)
        engine_path = out / f"{ckpt.stem}.int8.engine"
        print(f"[3/4] INT8 engine (auto backend, calibrated on {CALIBRATION.name}/) -> {engine_path}")
        built = build_engine(onnx_path, engine_path, BuildOptions(backend="auto", precision="int8",
                                                                  calib=str(CALIBRATION), calib_size=32))
        print(f"[4/4] accuracy on {data}/test")
        backend, _, card = open_engine(engine_path)
        ds = datasets.load(task, data, "test")
        with backend:
            engine_acc = evaluate(lambda x, b=backend: b.infer([x])[0], card, ds)
        rows.append({"task": task, "checkpoint": _accuracy(task, evaluate_checkpoint(ckpt, data, "test")),
                     "engine": _accuracy(task, engine_acc), "backend": built.backend, "parity": worst,
                     "engine_path": engine_path, "kb": built.bytes / 1024})
    print()
    print("| model | PyTorch FP32 | INT8 engine | backend | export parity (max abs) | engine |")
    print("|---|---|---|---|---:|---|")
    for r in rows:
        print(f"| {r['task']} | {r['checkpoint']} | {r['engine']} | {r['backend']} | {r['parity']:.2g} | "
              f"{r['engine_path']} ({r['kb']:.0f} KB) |")
    print(f"\nsynthetic video with ground truth for the stream runner: {data / 'videos' / 'stream_00.mp4'}")
    print(f"demo took {time.perf_counter() - t0:.0f} s")
    return rows
