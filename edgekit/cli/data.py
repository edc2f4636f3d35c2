"""`edgekit data synth`: a seeded synthetic detection + segmentation dataset with videos."""

import argparse
from typing import List

from edgekit.cli.common import count, positive_float, positive_int, size


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    data = sub.add_parser("data", help="generate datasets (synth)", description="Dataset tools.", parents=parents)
    actions = data.add_subparsers(dest="data_verb", metavar="ACTION")
    data.set_defaults(help_of=data)
    synth = actions.add_parser(
        "synth", help="generate a seeded synthetic detection + segmentation dataset with videos", parents=parents,
        description="Generate a deterministic synthetic dataset: images, YOLO and COCO labels, class masks, "
                    "train/val/test splits, a class-balance summary and videos of moving objects with "
                    "per-frame ground truth.",
    )
    synth.add_argument("out", help="output folder (created; must not exist unless --overwrite)")
    synth.add_argument("--seed", type=count, default=0)
    synth.add_argument("--train", type=count, default=1200, help="training images (default 1200)")
    synth.add_argument("--val", type=count, default=200, help="validation images (default 200)")
    synth.add_argument("--test", type=count, default=200, help="test images (default 200)")
    synth.add_argument("--size", type=size, default=(320, 240), help="image size WxH (default 320x240)")
    synth.add_argument("--videos", type=count, default=1, help="number of videos (default 1)")
    synth.add_argument("--video-frames", type=positive_int, default=150)
    synth.add_argument("--video-size", type=size, default=(640, 480))
    synth.add_argument("--fps", type=positive_float, default=15.0)
    synth.add_argument("--jpeg-quality", type=int, default=92, choices=range(10, 101), metavar="10..100")
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=run_synth)
    return data


def run_synth(args: argparse.Namespace) -> int:
    from edgekit.runtime.data.writer import balance_markdown, write_dataset

    summary = write_dataset(
        args.out, seed=args.seed, counts={"train": args.train, "val": args.val, "test": args.test},
        size=args.size, videos=args.videos, video_frames=args.video_frames, video_size=args.video_size,
        fps=args.fps, overwrite=args.overwrite, progress=not args.quiet, jpeg_quality=args.jpeg_quality,
    )
    print(balance_markdown(summary), end="")
    print(f"wrote {args.out}")
    return 0
