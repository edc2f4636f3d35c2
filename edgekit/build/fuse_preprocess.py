"""`--fuse-preprocess`: the card's preprocessing moved into the ONNX graph, after the letterbox.

The graph gets a new input that takes the letterboxed frame as OpenCV gives it, [N, H, W, 3] uint8 BGR, followed
by Cast to float, a Transpose to NCHW, the channel order reversed where the network takes RGB, and the
normalisation as one Mul and one Add ((x / 255 - mean) / std, the constants runtime/preprocess.py uses) that
feeds the original network. The host then copies a quarter of the bytes and does no float work; the resize (letterbox or
stretch) stays on the host. The card says so (input_format "nhwc_uint8", input_name the new input's), and
runtime/preprocess.py's one preprocessing function then gives the letterboxed uint8 frame, so calibration,
agreement and streaming feed the fused graph by construction.
"""

import dataclasses
from typing import Any, Dict, Tuple

import numpy as np

from edgekit.build import onnx_io
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard
from edgekit.runtime.preprocess import normalization
from edgekit.runtime.text import printable

FUSED_FORMAT = "nhwc_uint8"
INPUT_SUFFIX = "_u8"  # the new input is named after the original one: images -> images_u8
PREFIX = "edgekit_preprocess"  # the added nodes and constants


def fuse(model: Any, card: ModelCard, source: str) -> Tuple[Any, ModelCard]:
    """(a copy of `model` taking uint8 NHWC BGR frames, the card that says so, embedded in it). Refuses in one
    line a graph that is already fused or whose input is not [N, 3, H, W] float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs, _ = onnx_io.io_names(model)
    if len(inputs) != 1:
        raise EdgekitError(f"{source}: --fuse-preprocess needs one image input, the graph has {len(inputs)}")
    graph_in = inputs[0]
    where = f"{source}: --fuse-preprocess: input '{printable(graph_in.name)}'"
    dims = list(graph_in.type.tensor_type.shape.dim)
    shown = onnx_io.static_shape(graph_in)
    elem = graph_in.type.tensor_type.elem_type
    if card.input_format == FUSED_FORMAT or (elem == TensorProto.UINT8 and len(dims) == 4):
        raise EdgekitError(f"{where} already takes uint8 NHWC frames (preprocessing fused); it is fused once: "
                           "leave --fuse-preprocess out")
    if elem != TensorProto.FLOAT or len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        kind = helper.tensor_dtype_to_np_dtype(elem).name if elem else "untyped"
        raise EdgekitError(f"{where} is {printable(shown)} {kind}; preprocessing fuses into a graph whose input is "
                           "[N, 3, H, W] float32")
    h, w = card.input_size
    for axis, want, what in ((2, h, "height"), (3, w, "width")):
        d = dims[axis]
        if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != want:
            raise EdgekitError(f"{where} is {printable(shown)}, but the card's input {what} is {want}")

    names = {n for node in model.graph.node for n in (*node.input, *node.output)}
    names |= {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    new_name = graph_in.name + INPUT_SUFFIX
    while new_name in names:
        new_name += "_"

    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    g = fused.graph
    original = next(i for i in g.input if i.name == graph_in.name)
    batch = original.type.tensor_type.shape.dim[0]
    frame = helper.make_tensor_value_info(new_name, TensorProto.UINT8, [None, h, w, 3])
    frame_batch = frame.type.tensor_type.shape.dim[0]
    frame_batch.CopyFrom(batch)  # a dynamic batch axis stays dynamic, under its name

    scale, bias = normalization(tuple(card.mean), tuple(card.std))  # [3, 1, 1], in the network's channel order
    consts = [numpy_helper.from_array(scale.astype(np.float32), f"{PREFIX}/scale"),
              numpy_helper.from_array(bias.astype(np.float32), f"{PREFIX}/bias")]
    # Transposed right after the cast: the channel reversal then moves whole planes and the normalisation broadcasts
    # per plane (ONNX Runtime's CPU kernels take 20x longer for the same steps on the interleaved NHWC layout,
    # whose last axis is 3 wide).
    nodes = [helper.make_node("Cast", [new_name], [f"{PREFIX}/float"], name=f"{PREFIX}/Cast", to=TensorProto.FLOAT),
             helper.make_node("Transpose", [f"{PREFIX}/float"], [f"{PREFIX}/nchw"], name=f"{PREFIX}/Transpose",
                              perm=[0, 3, 1, 2])]
    pixels = f"{PREFIX}/nchw"
    if card.color == "RGB":  # OpenCV's BGR -> the network's RGB: the channel axis reversed
        consts.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), f"{PREFIX}/bgr_to_rgb"))
        nodes.append(helper.make_node("Gather", [pixels, f"{PREFIX}/bgr_to_rgb"], [f"{PREFIX}/rgb"],
                                      name=f"{PREFIX}/BgrToRgb", axis=1))
        pixels = f"{PREFIX}/rgb"
    nodes += [
        helper.make_node("Mul", [pixels, f"{PREFIX}/scale"], [f"{PREFIX}/scaled"], name=f"{PREFIX}/Mul"),
        # Its output takes the original input's name: the network reads it unchanged.
        helper.make_node("Add", [f"{PREFIX}/scaled", f"{PREFIX}/bias"], [graph_in.name], name=f"{PREFIX}/Add"),
    ]
    kept = [n for n in g.node]
    del g.node[:]
    g.node.extend(nodes + kept)
    g.initializer.extend(consts)
    inner = onnx.ValueInfoProto()
    inner.CopyFrom(original)
    graph_inputs = [frame if i.name == graph_in.name else i for i in g.input]  # (initializers listed as inputs)
    del g.input[:]
    g.input.extend(graph_inputs)
    g.value_info.append(inner)  # the original input, now an inner tensor, keeps its shape

    fused_card = dataclasses.replace(card, input_format=FUSED_FORMAT, input_name=new_name)
    onnx_io.set_card(fused, fused_card)
    try:
        onnx.checker.check_model(fused)
    except onnx.checker.ValidationError as e:
        raise EdgekitError(f"{source}: --fuse-preprocess made an invalid graph: "
                           f"{printable(str(e).splitlines()[0])}") from None
    return fused, fused_card


def float_nodes(model: Any) -> Dict[str, str]:
    """The nodes fuse() added (name -> why), for INT8 to leave in floating point: the normalisation's constants and
    the pixels before the first convolution quantized once there, as in the unfused graph, not at every step."""
    return {n.name: "preprocessing fused into the graph (--fuse-preprocess)" for n in model.graph.node
            if n.name.startswith(PREFIX + "/")}
