"""Which quantized tensors cost INT8 its accuracy, and the fewest to keep in floating point to meet a budget.

Sensitivity: onnxruntime.quantization's qdq_loss_debug saves every tensor of the FP32 graph and of the
TensorRT-style Q/DQ graph on a few calibration frames; the signal-to-quantization-noise ratio (SQNR, dB) of
each activation before and after its own QuantizeLinear/DequantizeLinear pair says how much noise that one
pair adds (low dB: much noise). The error of the Q/DQ graph's tensor against the FP32 graph's (accumulated
from every pair before it) is reported beside it.

That local noise does not say what it costs the task (on a real YOLOv8n the noisiest tensors by SQNR bought
nothing when kept in float, and the search ended near FP32). So the budget search measures it: the activations
that either INT8 file quantizes are grouped by module (the exporter's node-name paths: '/model.22/cv2.0',
'/backbone/layer3'), each group's Q/DQ pairs are taken off on their own and both files' task agreement with
FP32 is measured on a few calibration frames; groups are ranked by what that buys. Then the most sensitive
groups go to floating point, 1, 2, 4, 8, ... of them, both INT8 files written each step, their agreement
measured on the held-out frames, until both are within the budget; then it bisects down to the fewest groups
that meet it. Each step's agreement and latency are reported, so the cost of every step is visible.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

SENSITIVITY_FRAMES = 4  # calibration frames the sensitivity is measured on (every tensor of two graphs per frame)
SHOWN = 10  # tensors listed in the build report (the manifest keeps every ranked one)


@dataclass
class Sensitivity:
    tensor: str
    sqnr_db: float  # noise added by this tensor's own Q/DQ pair (lower: more)
    model_sqnr_db: Optional[float]  # the Q/DQ graph's tensor against the FP32 graph's (accumulated error)

    def to_dict(self) -> Dict[str, Any]:
        return {"tensor": self.tensor, "sqnr_db": round(self.sqnr_db, 2),
                "model_sqnr_db": None if self.model_sqnr_db is None else round(self.model_sqnr_db, 2)}


def sensitivity(fp32: Path, qdq: Path, input_name: str, tensors: Iterable[np.ndarray], work: Path,
                frames: int = SENSITIVITY_FRAMES) -> List[Sensitivity]:
    """Activations of the Q/DQ graph ranked by the noise their own Q/DQ pair adds, noisiest first, measured on
    up to `frames` of `tensors`, one frame's activations held at a time (a 1024x1024 YOLOv8n has hundreds of MB
    of them per frame)."""
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import (
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    saved = {}
    for name, path in (("fp32", fp32), ("qdq", qdq)):
        saved[name] = work / f"saved-{name}.onnx"
        modify_model_output_intermediate_tensors(str(path), str(saved[name]))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as the graph names them
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in saved.items()}
    # Sums of squares per tensor, over frames: SQNR over all frames = 10 log10(sum |x|^2 / sum |x - y|^2).
    local: Dict[str, List[float]] = {}
    model: Dict[str, List[float]] = {}
    for i, x in enumerate(tensors):
        if i >= frames:
            break
        acts = {k: _activations(s, {input_name: x}) for k, s in sessions.items()}
        for tensor, m in create_activation_matching(acts["qdq"], acts["fp32"]).items():
            pre, post = np.concatenate(m["pre_qdq"]).ravel(), np.concatenate(m["post_qdq"]).ravel()
            _accumulate(local, tensor, pre, post)
            if m.get("float"):
                _accumulate(model, tensor, np.concatenate(m["float"]).ravel(), post)
    for p in saved.values():
        p.unlink()
    ranked = [Sensitivity(t, _db(signal, noise), _db(*model[t]) if t in model else None)
              for t, (signal, noise) in local.items()]
    ranked.sort(key=lambda s: (s.sqnr_db, s.tensor))
    return ranked


def _activations(session: Any, feed: Dict[str, np.ndarray]) -> Dict[str, List[np.ndarray]]:
    """One frame's saved tensors by name, as qdq_loss_debug.collect_activations gives them (it runs a whole
    reader and holds every frame's; this is one frame)."""
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX

    out: Dict[str, List[np.ndarray]] = {}
    for o, value in zip(session.get_outputs(), session.run(None, feed)):
        if o.name.endswith(_TENSOR_SAVE_POSTFIX):
            out[o.name[:-len(_TENSOR_SAVE_POSTFIX)]] = [value]
    return out


def _accumulate(sums: Dict[str, List[float]], name: str, x: np.ndarray, y: np.ndarray) -> None:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    s = sums.setdefault(name, [0.0, 0.0])
    s[0] += float(np.dot(x64, x64))
    s[1] += float(np.dot(x64 - y64, x64 - y64))


def _db(signal: float, noise: float) -> float:
    eps = float(np.finfo(np.float32).eps)
    return float(10 * np.log10(max(signal, eps) / max(noise, eps)))


