import numpy as np

from edgekit.runtime.card import ModelCard
from edgekit.runtime.preprocess import preprocess, resize


def card(mode):
    return ModelCard(name="t", task="detection", arch="edgenet-det-s", classes=["a"], input_size=(256, 256),
                     resize_mode=mode, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_letterbox_keeps_aspect_and_maps_boxes_back():
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[60:120, 100:180] = 255
    tensor, tf = preprocess(frame, card("letterbox"))
    assert tensor.shape == (1, 3, 256, 256) and tensor.dtype == np.float32
    assert (tf.scale_x, tf.scale_y, tf.pad_x, tf.pad_y) == (0.8, 0.8, 0.0, 32.0)
    box = np.array([[100, 60, 180, 120]], np.float32)
    inp = tf.boxes_to_input(box)
    np.testing.assert_allclose(inp, [[80, 80, 144, 128]])
    np.testing.assert_allclose(tf.boxes_to_source(inp), box, atol=1e-4)
    # white pixels normalized to (1 - 0.5) / 0.25 = 2 inside the box, padding holds the pad value
    assert np.allclose(tensor[0, :, 100, 100], 2.0)
    assert np.allclose(tensor[0, :, 5, 5], (114 / 255 - 0.5) / 0.25)


def test_stretch_fills_the_input():
    resized, tf = resize(np.zeros((100, 400, 3), np.uint8), card("stretch"))
    assert resized.shape == (256, 256, 3) and tf.pad_x == tf.pad_y == 0
    assert tf.valid_region(256, 256) == (0, 0, 256, 256)


def test_rgb_order():
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    t, _ = preprocess(frame, card("stretch"))
    assert t[0, 0].mean() > t[0, 2].mean()  # channel 0 is red for an RGB card
