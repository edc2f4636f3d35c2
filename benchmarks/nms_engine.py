"""Host NMS against NMS in the graph (`--nms engine`) for the shipped detector on ONNX Runtime (CPU), at its input
size: infer time (session.run) and postprocess time (the layout's decode into frame pixels: host NMS for the
yolov8 head, a threshold and a copy for end2end) per frame, medians of REPS calls, the two models interleaved
(A B A B) on the same real frames after a warm-up, one intra-op thread each (as the stream runner's workers).

    python benchmarks/nms_engine.py [--reps 300] [--threads 1]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

from edgekit.build import graph_nms, onnx_io
from edgekit.build.demo import CALIBRATION, SHIPPED
from edgekit.build.export import export
from edgekit.runtime import registry
from edgekit.runtime.data.datasets import IMAGE_EXTS, read_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        host_path = Path(tmp) / "host.onnx"
        export(SHIPPED["detection"], host_path)
        model = onnx.load(str(host_path))
        card = onnx_io.embedded_card(model, str(host_path))
        nms_card = graph_nms.append_nms(model, card)
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = args.threads
        runs = {"host NMS": (ort.InferenceSession(str(host_path), so, providers=["CPUExecutionProvider"]), card),
                "engine NMS": (ort.InferenceSession(model.SerializeToString(), so,
                                                    providers=["CPUExecutionProvider"]), nms_card)}
    files = sorted(p for p in Path(CALIBRATION).rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:30]
    frames = [preprocess(read_image(f), card) for f in files]
    times = {name: {"infer": [], "post": [], "dets": []} for name in runs}
    for i in range(args.reps + 10):
        x, transform = frames[i % len(frames)]
        for name, (session, c) in runs.items():
            layout, params = registry.layout(c.output_layout), DecodeParams.of(c)
            t0 = time.perf_counter()
            y = session.run(None, {c.input_name: x})
            t1 = time.perf_counter()
            result = layout.decode(layout.image({c.output_name: y[0]}, 0), transform, c, params)
            t2 = time.perf_counter()
            if i >= 10:  # warm-up
                times[name]["infer"].append(t1 - t0)
                times[name]["post"].append(t2 - t1)
                times[name]["dets"].append(len(result))
    h, w = card.input_size
    print(f"shipped detector {card.name}, input {w}x{h}, {card.num_classes} classes, onnxruntime "
          f"{ort.__version__} CPU, {args.threads} thread(s), median of {args.reps} calls each, interleaved, "
          f"{len(frames)} real frames ({CALIBRATION.name})\n")
    print("| NMS | infer ms | postprocess ms | infer + postprocess ms | detections / frame |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        infer, post = statistics.median(t["infer"]) * 1e3, statistics.median(t["post"]) * 1e3
        total = statistics.median(a + b for a, b in zip(t["infer"], t["post"])) * 1e3
        print(f"| {name} | {infer:.3f} | {post:.3f} | {total:.3f} | {statistics.mean(t['dets']):.2f} |")
    a, b = times["host NMS"], times["engine NMS"]
    d_inf = statistics.median(y - x for x, y in zip(a["infer"], b["infer"])) * 1e3
    d_post = statistics.median(y - x for x, y in zip(a["post"], b["post"])) * 1e3
    print(f"\nengine - host, median of paired differences: infer {d_inf:+.3f} ms, postprocess {d_post:+.3f} ms")


if __name__ == "__main__":
    main()
