"""`edgekit export-triton ENGINE -o REPO/`: a Triton Inference Server model repository made from an engine and its
manifest (https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_repository.md and
model_configuration.md). For a model called NAME it holds four models:

* NAME: the engine itself for Triton's native backends (`model.plan` on `tensorrt_plan`, `model.onnx` on
  `onnxruntime_onnx`), or with `infer_python` a Python-backend model that runs edgekit's own backend on the engine
  (where the server has no native backend for it, as the Triton bundled in the `nvidia-pytriton` wheel). Inputs,
  outputs, data types, dims and `max_batch_size` come from the manifest: an engine with a dynamic batch axis gets
  `max_batch_size` from its build and `dynamic_batching`; a static one `max_batch_size: 0` and its full shapes.
* NAME_preprocess and NAME_postprocess: Python-backend models calling edgekit's runtime code, the very
  `preprocess` and layout decode run-stream uses (edgekit.runtime.serving.triton_models).
* NAME_ensemble: pre -> NAME -> post. A client sends a frame (raw BGR `FRAME` or encoded `IMAGE`) and gets the
  task's result: its JSON (`RESULT`, a line of run-stream's results.jsonl) and typed tensors (Task.served_outputs).

Every model carries the model card in its `parameters` (`edgekit_card`): run-stream's Triton client reads it from the
server, and the Python models decode with it. The configs are made as Triton's own protobuf messages
(tritonclient's model_config_pb2), written in protobuf text format, and parsed back from the files written
(`check_repository`) with the files each config references."""

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgekit.errors import EdgekitError, MissingDependency
from edgekit.runtime import manifest as mf
from edgekit.runtime import registry
from edgekit.runtime.artifacts import atomic_dir, write_text
from edgekit.runtime.card import ModelCard
from edgekit.runtime.text import printable

# The model parameters edgekit writes (ModelConfig.parameters, string values)
CARD_PARAM = "edgekit_card"  # the model card, JSON
ENGINE_PARAM = "edgekit_engine"  # what the engine is: precision, backend, file, sha256, edgekit version (JSON)
ROLE_PARAM = "edgekit_role"  # model | preprocess | postprocess | ensemble

TRANSFORM = "TRANSFORM"  # preprocess -> postprocess: how the frame maps onto the input (Transform, 6 floats)
FRAME, IMAGE, RESULT = "FRAME", "IMAGE", "RESULT"

# numpy dtype name -> Triton data type (model_config.proto DataType) and its wire name (the inference protocol)
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "uint8": "TYPE_UINT8",
              "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
              "bool": "TYPE_BOOL", "object": "TYPE_STRING"}
WIRE_TYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "uint8": "UINT8", "int8": "INT8",
              "int16": "INT16", "int32": "INT32", "int64": "INT64", "bool": "BOOL", "object": "BYTES"}
NUMPY_OF_WIRE = {v: k for k, v in WIRE_TYPES.items()}

_SHIM = '''"""Written by `edgekit export-triton`: Triton's Python backend runs edgekit's own {what}
(edgekit.runtime.serving.triton_models.{cls}). The server's Python needs edgekit with NumPy, OpenCV and ONNX Runtime
(NumPy 1.x for Triton 24.x's Python backend); PYTHON_PATH (export-triton --python-path) names folders that have them,
put in front of sys.path before Triton's own utilities import NumPy."""

import sys

PYTHON_PATH = {paths!r}
sys.path[:0] = [p for p in PYTHON_PATH if p not in sys.path]


class TritonPythonModel:
    def initialize(self, args):
        from edgekit.runtime.serving import triton_models

        self.model = triton_models.{cls}(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
'''


