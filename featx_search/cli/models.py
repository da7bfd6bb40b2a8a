"""Commands about models rather than a library: `models` (the built-in ones side by side),
`layers` (what a model offers) and `eval` (scoring extraction settings on a labelled folder)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_WEIGHTS,
    POOLS,
    PRECISION_CHOICES,
    ExtractorSpec,
    Method,
    Pool,
    PrecisionChoice,
)
from ..evaluation import INPUTS, EvalResult, evaluate
from ..extract.layers import list_layers
from . import output
from .index_options import method_option
from .options import db_option, json_option


@click.command()
@click.option(
    "--speed",
    is_flag=True,
    help="Also time each model's forward pass here (random input, batches of 8; a few "
    "seconds per model).",
)
@json_option
def models(speed: bool, as_json: bool) -> None:
    """List the built-in models: input size, vector size of the default layers, published
    ImageNet top-1, `eval` scores measured with their defaults, and with --speed images/s on
    this machine. Any torchvision classification model can be named too (random weights
    offline)."""
    from ..extract.catalog import model_cards

    output.model_table(model_cards(speed=speed), as_json=as_json)


@click.command()
@click.argument("model")
@click.option(
    "--weights",
    "-w",
    default="none",
    show_default=True,
    help="Weights to build the model with; layer names and shapes do not depend on them, "
    "so the default needs no download.",
)
@click.option(
    "--filter",
    "pattern",
    help="Only layers whose name contains this text, or matches it as a glob "
    "(e.g. 'layer4*', '*.conv2').",
)
@method_option
@json_option
@db_option
def layers(
    model: str, weights: str, pattern: str | None, method: Method | None, as_json: bool
) -> None:
    """List every layer (FX node) of MODEL: output shape, channels, spatial size, and the cost
    of extracting up to it as a share of the whole network's FLOPs; * marks the default."""
    spec = ExtractorSpec(model=model, weights=weights, method=method or "auto")
    output.layer_table(list_layers(spec, pattern=pattern), as_json=as_json)


def _eval_specs(
    models: tuple[str, ...],
    weights: str,
    layer_sets: tuple[str, ...],
    pools: tuple[Pool, ...],
    method: Method | None,
    precisions: tuple[PrecisionChoice, ...] = (),
) -> list[ExtractorSpec]:
    """Every combination of --model, --layer (``a+b`` concatenates), --pool and
    --precision."""
    return [
        ExtractorSpec(
            model=model,
            weights=weights,
            layers=tuple(part for part in layer.split("+") if part) if layer else (),
            pool=pool,
            precision=precision,
            method=method or "auto",
        )
        for model in models or (DEFAULT_MODEL,)
        for layer in layer_sets or ("",)
        for pool in pools or (None,)
        for precision in precisions or ("auto",)
    ]


@click.command("eval")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--model", "-m", "models", multiple=True, help=f"Model (repeatable)  [default: {DEFAULT_MODEL}]"
)
@click.option("--weights", "-w", default=DEFAULT_WEIGHTS, show_default=True, help="Weights.")
@click.option(
    "--layer",
    "-l",
    "layer_sets",
    multiple=True,
    help="Layer to try (repeatable); join layers with + to concatenate them, e.g. "
    "layer3+layer4  [default: the model's default layer]",
)
@click.option(
    "--pool", "pools", multiple=True, type=click.Choice(POOLS), help="Pooling to try (repeatable)."
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Choice(INPUTS),
    help="Input handling to try (repeatable): crop = resize and centre crop as the weights "
    "expect, full = the whole frame squashed to the input size  [default: the model's]",
)
@click.option(
    "--copies",
    is_flag=True,
    help="Also search with edited copies of each image (crops, rotations, 1/8 size, JPEG "
    "10, grey, mirror, blur, colour, a phone screenshot, and pairs of them) and report "
    "recall@1 per edit.",
)
@click.option(
    "--qe",
    "qes",
    multiple=True,
    type=click.IntRange(min=0),
    help="Also score alpha query expansion with this many neighbours (repeatable; 0: none).",
)
@click.option(
    "--dba",
    "dbas",
    multiple=True,
    type=click.IntRange(min=0),
    help="Also score database-side augmentation with this many neighbours (repeatable; 0: none).",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(PRECISION_CHOICES),
    help="Precision to try (repeatable; int8 is calibrated on up to 300 of the set's images)  "
    "[default: auto, the fastest this device runs natively]",
)
@method_option
@json_option
def eval_command(
    folder: Path,
    models: tuple[str, ...],
    weights: str,
    layer_sets: tuple[str, ...],
    pools: tuple[Pool, ...],
    inputs: tuple[str, ...],
    copies: bool,
    qes: tuple[int, ...],
    dbas: tuple[int, ...],
    precisions: tuple[PrecisionChoice, ...],
    method: Method | None,
    as_json: bool,
) -> None:
    """Score extraction settings on FOLDER, which holds one subfolder of images per class.

    Every image queries the others: mAP, P@1 and P@10 count images of its class. Every
    combination of --model, --layer, --pool, --precision, --input, --qe and --dba is
    scored. No library is used.
    """
    specs = _eval_specs(models, weights, layer_sets, pools, method, precisions)

    def show(result: EvalResult) -> None:
        output.eval_row(result, as_json=as_json, expansions=bool(qes or dbas))

    expansions = [(qe, dba) for qe in qes or (0,) for dba in dbas or (0,)]
    if not as_json:
        output.eval_header(copies=copies, expansions=bool(qes or dbas))
    results = evaluate(
        folder,
        specs,
        inputs=inputs or (None,),
        copies=copies,
        expansions=expansions,
        progress=show,
    )
    if not as_json:
        output.eval_footer(results)
