"""`edgekit export`: checkpoint -> ONNX (opset 17 by default), simplified, card embedded, parity-checked."""

import dataclasses
import errno
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from edgekit.build import graph_nms, onnx_io
from edgekit.errors import EdgekitError
from edgekit.runtime.artifacts import OUT_OF_ROOM, atomic_path
from edgekit.runtime.card import ModelCard
from edgekit.runtime.preprocess import preprocess


@dataclass
class Parity:
    """Largest disagreement of one output between two runtimes over the parity inputs."""

    output: str
    max_abs: float
    max_rel: float  # max_abs relative to the largest reference magnitude of that output
    ok: bool


@dataclass
class ExportReport:
    path: Path
    opset: int
    seconds: float
    nodes_before: int
    nodes_after: int
    parity: List[Parity] = field(default_factory=list)
    parity_inputs: str = ""
    decoded: "Optional[tuple[str, float]]" = None  # (agreement measure, mean) where outputs vary in length


MIN_DECODED_AGREEMENT = 0.98


# What a write that ran out of room says, by errno (the message of a failed write from native code, such as
# onnxruntime's, carries only the text).



class OutOfRoom(EdgekitError):
    """A write failed for want of room: `what` ("disk full", ...) while writing `target`."""

    def __init__(self, what: str, target: Path) -> None:
        super().__init__(f"{what} while writing {target}; nothing was written")
        self.what, self.target = what, target


def write_failure(e: BaseException, target: Path, folder: Optional[Path] = None,
                  needed: int = 0) -> Optional[EdgekitError]:
    """The one-line error for a write that failed for want of room (full disk, quota, RLIMIT_FSIZE /
    `ulimit -f`), naming what was being written; None for any other failure. The callers write through a
    temporary name and remove it, so the message can say that nothing was written.

    Some native writers fail silently and leave a truncated file that a later step cannot parse (onnx's
    infer_shapes_path, which onnxruntime's quantizer calls): for those, pass the folder being written (before
    it is removed) and the size of file the build writes; the failure is put down to a lack of room where
    less than that is left there, or where the file size limit is below it."""
    if isinstance(e, OutOfRoom):  # found deeper down, named after what the caller writes
        return OutOfRoom(e.what, target)
    if isinstance(e, EdgekitError):
        return None
    what = OUT_OF_ROOM.get(e.errno) if isinstance(e, OSError) and e.errno is not None else None
    if what is None and not isinstance(e, OSError):
        text = str(e)
        what = next((v for k, v in OUT_OF_ROOM.items() if os.strerror(k) in text), None)
    if what is None and folder is not None and needed > 0:
        what = _short_of_room(folder, needed)
    return None if what is None else OutOfRoom(what, target)


def _short_of_room(folder: Path, needed: int) -> Optional[str]:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        return OUT_OF_ROOM[errno.EFBIG]
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return OUT_OF_ROOM[errno.ENOSPC] if st.f_bavail * st.f_frsize < needed else None


def refuse_overwriting_inputs(outputs: Mapping[str, Path], inputs: Mapping[str, Path], out_flag: str) -> None:
    """One line where a file a verb writes (`outputs`: what it is -> path) is one of the files it reads
    (`inputs`): `-o` equal to the input would replace the source with the result (issue 15, item 13)."""
    for what_in, src in inputs.items():
        for what_out, dst in outputs.items():
            if _same_file(src, dst):
                where = "" if what_out == "the output" else f": {what_out} {dst}"
                raise EdgekitError(f"-o {out_flag}{where} would replace {what_in} {src}; choose another -o")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same file on disk (links included), or the same resolved path."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def parity_frames(card: ModelCard, images: Optional[Path], count: int = 8) -> List[np.ndarray]:
    """Real frames for parity checks: images from a folder, else synthetic scenes rendered here."""
    from edgekit.runtime.data.datasets import IMAGE_EXTS, read_image

    if images is not None:
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:count]
        if not files:
            raise EdgekitError(f"{images}: no images for the parity check")
        return [read_image(p) for p in files]
    from edgekit.runtime.data.synth import render_image

    return [render_image(12345, i).image for i in range(count)]


