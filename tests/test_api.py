"""The Python API as the README shows it: the ten-line loop, run as written, gives what run-stream gives."""

import ast
import contextlib
import io
import json
import re

import numpy as np
import pytest
from conftest import ROOT, run_cli

import edgekit


def readme_loop() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- the block below is run by tests/test_api.py -->", 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


@pytest.fixture(scope="module")
def int8_engines(shipped_int8_engines):
    return shipped_int8_engines


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_the_readme_loop_gives_what_run_stream_writes(int8_engines, tiny_synth, tmp_path, task):
    engine, video = int8_engines[task], tiny_synth / "videos" / "stream_00.mp4"
    code = readme_loop().replace('"det.int8.onnx"', repr(str(engine))).replace('"video.mp4"', repr(str(video)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    from_api = [ast.literal_eval(line) for line in printed.getvalue().splitlines()]  # the loop prints dicts
    r = run_cli("run-stream", str(engine), str(video), "-o", str(tmp_path), "-q", "--no-video")
    assert r.returncode == 0, r.stderr
    from_cli = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(from_api) == len(from_cli) == 6
    for a, c in zip(from_api, from_cli):
        assert a == {k: v for k, v in c.items() if k not in ("frame", "t_capture_ns")}
    if task == "detection":
        assert sum(len(a["detections"]) for a in from_api) > 0  # the shipped detector finds the shapes


def test_model_steps_and_drawing(int8_engines, tiny_synth):
    frame = edgekit.frames(str(tiny_synth / "videos" / "stream_00.mp4"))
    with frame as frames, edgekit.open(int8_engines["detection"], score_threshold=0.5) as model:
        image = next(iter(frames))
        tensor, transform = model.preprocess(image)
        outputs = model.infer(tensor)
        assert list(outputs) == ["output0"] and tensor.shape == (1, 3, *model.card.input_size)
        result = model.decode(outputs, transform)
        assert len(result) and (result.scores > 0.5).all()
        assert (result.boxes[:, 2] <= image.shape[1]).all() and (result.boxes[:, 3] <= image.shape[0]).all()
        drawn = image.copy()
        model.draw(drawn, result)
        assert not np.array_equal(drawn, image)
        assert model.last_timing.host_ms > 0


def test_import_edgekit_stays_light():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys, edgekit; print(sorted(m for m in sys.modules "
                        "if m.startswith(('edgekit.', 'cv2', 'numpy', 'onnxruntime'))))"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_bad_path_is_one_clear_error(tmp_path):
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError, match="nothing.onnx: not found"):
        edgekit.open(tmp_path / "nothing.onnx")
    with pytest.raises(EdgekitError, match="source not found"):
        edgekit.frames(str(tmp_path / "none.mp4"))
