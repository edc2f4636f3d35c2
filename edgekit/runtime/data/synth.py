"""Deterministic synthetic scenes: a few shape classes on textured backgrounds, with ground truth.

Pure NumPy/OpenCV (runtime side), so the same renderer serves `edgekit data synth`, the stream
runner's `synthetic://` source and the tests. Every image is seeded by (seed, stream, index) alone,
so one image does not depend on how many others were generated.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np

CLASSES = ("disc", "square", "triangle", "star")
GENERATOR_VERSION = 1


@dataclass
class Shape:
    """One object: class, centre, size (circumscribed radius, px), rotation, colour and fill."""

    cls: int
    cx: float
    cy: float
    radius: float
    angle: float
    color: Tuple[int, int, int]
    texture: int  # 0 solid, 1 stripes, 2 speckle
    vx: float = 0.0
    vy: float = 0.0
    spin: float = 0.0

    def polygon(self) -> Optional[np.ndarray]:
        """Vertices for the polygon classes; None for the disc."""
        if self.cls == 0:
            return None
        if self.cls == 1:
            k, radii = 4, [self.radius]
        elif self.cls == 2:
            k, radii = 3, [self.radius]
        else:
            k, radii = 5, [self.radius, self.radius * 0.45]
        pts = []
        n = k * len(radii)
        for i in range(n):
            a = self.angle + 2 * math.pi * i / n
            r = radii[i % len(radii)]
            pts.append((self.cx + r * math.cos(a), self.cy + r * math.sin(a)))
        return np.array(pts, dtype=np.float32)

    def draw_mask(self, mask: np.ndarray, x0: int = 0, y0: int = 0) -> None:
        """Set this shape's pixels to 1 in a uint8 mask whose top-left pixel is (x0, y0) of the frame
        (sub-pixel accurate via fixed-point drawing)."""
        shift = 4
        f = 1 << shift
        poly = self.polygon()
        if poly is None:
            centre = (int((self.cx - x0) * f), int((self.cy - y0) * f))
            cv2.circle(mask, centre, int(self.radius * 0.8 * f), 1, -1, cv2.LINE_8, shift)
        else:
            pts = np.round((poly - np.array([x0, y0], np.float32)) * f).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, shift)

    def roi(self, w: int, h: int) -> Tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the frame that can hold this shape's pixels."""
        r = self.radius + 2
        return (max(0, int(self.cx - r)), max(0, int(self.cy - r)),
                min(w, int(self.cx + r) + 2), min(h, int(self.cy + r) + 2))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, upsampled smoothly."""
    g = rng.random((h // cell + 3, w // cell + 3, channels)).astype(np.float32)
    big = cv2.resize(g, ((w // cell + 3) * cell, (h // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(big.shape[0], big.shape[1], channels)
    return np.clip(big[:h, :w], 0, 1)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def render_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured float32 HxWx3 background in [0, 255]: noise, stripes, checks, gradient or blobs."""
    kind = int(rng.integers(0, 5))
    c1, c2 = _random_color(rng), _random_color(rng)
    if kind == 0:
        t = _smooth_noise(rng, h, w, int(rng.integers(8, 48)), 1)
    elif kind == 1:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (0.5 + 0.5 * np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period))[..., None]
    elif kind == 2:
        s = int(rng.integers(8, 40))
        yy, xx = np.mgrid[0:h, 0:w]
        t = (((xx // s) + (yy // s)) % 2).astype(np.float32)[..., None]
    elif kind == 3:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(a) + yy * math.sin(a)
        t = ((g - g.min()) / max(1e-6, float(g.max() - g.min())))[..., None]
    else:
        t = np.zeros((h, w, 1), np.float32)
        for _ in range(int(rng.integers(10, 40))):
            cv2.ellipse(
                t,
                (int(rng.integers(0, w)), int(rng.integers(0, h))),
                (int(rng.integers(5, w // 4)), int(rng.integers(5, h // 4))),
                float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.2, 1.0)), -1,
            )
    bg = c1 * (1 - t) + c2 * t
    bg += (_smooth_noise(rng, h, w, 4) - 0.5) * rng.uniform(10, 50)
    return bg.astype(np.float32)


def draw_clutter(rng: np.random.Generator, img: np.ndarray, count: int, max_size: float) -> np.ndarray:
    """Unlabelled distractors (lines, thin ellipses, arcs) drawn onto img; returns their pixel mask."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(count):
        color = tuple(float(c) for c in _random_color(rng))
        kind = int(rng.integers(0, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.uniform(4, max_size))
        thick = int(rng.integers(1, 4))
        if kind == 0:
            a = rng.uniform(0, 2 * math.pi)
            p2 = (int(x + size * 2 * math.cos(a)), int(y + size * 2 * math.sin(a)))
            cv2.line(img, (x, y), p2, color, thick)
            cv2.line(mask, (x, y), p2, 1, thick)
        elif kind == 1:
            axes = (size, max(2, size // 5))
            ang = float(rng.uniform(0, 180))
            cv2.ellipse(img, (x, y), axes, ang, 0, 360, color, -1)
            cv2.ellipse(mask, (x, y), axes, ang, 0, 360, 1, -1)
        else:
            ang = float(rng.uniform(0, 360))
            cv2.ellipse(img, (x, y), (size, size), ang, 0, 200, color, thick)
            cv2.ellipse(mask, (x, y), (size, size), ang, 0, 200, 1, thick)
    return mask


def random_shape(rng: np.random.Generator, h: int, w: int, speed: float = 0.0) -> Shape:
    m = min(h, w)
    radius = float(rng.uniform(0.05, 0.19) * m)
    a = rng.uniform(0, 2 * math.pi)
    v = speed * rng.uniform(0.3, 1.0) * m
    return Shape(
        cls=int(rng.integers(0, len(CLASSES))),
        cx=float(rng.uniform(radius * 0.5, w - radius * 0.5)),
        cy=float(rng.uniform(radius * 0.5, h - radius * 0.5)),
        radius=radius,
        angle=float(rng.uniform(0, 2 * math.pi)),
        color=tuple(int(c) for c in rng.integers(0, 256, 3)),  # type: ignore[arg-type]
        texture=int(rng.integers(0, 3)),
        vx=float(v * math.cos(a)),
        vy=float(v * math.sin(a)),
        spin=float(rng.uniform(-0.05, 0.05)) if speed else 0.0,
    )


def _fill(rng: np.random.Generator, shape: Shape, bg_mean: np.ndarray, h: int, w: int) -> np.ndarray:
    """The object's colour field: its colour pushed away from the background, with a texture."""
    color = np.array(shape.color, np.float32)
    if abs(float(color.mean() - bg_mean.mean())) < 50:  # keep the object visible against its surroundings
        color = np.clip(color + (90 if bg_mean.mean() < 128 else -90), 0, 255)
    field = np.broadcast_to(color, (h, w, 3)).copy()
    if shape.texture == 1:
        yy = np.arange(h, dtype=np.float32)[:, None]
        field *= (0.8 + 0.2 * np.sin(yy / 3.0))[..., None]
    elif shape.texture == 2:
        field *= 0.8 + 0.4 * rng.random((h, w, 1), dtype=np.float32)
    return field


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 uint8 BGR
    mask: np.ndarray  # HxW uint8: 0 background, class index + 1 elsewhere
    boxes: np.ndarray  # Nx4 float32 xyxy of each object's visible pixels
    classes: np.ndarray  # N int64
    visible: np.ndarray  # N float32: visible share of each object's area


def compose(
    rng: np.random.Generator,
    background: np.ndarray,
    shapes: List[Shape],
    clutter_on_top: int,
    degrade: bool = True,
) -> Frame:
    """Draw shapes (in order, later ones on top) on a background, then light, blur and noise it."""
    h, w = background.shape[:2]
    img = background.copy()
    instance = np.zeros((h, w), np.int32)  # 0 = none, i + 1 = shape i
    full_area = []
    bg_mean = background.reshape(-1, 3).mean(0)
    for i, s in enumerate(shapes):
        m = np.zeros((h, w), np.uint8)
        s.draw_mask(m)
        full_area.append(int(m.sum()))
        sel = m.astype(bool)
        img[sel] = _fill(rng, s, bg_mean, h, w)[sel]
        instance[sel] = i + 1
    if clutter_on_top:
        top = draw_clutter(rng, img, clutter_on_top, max(6, min(h, w) * 0.06))
        instance[top.astype(bool)] = 0
    img = _degrade(rng, img) if degrade else img.clip(0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    boxes, classes, visible = [], [], []
    for i, s in enumerate(shapes):
        ys, xs = np.nonzero(instance == i + 1)
        if len(xs) < 30:
            continue
        mask[ys, xs] = s.cls + 1
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        classes.append(s.cls)
        visible.append(len(xs) / max(1, full_area[i]))
    return Frame(
        image=img,
        mask=mask,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        classes=np.array(classes, np.int64),
        visible=np.array(visible, np.float32),
    )


def _degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Lighting change, blur and sensor noise."""
    h, w = img.shape[:2]
    light = 0.55 + 0.9 * _smooth_noise(rng, h, w, max(h, w) // 2, 1)
    img = img * light * rng.uniform(0.8, 1.2) + rng.uniform(-25, 25)
    r = rng.random()
    if r < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 1.6))
    elif r < 0.5:
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        img = cv2.filter2D(img, -1, kernel / max(1e-6, float(kernel.sum())))
    img = img + rng.normal(0, rng.uniform(2, 12), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _overlaps_too_much(instance: np.ndarray, new_mask: np.ndarray, limit: float) -> bool:
    """Would new_mask hide more than `limit` of any object already drawn?"""
    hidden = instance[new_mask.astype(bool)]
    hidden = hidden[hidden > 0]
    if hidden.size == 0:
        return False
    ids, counts = np.unique(hidden, return_counts=True)
    return any(c > limit * (instance == i).sum() for i, c in zip(ids, counts))


def place_shapes(rng: np.random.Generator, h: int, w: int, count: int, speed: float = 0.0) -> List[Shape]:
    """Up to `count` shapes placed so that none hides more than 40% of another."""
    shapes: List[Shape] = []
    instance = np.zeros((h, w), np.int32)
    for _ in range(count):
        for _attempt in range(20):
            s = random_shape(rng, h, w, speed)
            m = np.zeros((h, w), np.uint8)
            s.draw_mask(m)
            if not _overlaps_too_much(instance, m, 0.4):
                shapes.append(s)
                instance[m.astype(bool)] = len(shapes)
                break
    return shapes


def render_image(seed: int, index: int, size: Tuple[int, int] = (320, 240)) -> Frame:
    """Image `index` of the still-image set generated with `seed`; size is (width, height)."""
    w, h = size
    rng = np.random.default_rng([seed, 0, index])
    bg = render_background(rng, h, w)
    bg_u8 = bg.clip(0, 255).astype(np.uint8)
    draw_clutter(rng, bg_u8, int(rng.integers(0, 8)), min(h, w) * 0.2)
    shapes = place_shapes(rng, h, w, int(rng.integers(1, 7)))
    return compose(rng, bg_u8.astype(np.float32), shapes, clutter_on_top=int(rng.integers(0, 3)))


class VideoScene:
    """A stream of frames of shapes moving over a fixed background, with ground truth per frame.

    Fast enough for a live synthetic source: shapes are drawn only inside their own bounding boxes,
    the lit background is prepared once, and sensor noise cycles through a small precomputed bank.
    """

    def __init__(self, seed: int, size: Tuple[int, int] = (640, 480), objects: int = 5, speed: float = 0.01) -> None:
        self.w, self.h = size
        self.rng = np.random.default_rng([seed, 1])
        bg = render_background(self.rng, self.h, self.w).clip(0, 255).astype(np.uint8)
        draw_clutter(self.rng, bg, 6, min(self.h, self.w) * 0.2)
        self.shapes = place_shapes(self.rng, self.h, self.w, objects, speed=speed)
        # Fixed uneven lighting: a per-frame random light field would flicker.
        light = 0.6 + 0.8 * _smooth_noise(self.rng, self.h, self.w, max(self.h, self.w) // 2, 1)
        self.light = light.astype(np.float32)
        self.background = np.clip(bg.astype(np.float32) * self.light, 0, 255).astype(np.uint8)
        bg_mean = bg.reshape(-1, 3).mean(0)
        self.colors = [_fill(self.rng, Shape(s.cls, 0, 0, 1, 0, s.color, 0), bg_mean, 1, 1)[0, 0] for s in self.shapes]
        sigma = float(self.rng.uniform(2, 8))
        noise = [self.rng.normal(0, sigma, (self.h, self.w, 3)) for _ in range(4)]
        self.noise = [(np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)) for n in noise]
        self.index = 0

    def next(self) -> Frame:
        if self.index:
            self._move()
        self.index += 1
        h, w = self.h, self.w
        img = self.background.copy()
        instance = np.zeros((h, w), np.uint8)
        full_area = []
        for i, s in enumerate(self.shapes):
            x0, y0, x1, y1 = s.roi(w, h)
            m = np.zeros((y1 - y0, x1 - x0), np.uint8)
            if m.size:
                s.draw_mask(m, x0, y0)
            sel = m.astype(bool)
            full_area.append(int(sel.sum()))
            colour = self.colors[i] * self.light[y0:y1, x0:x1][sel]
            if s.texture == 1:  # stripes, as in the still images
                rows = np.nonzero(sel)[0] + y0
                colour *= (0.8 + 0.2 * np.sin(rows / 3.0))[:, None]
            img[y0:y1, x0:x1][sel] = np.clip(colour, 0, 255).astype(np.uint8)
            instance[y0:y1, x0:x1][sel] = i + 1
        pos, neg = self.noise[self.index % len(self.noise)]
        img = cv2.subtract(cv2.add(img, pos), neg)
        mask = np.zeros((h, w), np.uint8)
        boxes, classes, visible = [], [], []
        for i, s in enumerate(self.shapes):
            x0, y0, x1, y1 = s.roi(w, h)
            ys, xs = np.nonzero(instance[y0:y1, x0:x1] == i + 1)
            if len(xs) < 30:
                continue
            mask[ys + y0, xs + x0] = s.cls + 1
            boxes.append([xs.min() + x0, ys.min() + y0, xs.max() + x0 + 1, ys.max() + y0 + 1])
            classes.append(s.cls)
            visible.append(len(xs) / max(1, full_area[i]))
        return Frame(img, mask, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64),
                     np.array(visible, np.float32))

    def _move(self) -> None:
        for s in self.shapes:
            s.cx += s.vx
            s.cy += s.vy
            s.angle += s.spin
            if not s.radius * 0.5 <= s.cx <= self.w - s.radius * 0.5:
                s.vx = -s.vx
                s.cx = min(max(s.cx, s.radius * 0.5), self.w - s.radius * 0.5)
            if not s.radius * 0.5 <= s.cy <= self.h - s.radius * 0.5:
                s.vy = -s.vy
                s.cy = min(max(s.cy, s.radius * 0.5), self.h - s.radius * 0.5)
