"""`edgekit demo`: the whole chain on the shipped models, end to end, on this machine.

synthetic test images and video -> export each shipped model to ONNX (parity-checked) -> INT8 engine on
the best available backend, calibrated on calibration/synth -> accuracy of checkpoint and engine on the
test images -> run-stream on the video: latency per stage, annotated video and report.
"""

import time
from pathlib import Path
from typing import Dict, List

from edgekit.errors import EdgekitError

ROOT = Path(__file__).resolve().parents[2]
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


def run(out: Path, seed: int = 1) -> List[Dict]:
    from edgekit.build.engine_build import BuildOptions, build_engine
    from edgekit.build.export import export
    from edgekit.build.train.loop import evaluate_checkpoint
    from edgekit.runtime.data import datasets
    from edgekit.runtime.data.writer import write_dataset
    from edgekit.runtime.measure.evaluate import accuracy_text, evaluate
    from edgekit.runtime.opening import open_engine
    from edgekit.runtime.stream.runner import StreamOptions, run_stream

    t0 = time.perf_counter()
    data = out / "data"
    video = data / "videos" / "stream_00.mp4"
    print(f"[1/5] synthetic test images and a 640x480 video with ground truth (seed {seed}) -> {data}")
    write_dataset(data, seed=seed, counts={"train": 0, "val": 0, "test": 100}, videos=1, video_frames=150,
                  overwrite=True, progress=False)
    rows = []
    for task in SHIPPED:
        ckpt = shipped_checkpoint(task)
        name = ckpt.stem
        onnx_path = out / f"{name}.onnx"
        print(f"[2/5] {name}: export -> {onnx_path}")
        export(ckpt, onnx_path)
        engine_path = out / f"{name}.int8.engine"
        print(f"[3/5] {name}: INT8 engine (auto backend, calibrated on calibration/synth) -> {engine_path}")
        built = build_engine(onnx_path, engine_path, BuildOptions(backend="auto", precision="int8",
                                                                  calib=str(CALIBRATION), calib_size=32))
        print(f"[4/5] {name}: accuracy of checkpoint and engine on {data / 'images' / 'test'}")
        with open_engine(engine_path) as opened:
            engine_acc = evaluate(opened.infer, opened.card, datasets.load(task, data, "test"))
        print(f"[5/5] {name}: run-stream on {video}")
        stream_dir = out / f"stream-{name}"
        rep = run_stream(engine_path, str(video), StreamOptions(out=str(stream_dir), progress=False))
        rows.append({"name": name, "backend": built.backend, "stream": rep, "dir": stream_dir,
                     "torch": accuracy_text(task, evaluate_checkpoint(ckpt, data)),
                     "engine": accuracy_text(task, engine_acc)})
    print()
    print("| model | accuracy, PyTorch FP32 | accuracy, INT8 engine | backend | stream FPS | "
          "end-to-end p50 / p99 ms | infer p50 ms | frames in / processed / dropped |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        s = r["stream"]
        e2e, inf, fr = s["end_to_end_ms"], s["stages_ms"]["infer"], s["frames"]
        print(f"| {r['name']} | {r['torch']} | {r['engine']} | {r['backend']} | {s['throughput_fps']:.1f} | "
              f"{e2e['p50']:.1f} / {e2e['p99']:.1f} | {inf['p50']:.2f} | {fr['in']} / {fr['processed']} / "
              f"{fr['dropped']} |")
    print("\n(a video file is read ahead as fast as the pipeline takes it, so its end-to-end latency includes "
          "queueing; live sources measure capture-to-result latency)")
    for r in rows:
        print(f"{r['name']}: annotated video {r['stream']['outputs']['video']}, report {r['dir'] / 'report.md'}")
    print(f"demo took {time.perf_counter() - t0:.0f} s")
    return rows
