"""ONNX Runtime's GPU providers (onnxruntime-gpu; on Jetson NVIDIA's wheel): what build-engine --provider records
and what loading derives from it. No GPU provider runs here (the CPU wheel is installed): the refusal is what a user
on this machine sees, and the options are checked as ONNX Runtime takes them."""

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.onnxruntime import ENGINE_CACHE_SUFFIX, choose_providers, provider_options
from edgekit.runtime.manifest import path_for
from edgekit.runtime.opening import open_engine

GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_providers_and_what_each_records():
    assert choose_providers("cpu", "int8", ["CPUExecutionProvider"]) == (["CPUExecutionProvider"], {})
    assert choose_providers("tensorrt", "fp16", GPU) == (GPU, {"TensorrtExecutionProvider": {"trt_fp16_enable": True}})
    assert choose_providers("cuda", "fp32", GPU) == (GPU[1:], {})
    with pytest.raises(EdgekitError, match="CUDA provider would run the Q/DQ graph in float"):
        choose_providers("cuda", "int8", GPU)
    with pytest.raises(EdgekitError, match="no fast FP16 kernels"):
        choose_providers("cpu", "fp16", GPU)


def test_the_tensorrt_provider_caches_its_engines_beside_the_engine_file():
    engine = Path("/models/det.fp16.onnx")
    opts = provider_options(GPU, {"TensorrtExecutionProvider": {"trt_fp16_enable": True}}, engine)
    cache = str(engine.with_name("det.fp16.onnx" + ENGINE_CACHE_SUFFIX))
    assert opts[0] == {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache}
    assert opts[1:] == [{}, {}]


def test_a_provider_this_onnxruntime_lacks_is_one_line(det_engine, tmp_path):
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with TensorRT is installed here")
    onnx = det_engine.with_name("det.onnx")
    r = run_cli("build-engine", str(onnx), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime",
                "--provider", "tensorrt", "--precision", "fp16")
    assert_one_line_error(r, "--provider tensorrt: this onnxruntime has no TensorrtExecutionProvider",
                          "install onnxruntime-gpu")
    assert not (tmp_path / "e.onnx").exists()


def test_a_planted_provider_option_is_refused(det_engine, tmp_path):
    """A manifest may record the TensorRT provider's FP16 switch, nothing else: options that name paths are
    derived from where the engine is, never read from the manifest."""
    engine = tmp_path / det_engine.name
    engine.write_bytes(det_engine.read_bytes())
    manifest = json.loads(path_for(det_engine).read_text())
    manifest["backend"]["provider_options"] = {"TensorrtExecutionProvider": {"trt_engine_cache_path": "/etc"}}
    path_for(engine).write_text(json.dumps(manifest))
    with pytest.raises(EdgekitError, match="provider_options.TensorrtExecutionProvider may only set trt_fp16_enable"):
        open_engine(engine)
