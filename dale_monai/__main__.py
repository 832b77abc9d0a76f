"""Command line of dale-monai: ``python -m dale_monai <command>``.

    python -m dale_monai predict --bundle bundles/synthetic2d_unet --input scans/ --output masks/
    python -m dale_monai predict --bundle B --input I --output O --network_def#channels "[8, 16, 32, 64]"

Exit status of ``predict``: 0 when every case succeeded (cases skipped because their outputs exist count as
success), 1 when at least one case failed, 2 when nothing could run (bad arguments, bundle, checkpoint or input).
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per task."""
    parser = argparse.ArgumentParser(prog="python -m dale_monai", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "predict", help="segment images, NIfTI files and DICOM series with a bundle",
        # no abbreviations: a bundle override such as --out_channels must not be taken for --output
        allow_abbrev=False,
        usage="%(prog)s --bundle DIR --input PATH --output DIR [options] [--KEY VALUE ...]",
        description="Segment a file, a folder, or a folder of DICOM series with a bundle's own inference.json. "
                    "Writes <case>_seg.png (image files), <case>_seg.nii.gz (NIfTI, DICOM) and <case>_seg.dcm "
                    "(DICOM SEG, for DICOM input) into the output folder, with summary.csv and summary.json. "
                    "Any other --KEY VALUE overrides the bundle's config item KEY, as on the command line of "
                    "python -m monai.bundle run (e.g. --network_def#channels \"[8, 16, 32, 64]\" for a bundle "
                    "trained with that override). See docs/predict.md.")
    p.add_argument("--bundle", required=True, help="the bundle folder, e.g. bundles/synthetic2d_unet")
    p.add_argument("--input", required=True,
                   help="a PNG/JPG/BMP/TIFF or NIfTI file, a folder of them, a DICOM series folder, or a folder of "
                        "DICOM series (grouped by SeriesInstanceUID)")
    p.add_argument("--output", required=True, help="output folder (created; nothing is written elsewhere)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip those cases)")
    p.add_argument("--overlay", action="store_true", help="also write <case>_overlay.png for a visual check")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: the bundle's choice, CUDA when available)")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the bundle's models/model.pt)")
    p.add_argument("--each-volume", action="store_true",
                   help="predict each volume of a 4D NIfTI (time points, b-values) as its own case <case>_vol<i>; "
                        "without it a 4D NIfTI whose volumes are not the bundle's input channels fails")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override the bundle's config item KEY (repeatable); the same as --KEY VALUE. Values are "
                        "parsed as by python -m monai.bundle: [8,16] is a list, 0.5 a number, cpu a string")
    return parser


def _predict(args: argparse.Namespace) -> int:
    from dale_monai.predict import CheckpointError, Predictor
    from dale_monai.predict.overrides import parse_override_args

    # MONAI warns once per DICOM read that the optional GPU decoder is absent; on a CPU-only machine that is
    # expected, and the repeated line would bury the per-case report a pipeline operator reads
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

    try:
        overrides = parse_override_args(args.extra, args.override)
        predictor = Predictor(args.bundle, device=args.device, checkpoint=args.checkpoint, overrides=overrides)
        report = predictor.predict_path(args.input, args.output, overwrite=args.overwrite, overlay=args.overlay,
                                        progress=args.progress, each_volume=args.each_volume)
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.describe())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    # the words predict does not know are bundle overrides (--KEY VALUE); elsewhere they are errors
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "predict":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command == "predict":
        return _predict(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse only accepts the commands above


if __name__ == "__main__":
    sys.exit(main())
