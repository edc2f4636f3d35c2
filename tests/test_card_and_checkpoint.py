import pytest
import torch

from edgekit.build.models import checkpoint
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard


def make_card(task="detection", arch="edgenet-det-s", classes=("a", "b")):
    return ModelCard(name="t", task=task, arch=arch, classes=list(classes), input_size=(64, 96))


def test_card_round_trip_yaml_and_json(tmp_path):
    card = make_card()
    card.extra["metrics"] = {"mAP50": 0.5}
    card.save(tmp_path / "c.card.yaml")
    back = ModelCard.load(tmp_path / "c.card.yaml")
    assert back == card
    assert ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(colour="red"), "unknown key(s) colour"),
        (lambda d: d.pop("classes"), "missing key(s) classes"),
        (lambda d: d["input"].pop("shape"), "missing key(s) input.shape"),
        (lambda d: d["resize"].update(mode="crop"), "resize.mode"),
        (lambda d: d.update(task="pose"), "task must be"),
    ],
)
def test_bad_cards_are_refused_with_the_key_named(change, message):
    d = make_card().to_dict()
    change(d)
    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelCard.from_dict(d, "x.yaml")


@pytest.mark.parametrize("task, arch", [("detection", "edgenet-det-s"), ("segmentation", "edgenet-seg-s")])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, task, arch):
    card = make_card(task, arch)
    model = checkpoint.build(card).eval()
    x = torch.randn(1, 3, 64, 96)
    checkpoint.save(model, card, tmp_path / "m")
    assert (tmp_path / "m.safetensors").is_file() and (tmp_path / "m.card.yaml").is_file()
    loaded, loaded_card = checkpoint.load(tmp_path)  # the folder names the checkpoint too
    assert loaded_card == card
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_weights_of_another_architecture_are_refused(tmp_path):
    det = make_card("detection", "edgenet-det-s")
    checkpoint.save(checkpoint.build(det), det, tmp_path / "m")
    (tmp_path / "m.card.yaml").write_text(
        (tmp_path / "m.card.yaml").read_text().replace("edgenet-det-s", "edgenet-det-m"))
    with pytest.raises(EdgekitError, match="saved from architecture 'edgenet-det-s'"):
        checkpoint.load(tmp_path / "m.safetensors")


def test_task_mismatch_is_named(tmp_path):
    det = make_card("detection", "edgenet-det-s")
    checkpoint.save(checkpoint.build(det), det, tmp_path / "m")
    with pytest.raises(EdgekitError, match="this is a detection model, a segmentation model is needed"):
        checkpoint.load(tmp_path / "m.safetensors", task="segmentation")


def test_truncated_weights_are_refused(tmp_path):
    det = make_card()
    checkpoint.save(checkpoint.build(det), det, tmp_path / "m")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgekitError, match="not a readable safetensors file"):
        checkpoint.load(tmp_path / "m.safetensors")
