"""Small detection and segmentation networks for Jetson-class devices.

Only ops that export cleanly to ONNX opset 17 and quantize well: Conv + BatchNorm (folded at
export) + ReLU, nearest/bilinear resize, add, concat. Channel counts are multiples of 8.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.build.models.registry import register


def _round8(c: float) -> int:
    return max(8, int(round(c / 8)) * 8)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, act: bool = True) -> None:
        layers: List[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(c, c)
        self.conv2 = ConvBNReLU(c, c, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class Backbone(nn.Module):
    """Five stride-2 stages; returns features at strides 4, 8, 16 and 32."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        self.stem = ConvBNReLU(3, widths[0], s=2)
        stages = []
        for i in range(1, len(widths)):
            blocks: List[nn.Module] = [ConvBNReLU(widths[i - 1], widths[i], s=2)]
            blocks += [ResBlock(widths[i]) for _ in range(depths[i - 1])]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.widths = list(widths)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats  # strides 4, 8, 16, 32


class TopDown(nn.Module):
    """FPN-style top-down merge of backbone features down to the finest requested stride."""

    def __init__(self, in_widths: Sequence[int], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([ConvBNReLU(c, width, k=1) for c in in_widths])
        self.smooth = nn.ModuleList([ConvBNReLU(width, width) for _ in in_widths[:-1]])

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") + self.lateral[i](feats[i])
            x = self.smooth[i](x)
        return x


class Detector(nn.Module):
    """Anchor-free single-level detector; output in the YOLOv8 layout [B, 4 + num_classes, anchors].

    Boxes are (centre x, centre y, width, height) in input pixels; scores are per-class sigmoids.
    Each anchor point (one per stride-8 cell) predicts distances to the box's four sides.
    """

    task = "detection"

    def __init__(self, num_classes: int, input_size: Tuple[int, int], width: float = 1.0, stride: int = 8) -> None:
        super().__init__()
        if stride not in (8, 16):
            raise ValueError("stride must be 8 or 16")
        widths = [_round8(c * width) for c in (16, 32, 64, 96, 128)]
        self.backbone = Backbone(widths, depths=(1, 1, 1, 1))
        first = 2 if stride == 8 else 3  # index into widths of the finest merged level
        neck = _round8(64 * width)
        self.neck = TopDown(widths[first:], neck)
        self.box_head = nn.Sequential(ConvBNReLU(neck, neck), nn.Conv2d(neck, 4, 1))
        self.cls_head = nn.Sequential(ConvBNReLU(neck, neck), nn.Conv2d(neck, num_classes, 1))
        nn.init.constant_(self.cls_head[-1].bias, -4.6)  # start from a prior of 1% (focal-loss practice)
        nn.init.constant_(self.box_head[-1].bias, 1.0)
        self.num_classes, self.stride, self.first = num_classes, stride, first - 1
        h, w = input_size
        if h % 32 or w % 32:
            raise ValueError(f"input size must be a multiple of 32, got {h}x{w}")
        gy, gx = torch.meshgrid(torch.arange(h // stride), torch.arange(w // stride), indexing="ij")
        points = torch.stack([gx, gy], 0).reshape(2, -1).float().add(0.5).mul(stride)
        self.register_buffer("points", points, persistent=False)  # [2, anchors]

    def output_layers(self) -> List[nn.Module]:
        """The layers whose channels are the output layout (never pruned)."""
        return [self.box_head[-1], self.cls_head[-1]]

    def forward_raw(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(xyxy boxes [B, 4, N] in input pixels, class logits [B, C, N])."""
        feats = self.backbone(x)
        f = self.neck(feats[self.first:])
        b = f.shape[0]
        ltrb = F.softplus(self.box_head(f).reshape(b, 4, -1)) * self.stride
        logits = self.cls_head(f).reshape(b, self.num_classes, -1)
        xy1 = self.points - ltrb[:, :2]
        xy2 = self.points + ltrb[:, 2:]
        return torch.cat([xy1, xy2], 1), logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xyxy, logits = self.forward_raw(x)
        xy1, xy2 = xyxy[:, :2], xyxy[:, 2:]
        return torch.cat([(xy1 + xy2) * 0.5, xy2 - xy1, logits.sigmoid()], 1)


class Segmenter(nn.Module):
    """Encoder-decoder segmenter: logits [B, classes, H, W] at input resolution."""

    task = "segmentation"

    def __init__(self, num_classes: int, input_size: Tuple[int, int], width: float = 1.0) -> None:
        super().__init__()
        widths = [_round8(c * width) for c in (16, 32, 64, 96, 128)]
        self.backbone = Backbone(widths, depths=(1, 1, 1, 1))
        dec = _round8(48 * width)
        self.decoder = TopDown(widths[1:], dec)  # strides 4..32 -> stride 4
        self.classifier = nn.Sequential(ConvBNReLU(dec, dec), nn.Conv2d(dec, num_classes, 1))
        h, w = input_size
        if h % 32 or w % 32:
            raise ValueError(f"input size must be a multiple of 32, got {h}x{w}")
        self.num_classes = num_classes

    def output_layers(self) -> List[nn.Module]:
        return [self.classifier[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.decoder(self.backbone(x))
        return F.interpolate(self.classifier(f), scale_factor=4.0, mode="bilinear", align_corners=False)


def _registered(cls: type, kind: str, width: float, size: str) -> None:
    def factory(num_classes: int, input_size: Tuple[int, int]) -> nn.Module:
        return cls(num_classes, input_size, width=width)

    task: str = cls.task  # type: ignore[attr-defined]
    register(f"edgenet-{task[:3]}-{size}", task, f"{kind}, width {width}")(factory)


for _size, _width in (("s", 0.5), ("m", 1.0)):
    _registered(Detector, "anchor-free detector, YOLOv8 output layout", _width, _size)
    _registered(Segmenter, "encoder-decoder segmenter", _width, _size)