def remove_qdq(model: Any, tensors: Iterable[str], float_weights: Optional[Dict[str, Any]] = None) -> int:
    """Take the QuantizeLinear/DequantizeLinear pairs off these activation tensors of a Q/DQ graph, in place: their
    consumers read the floating-point tensor again, and a node left with no quantized activation gets its weights
    back in floating point (the FP32 graph's, from `float_weights` (name -> TensorProto), where given; else the
    dequantized int8 values). Returns the pairs removed.

    Cheaper than quantizing again with the nodes around them excluded, and exactly what the ranking measured.
    TensorRT runs a tensor without a pair in FP16 or FP32 (INT8 kernels need the pair); ONNX Runtime falls back to
    float kernels around it."""
    wanted = set(tensors)
    graph_outputs = {o.name for o in model.graph.output}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input and n.input[0] in wanted]
    by_input: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input:
            by_input.setdefault(n.input[0], []).append(n)
    rewire: Dict[str, str] = {}
    drop = []
    for q in quant:
        deq = by_input.get(q.output[0], [])
        if not deq or any(d.output[0] in graph_outputs for d in deq):
            continue
        for d in deq:
            rewire[d.output[0]] = q.input[0]
        drop.extend([q, *deq])
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in rewire:
                n.input[i] = rewire[name]
    dropped = {id(n) for n in drop}
    kept = [n for n in model.graph.node if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _fold_float_weights(model, float_weights or {})
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    inits = [t for t in model.graph.initializer if t.name in used]  # the pairs' scales and zero points go
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return len(quant)


def _fold_float_weights(model: Any, float_weights: Dict[str, Any]) -> None:
    """A node whose activations no longer pass a pair runs in floating point: its weights become a float
    initializer again, the FP32 graph's where known (onnxruntime names the quantized copy of weight W
    'W_quantized'), else computed once from their DequantizeLinear (ONNX Runtime would otherwise dequantize them
    on every run, which made such a graph 3x slower than FP32 on a CPU)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    made = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in list(model.graph.node):
        weights = [i for i in node.input if i in made and made[i].input[0] in inits]
        activations = [i for i in node.input if i and i not in inits and i not in weights]
        if not weights or any(i in made for i in activations):
            continue
        for w in weights:
            dq = made[w]
            original = dq.input[0][:-len("_quantized")] if dq.input[0].endswith("_quantized") else None
            if original in float_weights:
                name = f"{original}_float"
                if name not in inits:
                    inits[name] = numpy_helper.from_array(numpy_helper.to_array(float_weights[original]), name)
                    model.graph.initializer.append(inits[name])
                node.input[list(node.input).index(w)] = name
                continue
            q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
            zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2]
                    else np.zeros_like(scale))
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            if scale.ndim:  # per channel: broadcast along `axis`
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            name = f"{w}_float"
            model.graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), name))
            node.input[list(node.input).index(w)] = name
    used = {i for n in model.graph.node for i in n.input}
    nodes = [n for n in model.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] not in used
                                                  and n.output[0] in made)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


@dataclass
class Group:
    """Activations of one part of the network (a module, as the exporter named the nodes), whose Q/DQ pairs are
    taken off together; `gain` is how much task agreement that buys on its own."""

    name: str
    tensors: List[str]
    loss: float = 0.0  # agreement loss with only this group in floating point
    gain: float = 0.0  # agreement loss with every pair, minus `loss`

    def to_dict(self) -> Dict[str, Any]:
        return {"group": self.name, "tensors": len(self.tensors), "gain": round(self.gain, 4),
                "loss": round(self.loss, 4)}


def quantized_tensors(models: Iterable[Any], fp32: Any) -> Dict[str, str]:
    """Every activation with a Q/DQ pair in any of the Q/DQ graphs (the two INT8 files place them differently),
    each with the FP32 graph's node that makes it (the graph input: its own name)."""
    producer = {o: n.name for n in fp32.graph.node for o in n.output}
    found: Dict[str, str] = {}
    for m in models:
        for n in m.graph.node:
            if n.op_type == "QuantizeLinear" and n.input and n.input[0] not in found:
                found[n.input[0]] = producer.get(n.input[0], n.input[0])
    return found


def module_groups(tensors: Dict[str, str], parts: int = 16) -> List[Group]:
    """The quantized activations (name -> the node that makes it) grouped by module, from the node names' path
    ('/model.22/cv2.0/...'): a group of more than 1/`parts` of all is split one level further, so a network comes
    out in a few dozen groups of similar size. Where the names carry no path (or give too many groups),
    consecutive stretches of them instead."""
    producers = dict(tensors)
    tensors = list(producers)
    limit = max(8, -(-len(tensors) // parts))

    def path(t: str) -> List[str]:
        return [p for p in producers.get(t, t).split("/") if p][:-1]

    def split(depth: int, members: List[str], name: str) -> List[Group]:
        if len(members) <= limit or not any(len(path(t)) > depth for t in members):
            return [Group(name, members)]
        sub: Dict[str, List[str]] = {}
        for t in members:
            sub.setdefault("/" + "/".join(path(t)[:depth + 1]), []).append(t)
        if len(sub) == 1:
            return split(depth + 1, members, name)
        return [g for key, part in sorted(sub.items()) for g in split(depth + 1, part, key)]

    groups = split(0, list(tensors), "/")
    if len(groups) > 4 * parts or len(groups) == 1:
        groups = [Group(f"tensors {i + 1}-{min(i + limit, len(tensors))}", tensors[i:i + limit])
                  for i in range(0, len(tensors), limit)]
    return groups


def rank_groups(groups: List[Group], models: Sequence[Any], loss: Callable[[bytes], float],
                float_weights: Optional[Dict[str, Any]] = None) -> List[Group]:
    """Each group's Q/DQ pairs taken off on its own, the agreement loss of the Q/DQ graphs measured (`loss` runs
    a serialized graph; the losses of the graphs add up); groups ranked by what that buys, most first."""
    import onnx

    def total(tensors: Sequence[str]) -> float:
        lost = 0.0
        for qdq in models:
            m = onnx.ModelProto()
            m.CopyFrom(qdq)
            remove_qdq(m, tensors, float_weights)
            lost += loss(m.SerializeToString())
        return lost

    base = total([])
    for g in groups:
        g.loss = total(g.tensors)
        g.gain = base - g.loss
    return sorted(groups, key=lambda g: (-g.gain, g.name))


@dataclass
class Step:
    groups: int  # the most sensitive groups in floating point
    tensors: int  # the activations that leaves without a Q/DQ pair
    agreement: Dict[str, float]  # file kind -> the task's agreement with FP32 on the held-out frames
    latency_ratio: Optional[float]  # the engine file's latency over FP32's on this CPU (None: not measured here)
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return {"groups_in_float": self.groups, "tensors_in_float": self.tensors, "agreement": self.agreement,
                "latency_vs_fp32": None if self.latency_ratio is None else round(self.latency_ratio, 3),
                "seconds": round(self.seconds, 2)}


@dataclass
class Search:
    budget_points: float
    key: str
    met: bool
    chosen: int  # groups in floating point in the written files
    ranked: List[Group]
    steps: List[Step] = field(default_factory=list)

    def best(self) -> Step:
        return next(s for s in self.steps if s.groups == self.chosen)

    def to_dict(self) -> Dict[str, Any]:
        best = self.best()
        return {"budget_points": self.budget_points, "measure": self.key, "met": self.met,
                "groups_in_float": [g.name for g in self.ranked[:self.chosen]],
                "tensors_in_float": in_float(self.ranked, self.chosen),
                "agreement": best.agreement, "points_lost": round(points_lost(best.agreement), 2),
                "latency_vs_fp32": best.to_dict()["latency_vs_fp32"],
                "steps": [s.to_dict() for s in self.steps], "groups": [g.to_dict() for g in self.ranked]}


def points_lost(agreement: Dict[str, float]) -> float:
    """Points of agreement with FP32 lost by the worse of the INT8 files (100 x (1 - agreement))."""
    return 100.0 * (1.0 - min(agreement.values()))


def in_float(ranked: Sequence[Group], k: int) -> List[str]:
    """The activations of the first k groups."""
    return [t for g in ranked[:k] for t in g.tensors]


def search(ranked: Sequence[Group], budget: float, key: str,
           try_step: Callable[[List[str]], Tuple[Dict[str, float], Optional[float]]],
           max_bisect: int = 3) -> Search:
    """Take the Q/DQ pairs off the most sensitive groups of `ranked`, doubling their number, until `try_step`
    (which writes both INT8 files without the pairs on these tensors, and returns each file's agreement and the
    engine's latency ratio) says both are within `budget` points; then bisect for the fewest. Ends with the files
    of the chosen step written (the step is tried again where it was not the last)."""
    result = Search(budget, key, False, 0, list(ranked))

    def run(k: int) -> Step:
        t0 = time.perf_counter()
        tensors = in_float(ranked, k)
        agreement, latency = try_step(tensors)
        step = Step(k, len(tensors), {f: round(a, 4) for f, a in agreement.items()}, latency,
                    time.perf_counter() - t0)
        result.steps.append(step)
        return step

    def meets(step: Step) -> bool:
        return points_lost(step.agreement) <= budget + 1e-9

    low, high = -1, None
    for k in [0] + _doubling(len(ranked)):
        if meets(run(k)):
            high = k
            break
        low = k
    if high is not None and low >= 0:
        for _ in range(max_bisect):
            if high - low <= 1:
                break
            mid = (low + high) // 2
            if meets(run(mid)):
                high = mid
            else:
                low = mid
    if high is not None:
        result.met, result.chosen = True, high
    else:  # not met: the best agreement reached, fewest groups among equals
        best = min(result.steps, key=lambda s: (points_lost(s.agreement), s.groups))
        result.chosen = best.groups
    if result.steps[-1].groups != result.chosen:
        run(result.chosen)  # write the chosen files again; the figures repeat, so the step is listed once
        result.steps.pop()
    return result


def _doubling(n: int) -> List[int]:
    sizes, k = [], 1
    while k < n:
        sizes.append(k)
        k *= 2
    if n:
        sizes.append(n)
    return sizes
