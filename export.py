#!/usr/bin/env python3
"""Export a trained model for SpeechBrain's inference API.

    python export.py results/sepformer-wsj0mix/1234 exported_model

writes `hyperparams.yaml`, `encoder.ckpt`, `masknet.ckpt` and `decoder.ckpt` (the run's best checkpoint by
validation SI-SNR) into EXPORT_DIR. The folder needs SpeechBrain alone, holds no data path, optimiser or hub
reference, and loads offline with

    from speechbrain.inference.separation import SepformerSeparation
    model = SepformerSeparation.from_hparams(source="exported_model", savedir="pretrained_models/mine")
    est_sources = model.separate_batch(mixture)  # [batch, time] -> [batch, time, num_spks]
"""

import argparse
import logging
import sys

from speechsep.inference import ModelFolderError, export_model

logger = logging.getLogger("export")


def main(argv: list[str] | None = None) -> int:
    """Export RUN_DIR to EXPORT_DIR; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training output folder (or an earlier export)")
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="folder to write (created if needed)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    for name in ("export", "speechsep"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        export_model(args.run_dir, args.export_dir)
    except (ModelFolderError, OSError) as err:
        logger.error(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