def parity_inputs(card: ModelCard, frames: List[np.ndarray], seed: int = 0) -> List[np.ndarray]:
    """Two random frames and the real ones, each through the card's preprocessing."""
    rng = np.random.default_rng(seed)
    h, w = card.input_size
    randoms = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2)]
    return [preprocess(f, card)[0] for f in randoms + frames]


def compare(reference: Dict[str, List[np.ndarray]], other: Dict[str, List[np.ndarray]], atol: float,
            rtol: float) -> List[Parity]:
    out = []
    for name, refs in reference.items():
        worst_abs, scale, ok = 0.0, 1e-12, True
        for r, o in zip(refs, other[name]):
            if r.shape != o.shape:  # e.g. a different number of detections: no element-wise comparison
                worst_abs, ok = float("inf"), False
                break
            diff = np.abs(r.astype(np.float64) - o.astype(np.float64))
            worst_abs = max(worst_abs, float(diff.max()))
            scale = max(scale, float(np.abs(r).max()))
            ok = ok and bool(np.all(diff <= atol + rtol * np.abs(r)))
        out.append(Parity(name, worst_abs, worst_abs / scale, ok))
    return out


def export(
    checkpoint_path: "str | Path",
    out: "str | Path",
    opset: int = 17,
    dynamic_batch: int = 0,
    simplify: bool = True,
    parity_images: Optional[Path] = None,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    fuse_preprocess: bool = False,
    nms: str = "host",
) -> ExportReport:
    import torch

    from edgekit.build.models import checkpoint, sources

    t0 = time.perf_counter()
    weights, card_file = checkpoint.resolve(checkpoint_path)
    refuse_overwriting_inputs({"the output": Path(out)}, {"the checkpoint": weights, "its model card": card_file},
                              str(out))
    model, card = checkpoint.load(checkpoint_path)
    if not 13 <= opset <= 21:
        raise EdgekitError(f"--opset {opset}: edgekit exports opsets 13 to 21 (TensorRT 8.5 parses up to 17)")
    if dynamic_batch < 0 or dynamic_batch == 1:
        raise EdgekitError("--dynamic-batch takes the largest batch, 2 or more")
    if graph_nms.check_mode(nms) == "engine":
        graph_nms.check_card(card, str(checkpoint_path))
    h, w = card.input_size
    example = torch.zeros(1, 3, h, w)
    names = sources.output_names(card)
    out = Path(out)
    frames = parity_frames(card, parity_images)
    inputs = parity_inputs(card, frames)
    # --fuse-preprocess: the same parity frames, as the fused graph takes them (letterboxed uint8 BGR)
    fused_inputs = parity_inputs(dataclasses.replace(card, input_format="nhwc_uint8"), frames) if fuse_preprocess \
        else None
    try:
        proto, nodes_before, parity, decoded = _export_checked(model, card, example, names, out, opset, dynamic_batch,
                                                               simplify, inputs, atol, rtol, fused_inputs=fused_inputs,
                                                               nms=nms)
    except (OSError, RuntimeError) as e:  # torch and onnx write with Python's file objects: OSError carries errno
        failure = write_failure(e, out)
        if failure is None:
            raise
        raise failure from None
    source = str(parity_images) if parity_images else "synthetic scenes"
    return ExportReport(out, opset, time.perf_counter() - t0, nodes_before, len(proto.graph.node), parity,
                        f"2 random + {len(frames)} real frames ({source})", decoded)


