#!/usr/bin/env python3
"""Export a trained model for SpeechBrain's inference API, with a model card.

    python export.py results/sepformer-wsj0mix/1234 exported_model

writes `hyperparams.yaml`, `encoder.ckpt`, `masknet.ckpt` and `decoder.ckpt` (the run's best checkpoint by
validation SI-SNR) and `README.md` (architecture, training corpus and config, test scores, how to load it)
into EXPORT_DIR. MODEL_DIR may also be an earlier export (its card's training and test scores are carried
over) or a SpeechBrain model folder as published. The folder needs SpeechBrain alone, holds no data path,
optimiser or hub reference, and loads offline with

    from speechbrain.inference.separation import SepformerSeparation
    model = SepformerSeparation.from_hparams(source="exported_model", savedir="pretrained_models/mine")
    est_sources = model.separate_batch(mixture)  # [batch, time] -> [batch, time, num_spks]

EXPORT_DIR must be new or empty (--overwrite replaces an earlier export, never a folder of other files), and
never a training run's folder. The files are written whole, all of them or none.
"""

import argparse
import logging
import sys

from speechsep.errors import RecipeError
from speechsep.inference.model_folder import export_model

logger = logging.getLogger("export")


def main(argv: list[str] | None = None) -> int:
    """Export MODEL_DIR to EXPORT_DIR; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="training output folder, export or SpeechBrain model")
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="folder to write (created if needed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in EXPORT_DIR")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    for name in ("export", "speechsep"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        export_model(args.model_dir, args.export_dir, overwrite=args.overwrite)
    except (RecipeError, OSError) as err:  # ModelFolderError, and OutputError for a file that cannot be written
        logger.error(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
