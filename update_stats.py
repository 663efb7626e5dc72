"""Recompute the training-set statistics stored in a checkpoint's config, without training.

    python update_stats.py checkpoints/best.pth --data_dir data/processed/guitarset

E.g. to add a statistic introduced after the model was trained (such as `pluck_envelope`, which
transfer.py's pluck envelope reads). The statistics (model.STATS_KEYS) are recomputed from --data_dir's
training split, rebuilt exactly as train.py builds it; the weights and everything else stay as they are,
and the file is replaced atomically. A data folder (or --val_fraction) other than the one the model was
trained on is refused with nothing written (see data.refresh_checkpoint_statistics).
"""
from __future__ import annotations

import argparse

from data import refresh_checkpoint_statistics
from utils import HelpFormatter, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="checkpoint (.pth) whose config statistics to recompute, in place")
    p.add_argument("--data_dir", default="data/processed",
                   help="the folder of .pt feature files the model was trained on (train.py --data_dir)")
    p.add_argument("--val_fraction", type=float, default=0.1,
                   help="the --val_fraction it was trained with (the statistics come from the training split)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    changed = refresh_checkpoint_statistics(args.checkpoint, args.data_dir, args.val_fraction)
    print(f"{args.checkpoint}: training-set statistics recomputed from {args.data_dir}; "
          f"{'updated ' + ', '.join(changed) if changed else 'nothing changed'}")
    return 0


if __name__ == "__main__":
    run_main(main)
