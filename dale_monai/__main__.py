"""Command line of dale-monai: ``python -m dale_monai <command>``.

    python -m dale_monai predict --bundle bundles/synthetic2d_unet --input scans/ --output masks/
    python -m dale_monai predict --bundle B --input I --output O --network_def#channels "[8, 16, 32, 64]"
    python -m dale_monai audit --bundle bundles/ph2_unet --datalist data/ph2/datalist.json --output audit/

Exit status of ``audit``: 0 when the audit was written, 2 when it could not run (bad arguments, bundle, datalist,
case, checkpoint, or an output folder holding an audit without --overwrite).

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
    a = commands.add_parser(
        "audit", help="rank the training labels of a datalist by how likely they are wrong, per case and pixel",
        allow_abbrev=False,
        usage="%(prog)s --bundle DIR --datalist JSON --output DIR [options] [--KEY VALUE ...]",
        description="Train --folds cross-validation models with the bundle's training config (each fold never "
                    "scores the cases it was trained on), score every training case with cleanlab's segmentation "
                    "label-quality scores and label issues, DALE's fuzzy partition and the per-case training "
                    "loss/omega, and write audit.csv (worst first), a suspicion map per case in its input geometry, "
                    "overlays and a contact sheet of the worst cases and review_datalist.json. Finished folds are "
                    "kept in OUTPUT/folds and reused by a rerun. Any other --KEY VALUE overrides the bundle's config "
                    "item KEY for training and scoring (e.g. --num_epochs 20 --spatial_size \"[96, 96]\"). "
                    "See docs/audit.md.")
    a.add_argument("--bundle", required=True, help="the bundle folder, e.g. bundles/ph2_unet")
    a.add_argument("--datalist", required=True, help="MONAI datalist JSON whose 'training' cases are audited")
    a.add_argument("--output", required=True, help="output folder (created)")
    a.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="a further config file of the bundle merged over train.json (repeatable), e.g. "
                        "plain_train.json for standard training instead of DALE")
    a.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds (default 5); 0 scores the cases with trained weights instead "
                        "(--checkpoint or the bundle's models/model.pt; in-sample, so weaker)")
    a.add_argument("--epochs", type=int, default=None, help="training epochs per fold (the bundle's num_epochs)")
    a.add_argument("--checkpoint", default=None, help="weights for --folds 0 (default: the bundle's models/model.pt)")
    a.add_argument("--seed", type=int, default=0, help="seed of the folds and of their training (default 0)")
    a.add_argument("--signals", default=None,
                   help="comma-separated case signals combined into the score (default: cleanlab,cleanlab_issues,"
                        "disagreement,loss,omega where available; partition is reported only)")
    a.add_argument("--pixel-signals", default="cleanlab",
                   help="comma-separated per-pixel maps averaged into the suspicion map: cleanlab, partition "
                        "(default cleanlab)")
    a.add_argument("--case-stats", action="append", default=[], metavar="CSV",
                   help="per-case statistics of another training run on these labels (written by "
                        "dale_monai.handlers.CaseStatsHandler), read as the loss/omega signals (repeatable)")
    a.add_argument("--worst", type=int, default=20,
                   help="cases in the overlays, contact sheet and review_datalist.json (default 20)")
    a.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the bundle's choice)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace an existing audit in --output, and retrain folds of another configuration")
    a.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override the bundle's config item KEY (repeatable); the same as --KEY VALUE")
    return parser


def _audit(args: argparse.Namespace) -> int:
    from dale_monai.audit import LabelAudit
    from dale_monai.predict import CheckpointError
    from dale_monai.predict.overrides import parse_override_args

    try:
        overrides = parse_override_args(args.extra, args.override)
        if args.epochs is not None:
            overrides["num_epochs"] = args.epochs
        split = (lambda text: [s.strip() for s in text.split(",") if s.strip()])
        audit = LabelAudit(args.bundle, configs=args.config, overrides=overrides, folds=args.folds,
                           checkpoint=args.checkpoint, seed=args.seed, device=args.device,
                           signals=split(args.signals) if args.signals else None,
                           pixel_signals=split(args.pixel_signals), case_stats=args.case_stats, worst=args.worst,
                           progress=args.progress)
        result = audit.run(args.datalist, args.output, overwrite=args.overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = result.rows
    print(f"audited {len(rows)} training case(s); worst first:")
    for row in rows[: min(10, len(rows))]:
        print(f"  {row['rank']:>3}. {row['case']}  score {row['score']:.3f}  suspected pixels "
              f"{row['suspected_pixel_fraction']:.2%}  agreeing: {row['agreeing_signals'] or '-'}")
    print(f"wrote {result.outputs['audit_csv']}, {result.outputs['review_datalist']}, "
          f"{result.outputs['contact_sheet']}")
    return 0


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
    # the words predict and audit do not know are bundle overrides (--KEY VALUE); elsewhere they are errors
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("predict", "audit"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command == "predict":
        return _predict(args)
    if args.command == "audit":
        return _audit(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse only accepts the commands above


if __name__ == "__main__":
    sys.exit(main())
