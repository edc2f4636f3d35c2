"""`--fuse-preprocess` on the host: preprocess() of a 768x576 frame to a 320x320 and a 640x640 input with the
preprocessing on the host ([1, 3, H, W] float32) and fused into the graph ([1, H, W, 3] uint8, letterbox only),
interleaved, medians; then the shipped detector (models/detector) on ONNX Runtime's CPU provider, unfused against
fused, interleaved: the engine time the fused nodes add and the end-to-end (preprocess + infer) difference.

    python benchmarks/fuse_preprocess.py [--reps 500] [--engine-reps 200]
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from edgekit.build.demo import SHIPPED
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.synth import render_image
from edgekit.runtime.preprocess import preprocess

FRAME = (768, 576)  # width, height


def interleaved(calls: Dict[str, Callable[[], object]], reps: int, warmup: int = 20) -> Dict[str, float]:
    """Median milliseconds of each call, run A B A B ... so that both see the same machine load."""
    for _ in range(warmup):
        for f in calls.values():
            f()
    times: Dict[str, List[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for k, f in calls.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def host_rows(card: ModelCard, frame: np.ndarray, reps: int) -> List[str]:
    rows = []
    for side in (320, 640):
        plain = dataclasses.replace(card, input_size=(side, side))
        fused = dataclasses.replace(plain, input_format="nhwc_uint8")
        ms = interleaved({"host": lambda c=plain: preprocess(frame, c), "fused": lambda c=fused: preprocess(frame, c)},
                         reps)
        nbytes = (preprocess(frame, plain)[0].nbytes, preprocess(frame, fused)[0].nbytes)
        rows.append(f"| preprocess() {FRAME[0]}x{FRAME[1]} -> {side}x{side} | {ms['host']:.3f} | {ms['fused']:.3f} | "
                    f"{ms['host'] / ms['fused']:.2f}x | {nbytes[0] / 1024:.0f} KB -> {nbytes[1] / 1024:.0f} KB |")
    return rows


def engine_rows(frame: np.ndarray, reps: int) -> List[str]:
    from edgekit.build.export import export
    from edgekit.build.onnx_io import embedded_card, load_model
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"host": Path(tmp) / "det.onnx", "fused": Path(tmp) / "det.fused.onnx"}
        export(SHIPPED["detection"], paths["host"])
        export(SHIPPED["detection"], paths["fused"], fuse_preprocess=True)
        cards = {k: embedded_card(load_model(p), str(p)) for k, p in paths.items()}
        xs = {k: preprocess(frame, c)[0] for k, c in cards.items() if c is not None}
        # pipelined: idle threads sleep between runs; spinning ones would take the cores from the other session
        engines = {k: OnnxRuntimeBackend(p, pipelined=True) for k, p in paths.items()}
        try:
            infer = interleaved({k: (lambda k=k: engines[k].infer([xs[k]])) for k in engines}, reps)
            total = interleaved({k: (lambda k=k: engines[k].infer([preprocess(frame, cards[k])[0]])) for k in engines},
                                reps)
        finally:
            for e in engines.values():
                e.close()
    h, w = next(iter(cards.values())).input_size
    return [f"| detector {w}x{h}, ONNX Runtime CPU: infer | {infer['host']:.3f} | {infer['fused']:.3f} | "
            f"{infer['host'] / infer['fused']:.2f}x | fused nodes add {infer['fused'] - infer['host']:+.3f} ms |",
            f"| detector {w}x{h}: preprocess() + infer | {total['host']:.3f} | {total['fused']:.3f} | "
            f"{total['host'] / total['fused']:.2f}x | |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500, help="preprocess() calls per variant (default 500)")
    ap.add_argument("--engine-reps", type=int, default=200, help="inferences per variant (default 200)")
    args = ap.parse_args()
    from edgekit.build.models import checkpoint

    card = ModelCard.load(checkpoint.resolve(SHIPPED["detection"])[1])
    frame = render_image(7, 0, FRAME).image
    rows = host_rows(card, frame, args.reps) + engine_rows(frame, args.engine_reps)
    print(f"median ms ({args.reps} preprocess() calls, {args.engine_reps} inferences per variant, interleaved)\n")
    print("| what | host preprocessing | fused into the graph | host / fused | input bytes |")
    print("|---|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