def _export_checked(model: Any, card: ModelCard, example: Any, names: List[str], out: Path, opset: int,
                    dynamic_batch: int, simplify: bool, inputs: List[np.ndarray], atol: float,
                    rtol: float, fused_inputs: Optional[List[np.ndarray]] = None, nms: str = "host",
                    ) -> "tuple[Any, int, List[Parity], Optional[tuple[str, float]]]":
    """Export to a temporary file beside `out`, check it, and move it into place only when it passes. With
    `fused_inputs` (the parity frames as uint8 NHWC BGR) the card's preprocessing is fused into the graph
    (fuse_preprocess.py) and the parity check runs the fused graph on them: end to end against PyTorch."""
    import onnx
    import torch

    from edgekit.build.models import sources

    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (see below)
            # The TorchScript-based exporter writes opset 17 directly and needs no onnxscript; edgekit's
            # architectures are plain static graphs, which it handles fully.
            torch.onnx.export(
                model, (example,), str(tmp), opset_version=opset, dynamo=False,
                input_names=[card.input_name], output_names=names, do_constant_folding=True,
                dynamic_axes={card.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic_batch
                else None,
            )
        proto = onnx.load(str(tmp))
        nodes_before = len(proto.graph.node)
        if simplify:
            import onnxslim

            proto = onnxslim.slim(proto)
        onnx_io.set_card(proto, card)
        meta = proto.metadata_props.add()
        meta.key, meta.value = "edgekit.max_batch", str(dynamic_batch or 1)
        proto.producer_name = "edgekit"
        if fused_inputs is not None:  # --fuse-preprocess (the fused card is embedded in it)
            from edgekit.build.fuse_preprocess import fuse

            proto, _ = fuse(proto, card, str(out))
        onnx.checker.check_model(proto)
        if card.extra.get("sparsity"):
            from edgekit.build.sparsity import check_onnx

            check = check_onnx(proto)
            if check["dense"]:  # BatchNorm folding scales whole output channels, so zeros must survive
                raise EdgekitError(f"{out}: the card promises 2:4 sparsity but {len(check['dense'])} of "
                                   f"{check['eligible']} eligible conv weights break it (first: {check['dense'][0]}); "
                                   "not written")
        onnx.save(proto, str(tmp))
        # Parity: the ONNX on ONNX Runtime against the checkpoint on PyTorch, same inputs.
        batch = inputs if not dynamic_batch else inputs + [np.concatenate(inputs[:2])]
        with torch.no_grad():
            outs = [sources.as_tuple(model(torch.from_numpy(x))) for x in batch]
            ref = {n: [o[i].numpy() for o in outs] for i, n in enumerate(names)}
        got = onnx_io.run_onnxruntime(tmp, batch if fused_inputs is None else
                              fused_inputs if not dynamic_batch else fused_inputs + [np.concatenate(fused_inputs[:2])])
        parity = compare(ref, got, atol, rtol)
        bad = [p for p in parity if not p.ok]
        decoded = None
        if any(p.max_abs == float("inf") for p in bad):  # outputs of varying length: compare what they decode to
            decoded = decoded_parity(card, ref, got, len(inputs))
            if decoded[1] < MIN_DECODED_AGREEMENT:
                raise EdgekitError(f"{out}: ONNX Runtime's outputs vary in length and decode to results that agree "
                                   f"with PyTorch's by {decoded[0]} {decoded[1]:.3f} only (at least "
                                   f"{MIN_DECODED_AGREEMENT} needed); not written")
            bad = [p for p in bad if p.max_abs != float("inf")]
        if bad:
            p = bad[0]
            raise EdgekitError(
                f"{out}: ONNX Runtime output '{p.output}' differs from PyTorch by up to {p.max_abs:.3g} "
                f"(tolerance {atol:g} + {rtol:g}*|x|); not written"
            )
        if nms == "engine":  # the head passed parity: NMS appended, checked against host NMS on the same frames
            feed = batch if fused_inputs is None else \
                fused_inputs + ([np.concatenate(fused_inputs[:2])] if dynamic_batch else [])
            proto = graph_nms.append_checked(proto, tmp, str(out), feed, got)
    return proto, nodes_before, parity, decoded


def decoded_parity(card: ModelCard, reference: Dict[str, List[np.ndarray]], other: Dict[str, List[np.ndarray]],
                   count: int) -> "tuple[str, float]":
    """(the task's agreement measure, its value pooled over the frames) between PyTorch's and ONNX Runtime's
    results once decoded through the card: for models whose outputs vary in length (a detector suppressing in
    its graph), where a near-tie may keep one more box on one runtime than on the other."""
    from edgekit.runtime import registry
    from edgekit.runtime.measure.evaluate import decoder

    task, decode = registry.task(card.task), decoder(card)
    fidelity = task.fidelity(card)
    for i in range(count):
        fidelity.add(decode({k: v[i] for k, v in reference.items()}), decode({k: v[i] for k, v in other.items()}))
    return task.agreement_key, float(fidelity.summary()[task.agreement_key])