def config_pb2() -> Any:
    """Triton's model configuration schema (tritonclient's copy of model_config.proto)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise MissingDependency("tritonclient", "triton") from None
    return model_config_pb2


@dataclass
class TritonOptions:
    name: Optional[str] = None  # the model's name in the repository (default: the card's name)
    instances: int = 1  # instance_group count of each model
    max_queue_delay_us: int = 500  # dynamic batching: how long the server waits to fill a batch
    infer_python: bool = False  # the engine runs in a Python-backend model through edgekit's backend
    python_path: Sequence[str] = ()  # folders in front of the Python models' sys.path
    overwrite: bool = False


@dataclass
class RepositoryReport:
    repository: Path
    models: Dict[str, str]  # model name -> what it is
    max_batch_size: int
    files: List[str] = field(default_factory=list)  # every file written, relative to the repository


@dataclass(frozen=True)
class _Engine:
    path: Path
    card: ModelCard
    precision: str
    backend: str  # the manifest's backend name (onnxruntime, tensorrt) or onnxruntime for a plain ONNX
    backend_version: str
    inputs: List[Tuple[str, List[Any], str]]  # name, shape with the batch axis, numpy dtype
    outputs: List[Tuple[str, List[Any], str]]
    max_batch: int  # from the build; the batch axis is dynamic where inputs[0][1][0] is not an int
    provider: str  # ONNX Runtime's execution provider (cpu, cuda, tensorrt); "" for other backends
    fp16_provider: bool  # ONNX Runtime's TensorRT provider in FP16
    sha256: str
    edgekit_version: str  # of the build that made it ("" for a plain ONNX)


def export_triton(engine: "str | Path", out: "str | Path", opts: TritonOptions) -> RepositoryReport:
    """Write the repository into `out` (a new folder; an existing non-empty one only with opts.overwrite, replaced
    whole once every file is written and every config parsed back)."""
    pb = config_pb2()
    eng = _read_engine(Path(engine))
    name = opts.name or _model_name(eng.card.name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise EdgekitError(f"--name {printable(name)}: a Triton model name is letters, digits, '_', '.' and '-'")
    if opts.instances < 1:
        raise EdgekitError(f"--instances {opts.instances}: at least 1")
    if opts.max_queue_delay_us < 0:
        raise EdgekitError(f"--max-queue-delay-us {opts.max_queue_delay_us}: 0 or more")
    task = registry.task(eng.card.task)
    batching = _batch_axis_dynamic(eng)
    max_batch = eng.max_batch if batching else 0
    names = {"model": name, "pre": f"{name}_preprocess", "post": f"{name}_postprocess", "ensemble": f"{name}_ensemble"}
    configs = _configs(pb, eng, names, task, max_batch, opts)
    with atomic_dir(out, overwrite=opts.overwrite) as tmp:
        files = _write(tmp, eng, names, configs, opts)
        write_text(tmp / "README.md", _readme(eng, names, max_batch, opts))
        files.append("README.md")
        check_repository(tmp)
    models = {names["model"]: _model_kind(eng, opts), names["pre"]: "Python: edgekit preprocessing of a frame",
              names["post"]: f"Python: edgekit {eng.card.output_layout} decode into the {eng.card.task} result",
              names["ensemble"]: "ensemble: frame -> preprocess -> model -> postprocess -> result"}
    return RepositoryReport(Path(out), models, max_batch, sorted(files))


def _model_name(card_name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", card_name).strip("._-")
    return cleaned[:100] or "model"


def _model_kind(eng: _Engine, opts: TritonOptions) -> str:
    if opts.infer_python:
        return f"Python: edgekit's {eng.backend} backend on the {eng.precision} engine"
    return f"{_platform(eng)}: the {eng.precision} engine"


def _read_engine(path: Path) -> _Engine:
    from edgekit.runtime.opening import engine_file, open_model

    engine_file(path, "export-triton")
    if mf.path_for(path).is_file():
        m = mf.read(path)
        flags = m.build_flags()

        def specs(ts: Sequence[mf.TensorDescription]) -> List[Tuple[str, List[Any], str]]:
            return [(t.name, list(t.shape), t.dtype) for t in ts]

        provider = (flags.provider or "cpu") if m.backend.name == "onnxruntime" else ""
        trt_options = (m.backend.provider_options or {}).get("TensorrtExecutionProvider") or {}
        fp16 = str(trt_options.get("trt_fp16_enable", "")).lower() in ("1", "true")
        return _Engine(path, m.card, m.precision, m.backend.name, m.backend.version, specs(m.io.inputs),
                       specs(m.io.outputs), m.max_batch, provider, fp16, m.engine.sha256, m.edgekit_version)
    if path.suffix != ".onnx":
        raise EdgekitError(f"{path}: no manifest beside it ({mf.path_for(path).name}); export-triton takes an engine "
                           "from edgekit build-engine or an edgekit ONNX")
    with open_model(path) as opened:  # a plain edgekit ONNX: its card and I/O from ONNX Runtime
        backend = opened.backend
        inputs = [(t.name, [d if isinstance(d, int) else "batch" for d in t.shape], t.dtype) for t in backend.inputs]
        outputs = [(t.name, [d if isinstance(d, int) else str(d) for d in t.shape], t.dtype) for t in backend.outputs]
        version = opened.record.version
        card = opened.card
    max_batch = 1
    return _Engine(path, card, "fp32", "onnxruntime", version, inputs, outputs, max_batch, "cpu", False,
                   mf.file_sha256(path), "")


def _batch_axis_dynamic(eng: _Engine) -> bool:
    first = eng.inputs[0][1][0] if eng.inputs and eng.inputs[0][1] else 1
    return not (isinstance(first, int) and first > 0) and eng.max_batch > 1


def _platform(eng: _Engine) -> str:
    if eng.backend == "tensorrt":
        return "tensorrt_plan"
    if eng.backend == "onnxruntime":
        return "onnxruntime_onnx"
    raise EdgekitError(f"{eng.path}: a {eng.backend} engine has no Triton backend; build one with "
                       "--backend onnxruntime or tensorrt")


def _dims(shape: Sequence[Any], batching: bool) -> List[int]:
    """A manifest shape as Triton dims: without the batch axis for a batching model, -1 for a dynamic axis."""
    dims = list(shape[1:] if batching else shape)
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]


def _tensor(pb: Any, kind: str, name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> Any:
    if dtype not in DATA_TYPES:
        raise EdgekitError(f"tensor '{printable(name)}' is {printable(dtype)}, which Triton has no data type for")
    msg = getattr(pb, kind)(name=name, data_type=getattr(pb, DATA_TYPES[dtype]), dims=list(dims))
    if optional:
        msg.optional = True
    return msg


def _params(cfg: Any, values: Dict[str, str]) -> None:
    for key, value in values.items():
        cfg.parameters[key].string_value = value


def _configs(pb: Any, eng: _Engine, names: Dict[str, str], task: Any, max_batch: int,
             opts: TritonOptions) -> Dict[str, Any]:
    batching = max_batch > 0
    card_json = eng.card.to_json()
    engine_json = json.dumps({"precision": eng.precision, "backend": eng.backend, "version": eng.backend_version,
                              "file": eng.path.name, "sha256": eng.sha256, "built_by_edgekit": eng.edgekit_version},
                             sort_keys=True)
    gpu = eng.backend == "tensorrt" or eng.provider in ("cuda", "tensorrt")

    def base(name: str, role: str, python: bool) -> Any:
        cfg = pb.ModelConfig(name=name, max_batch_size=max_batch)
        params = {CARD_PARAM: card_json, ENGINE_PARAM: engine_json, ROLE_PARAM: role}
        if python:
            cfg.backend = "python"
        _params(cfg, params)
        return cfg

    def instances(cfg: Any, kind: str) -> None:
        cfg.instance_group.add(count=opts.instances, kind=getattr(pb.ModelInstanceGroup, kind))

    def batcher(cfg: Any) -> None:
        if batching:
            cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
            cfg.dynamic_batching.preferred_batch_size.append(max_batch)

    # the engine
    model = base(names["model"], "model", opts.infer_python)
    if not opts.infer_python:
        model.platform = _platform(eng)
    for n, shape, dtype in eng.inputs:
        model.input.append(_tensor(pb, "ModelInput", n, dtype, _dims(shape, batching)))
    for n, shape, dtype in eng.outputs:
        model.output.append(_tensor(pb, "ModelOutput", n, dtype, _dims(shape, batching)))
    instances(model, "KIND_GPU" if gpu else "KIND_CPU")
    batcher(model)
    if not opts.infer_python and eng.provider == "tensorrt":  # ONNX Runtime's TensorRT execution provider
        acc = model.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16" if eng.fp16_provider else "FP32"

    # preprocess: a frame -> the engine's input and the transform
    (in_name, in_shape, in_dtype) = eng.inputs[0]
    pre = base(names["pre"], "preprocess", True)
    frame_dims = [-1, -1, 3]
    pre.input.append(_tensor(pb, "ModelInput", FRAME, "uint8", frame_dims, optional=True))
    pre.input.append(_tensor(pb, "ModelInput", IMAGE, "uint8", [-1], optional=True))
    pre.output.append(_tensor(pb, "ModelOutput", in_name, in_dtype, _dims(in_shape, batching)))
    pre.output.append(_tensor(pb, "ModelOutput", TRANSFORM, "float32", [6] if batching else [1, 6]))
    instances(pre, "KIND_CPU")
    batcher(pre)

    # postprocess: the engine's outputs and the transform -> the task's result
    post = base(names["post"], "postprocess", True)
    for n, shape, dtype in eng.outputs:
        post.input.append(_tensor(pb, "ModelInput", n, dtype, _dims(shape, batching)))
    post.input.append(_tensor(pb, "ModelInput", TRANSFORM, "float32", [6] if batching else [1, 6]))
    served = [(RESULT, "object", [1])] + list(task.served_outputs(eng.card))
    for n, dtype, dims in served:
        post.output.append(_tensor(pb, "ModelOutput", n, dtype, dims if batching else [1, *dims]))
    instances(post, "KIND_CPU")
    batcher(post)

    # the ensemble
    ens = base(names["ensemble"], "ensemble", False)
    ens.platform = "ensemble"
    ens.input.append(_tensor(pb, "ModelInput", FRAME, "uint8", frame_dims, optional=True))
    ens.input.append(_tensor(pb, "ModelInput", IMAGE, "uint8", [-1], optional=True))
    for n, dtype, dims in served:
        ens.output.append(_tensor(pb, "ModelOutput", n, dtype, dims if batching else [1, *dims]))
    steps = ens.ensemble_scheduling
    s = steps.step.add(model_name=names["pre"], model_version=-1)
    s.input_map[FRAME], s.input_map[IMAGE] = FRAME, IMAGE
    s.output_map[in_name], s.output_map[TRANSFORM] = "_input", "_transform"
    s = steps.step.add(model_name=names["model"], model_version=-1)
    s.input_map[in_name] = "_input"
    for n, _, _ in eng.outputs:
        s.output_map[n] = f"_out_{n}"
    s = steps.step.add(model_name=names["post"], model_version=-1)
    for n, _, _ in eng.outputs:
        s.input_map[n] = f"_out_{n}"
    s.input_map[TRANSFORM] = "_transform"
    for n, _, _ in served:
        s.output_map[n] = n
    return {"model": model, "pre": pre, "post": post, "ensemble": ens}


def _write(repo: Path, eng: _Engine, names: Dict[str, str], configs: Dict[str, Any], opts: TritonOptions) -> List[str]:
    from google.protobuf import text_format

    files: List[str] = []

    def put(rel: str, text: str) -> None:
        write_text(repo / rel, text)
        files.append(rel)

    for key, cfg in configs.items():
        name = names[key]
        (repo / name / "1").mkdir(parents=True)
        put(f"{name}/config.pbtxt", _HEADER + text_format.MessageToString(cfg))
    model = names["model"]
    if opts.infer_python:
        for f in (eng.path, mf.path_for(eng.path)):
            if f.is_file():
                shutil.copyfile(f, repo / model / "1" / f.name)
                files.append(f"{model}/1/{f.name}")
        put(f"{model}/1/model.py", _shim("backend running the engine", "Infer", opts.python_path))
    else:
        target = "model.plan" if eng.backend == "tensorrt" else "model.onnx"
        shutil.copyfile(eng.path, repo / model / "1" / target)
        files.append(f"{model}/1/{target}")
    put(f"{names['pre']}/1/model.py", _shim("preprocessing", "Preprocess", opts.python_path))
    put(f"{names['post']}/1/model.py", _shim("decoding", "Postprocess", opts.python_path))
    (repo / names["ensemble"] / "1").mkdir(exist_ok=True)  # an ensemble has an empty version folder
    return files


_HEADER = "# Written by edgekit export-triton (Triton model configuration, protobuf text format)\n"


def _shim(what: str, cls: str, python_path: Sequence[str]) -> str:
    return _SHIM.format(what=what, cls=cls, paths=[str(Path(p).resolve()) for p in python_path])


def check_repository(repo: "str | Path") -> Dict[str, Any]:
    """Every model's config.pbtxt parsed with Triton's schema (a one-line error naming the file otherwise), checked
    for the files it needs: a version folder, the model file of its platform or a Python model's model.py, and
    ensemble steps naming models of the repository. Returns model name -> parsed ModelConfig."""
    from google.protobuf import text_format

    pb = config_pb2()
    repo = Path(repo)
    parsed: Dict[str, Any] = {}
    for cfg_file in sorted(repo.glob("*/config.pbtxt")):
        cfg = pb.ModelConfig()
        try:
            text_format.Parse(cfg_file.read_text(encoding="utf-8"), cfg)
        except text_format.ParseError as e:
            raise EdgekitError(f"{cfg_file}: not a Triton model configuration ({printable(str(e))})") from None
        folder = cfg_file.parent
        if cfg.name and cfg.name != folder.name:
            raise EdgekitError(f"{cfg_file}: names model '{printable(cfg.name)}' in folder '{folder.name}'")
        versions = [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit()]
        if not versions:
            raise EdgekitError(f"{folder}: no version folder (1/)")
        need = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}.get(cfg.platform)
        if cfg.backend == "python":
            need = "model.py"
        for v in versions:
            if need and not (v / (cfg.default_model_filename or need)).is_file():
                raise EdgekitError(f"{v}: {cfg.default_model_filename or need} is missing")
        parsed[folder.name] = cfg
    for name, cfg in parsed.items():
        for step in cfg.ensemble_scheduling.step:
            if step.model_name not in parsed:
                raise EdgekitError(f"{repo / name / 'config.pbtxt'}: its ensemble step names model "
                                   f"'{printable(step.model_name)}', which is not in the repository")
    if not parsed:
        raise EdgekitError(f"{repo}: no model (no */config.pbtxt)")
    return parsed


def _readme(eng: _Engine, names: Dict[str, str], max_batch: int, opts: TritonOptions) -> str:
    model, ens = names["model"], names["ensemble"]
    batch = (f"`max_batch_size: {max_batch}` with dynamic batching (up to {opts.max_queue_delay_us} µs queue delay): "
             "every tensor has a leading batch axis; send one frame as `FRAME` [1, H, W, 3]"
             if max_batch else "`max_batch_size: 0` (a static engine): send one frame as `FRAME` [H, W, 3]")
    native = ("Triton's Python backend runs edgekit's own backend on the engine (`--infer-python`): the server's "
              "Python needs edgekit and its runtime." if opts.infer_python else
              f"`{_platform(eng)}` ({'model.plan' if eng.backend == 'tensorrt' else 'model.onnx'}): the server's "
              + ("TensorRT must be the version that built the engine, on the same GPU model."
                 if eng.backend == "tensorrt" else "ONNX Runtime backend runs it."))
    return f"""# Triton model repository for {eng.card.name}

Written by `edgekit export-triton` from `{eng.path.name}` ({eng.precision}, {eng.backend}).

| model | what it is |
|---|---|
| `{model}` | the engine: {native} |
| `{names['pre']}` | Python: a BGR frame (`FRAME` uint8 [H, W, 3]) or an encoded image (`IMAGE`, its bytes) -> \
the engine's input and `TRANSFORM` |
| `{names['post']}` | Python: the engine's outputs and `TRANSFORM` -> `RESULT` (the result as JSON, a line of \
run-stream's results.jsonl) and typed tensors |
| `{ens}` | ensemble: frame -> result |

{batch}. The Python models need edgekit, NumPy, OpenCV and ONNX Runtime in the server's Python (Triton
24.x's Python backend needs NumPy 1.x); `export-triton --python-path DIR` puts folders that have them in front of
`sys.path` (PYTHON_PATH in each model.py).

    tritonserver --model-repository=$PWD
    edgekit run-stream triton://127.0.0.1:8001/{model} video.mp4     # pre/post in edgekit, inference on the server
"""
