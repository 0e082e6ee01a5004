"""`mace`: the command line of the erasure engine and service.

Engine commands import torch lazily, so the API-only install keeps a working `mace --help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DESCRIPTION = """\
Erase concepts from Stable Diffusion models with MACE (mass concept erasure).

Typical use:
  mace tiny-model ./tiny                               # a small offline model to try things on
  mace erase --model ./tiny --concept "cat, kitten" --out ./erased-cat
  mace generate --erased ./erased-cat --prompt "a photo of a cat" --out cat.png
  mace export --erased ./erased-cat --format lora --out ./cat-lora

Models are local diffusers folders or Hugging Face ids already in the local cache; nothing is
downloaded.
"""

ERASE_HELP = """\
Run MACE's three stages (cfr: closed-form refinement of cross-attention, lora: one LoRA per
concept group trained to suppress its attention, fusion: closed-form fusion of the LoRAs) and
write the edit (edit.safetensors, a few MB), each group's LoRA and manifest.json to --out.

Each --concept is one group; commas separate synonyms that are erased together:
  --concept "nudity, naked, nude" --concept "van gogh" --kind explicit --kind style
--kind and --anchor apply to every group when given once, or to each group in order.
Options left out take the concept kind's defaults (see the MACE spec).
"""


def _engine(name: str):
    def run(args):
        try:
            commands = importlib.import_module("worker.erasure.commands")
        except ImportError as exc:
            sys.exit(
                f"mace {args.command} needs the engine: pip install 'mace-service[worker]' ({exc})"
            )
        return getattr(commands, name)(args)

    return run


def _add_erase(sub) -> None:
    p = sub.add_parser(
        "erase",
        help="erase concepts from a model",
        description=ERASE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="base model: local folder or cached HF id")
    p.add_argument(
        "--concept",
        action="append",
        required=True,
        help="one concept group, synonyms separated by commas (repeatable)",
    )
    p.add_argument(
        "--kind",
        action="append",
        choices=["object", "person", "style", "explicit"],
        help="concept kind (default object); picks templates and defaults",
    )
    p.add_argument(
        "--anchor",
        action="append",
        help='what the concept is mapped to (default by kind: "", "a person", "art", ...)',
    )
    p.add_argument("--stages", default="cfr,lora,fusion", help="subset of cfr,lora,fusion")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    tuning = p.add_argument_group("overrides of the kind's defaults")
    tuning.add_argument("--cfr-lambda", type=float, help="CFR ridge toward the base weights")
    tuning.add_argument(
        "--preservation-weight",
        type=float,
        help="weight of the preservation prompts, per token (1 = as much as the targets)",
    )
    tuning.add_argument("--preservation-prompts", help="text file, one preservation prompt a line")
    tuning.add_argument(
        "--fusion-lambda", type=float, default=0.1, help="fusion ridge (default 0.1)"
    )
    tuning.add_argument(
        "--fusion-preservation-weight",
        type=float,
        help="preservation weight in fusion (default: --preservation-weight)",
    )
    tuning.add_argument(
        "--preservation-tokens",
        choices=("all", "words"),
        default="all",
        help="positions of each preservation prompt that count: all (default, the paper's, "
        "padding included) or words (its own tokens and its end token)",
    )
    tuning.add_argument("--lora-rank", type=int, default=1, help="LoRA rank (default 1)")
    tuning.add_argument("--lora-lr", type=float, help="LoRA learning rate")
    tuning.add_argument("--lora-steps", type=int, help="LoRA training steps per group")
    tuning.add_argument(
        "--lora-batch-size", type=int, default=1, help="images per step (default 1)"
    )
    tuning.add_argument(
        "--lora-end-tokens",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the LoRA loss also suppresses the end and padding tokens, as in the paper "
        "(default); --no-lora-end-tokens: the phrase's tokens only",
    )
    tuning.add_argument(
        "--images-per-concept",
        type=int,
        default=8,
        help="training images generated per group (default 8)",
    )
    tuning.add_argument(
        "--image-steps",
        type=int,
        default=30,
        help="sampling steps for training images (default 30)",
    )
    tuning.add_argument(
        "--mask-provider", default="attention", help="attention (default), full or grounded-sam"
    )
    tuning.add_argument(
        "--cfis",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="concept-focal timestep sampling (default by kind)",
    )
    speed = p.add_argument_group("stage-2 execution (speed and memory, not results)")
    speed.add_argument(
        "--concepts-per-pass",
        type=int,
        help="groups whose images and LoRAs share each UNet pass (default: as many as fit the "
        "GPU's free memory, up to 32; 1 = one group at a time)",
    )
    speed.add_argument(
        "--image-batch-size",
        type=int,
        help="training images per sampling call (default: a pass's images, up to 64 on a GPU)",
    )
    speed.add_argument(
        "--training-precision",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="the frozen UNet's type while LoRAs train; the LoRAs stay float32 (default auto: "
        "bf16 on GPUs that have it, else fp16; the model's own type on the CPU)",
    )
    tuning.add_argument(
        "--lora-file",
        action="append",
        help="a LoRA safetensors file (diffusers or kohya keys) per --concept, in order: "
        "fused in closed form instead of training one",
    )
    p.set_defaults(handler=_engine("erase"))


def _toy(name: str):
    """A handler of `worker.toy.commands`, imported when run (it needs torch)."""

    def run(args):
        try:
            commands = importlib.import_module("worker.toy.commands")
        except ImportError as exc:
            sys.exit(f"mace toy needs the engine: pip install 'mace-service[worker]' ({exc})")
        return getattr(commands, name)(args)

    return run


TOY_HELP = """\
The toy world: icons of 28 objects in 15 styles, a Stable-Diffusion-1.x-architecture model
trained on it from scratch on a CPU, and a judge that reads object and style from an image, so
that erasure can be measured (accuracy on erased concepts down, on the others unchanged).
"""


def _add_toy(sub) -> None:
    toy = sub.add_parser(
        "toy",
        help="the toy world: train its model and judge, score a model",
        description=TOY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, metavar="ACTION")
    p = toy_sub.add_parser("train", help="train the toy model from scratch (resumable)")
    p.add_argument("--out", required=True, help="output folder (pipeline/, log, checkpoint/)")
    p.add_argument("--minutes", type=float, default=90.0, help="time budget (default 90)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--judge", help="judge weights (default: in --out, else the shipped judge)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.set_defaults(handler=_toy("train"))
    p = toy_sub.add_parser("train-judge", help="train the judge on rendered scenes")
    p.add_argument("--out", required=True, help="weights file to write (judge.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=40_000, help="training scenes (default 40000)")
    p.add_argument("--epochs", type=int, default=6, help="passes over them (default 6)")
    p.add_argument(
        "--autoencoder",
        help="a toy model (or pipeline) folder: half the training images are shown as its "
        "autoencoder reconstructs them, so the judge reads that model's textures",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.set_defaults(handler=_toy("train_judge"))
    p = toy_sub.add_parser("judge", help="score a model: judge accuracy per concept")
    p.add_argument("--model", required=True, help="a toy model folder or a pipeline folder")
    p.add_argument("--judge", help="judge weights (default: in --model, else the shipped judge)")
    p.add_argument("--per-concept", type=int, default=8, help="images per concept (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.set_defaults(handler=_toy("judge"))


def _catalog(name: str):
    """A handler of `app.catalog_commands`, imported when run (the database stack is not light)."""

    def run(args):
        return getattr(importlib.import_module("app.catalog_commands"), name)(args)

    return run


def _add_catalog_commands(sub) -> None:
    """`mace keys ...` and `mace base-models ...`, on the database of MACE_DATABASE_URL."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", help="create a key; it is printed once, as the last line")
    p.add_argument(
        "--role",
        required=True,
        choices=["viewer", "operator", "admin"],
        help="viewer: read; operator: also submit, cancel, generate; admin: all",
    )
    p.add_argument("--name", help="who or what the key is for")
    p.set_defaults(handler=_catalog("keys_create"))
    p = keys_sub.add_parser("revoke", help="revoke a key (requests with it get 401)")
    p.add_argument("id", help="the key's id (from `mace keys list`)")
    p.set_defaults(handler=_catalog("keys_revoke"))
    p = keys_sub.add_parser("list", help="list keys (never their secrets)")
    p.set_defaults(handler=_catalog("keys_list"))

    models = sub.add_parser("base-models", help="register and list base models")
    models_sub = models.add_subparsers(dest="base_models_command", required=True, metavar="ACTION")
    p = models_sub.add_parser("add", help="register a base model; hashes its files")
    p.add_argument("name", help="the name requests use (base_model)")
    p.add_argument(
        "source",
        help="a diffusers pipeline folder on this server, or a Hugging Face "
        "id already in the local cache (nothing is downloaded)",
    )
    p.set_defaults(handler=_catalog("base_models_add"))
    p = models_sub.add_parser("list", help="list registered base models")
    p.set_defaults(handler=_catalog("base_models_list"))


def _evaluation(name: str):
    """A handler of `worker.evaluation.commands`, imported when run (it needs torch)."""

    def run(args):
        try:
            commands = importlib.import_module("worker.evaluation.commands")
        except ImportError as exc:
            sys.exit(
                f"mace {args.command} needs the engine: pip install 'mace-service[worker]' ({exc})"
            )
        return getattr(commands, name)(args)

    return run


EVALUATE_HELP = """\
Score a model, or an erased model against its base, with the same prompts and seeds, and write
report.json, grid.png (base | erased, side by side) and report.html (one self-contained page)
to --out.

Metrics (repeat --metric; add a JSON config after a colon):
  nudenet        share of prompts with an exposed body part (NudeNet), count of detections
                 nudenet:{"threshold": 0.5, "category": "sexual"}  (I2P CSVs work as --prompts)
  clip_score     100 * cosine(image, prompt) with CLIP
                 clip_score:{"model": "openai/clip-vit-large-patch14"}
  clip_accuracy  zero-shot CLIP accuracy: efficacy, specificity, generality and their H
                 clip_accuracy:{"erased": [{"label": "cat", "prompts": ["a cat"]}],
                                "retained": [{"label": "dog", "prompts": ["a dog"]}]}
  fid            Frechet Inception distance to a folder of images
                 fid:{"reference_dir": "real/", "inception_path": "inception-2015-12-05.pt"}
  ua_ira         eval-learn's unlearning / retain accuracy
                 ua_ira:{"target_prompts": "t.csv", "retain_prompts": "r.csv",
                         "target_concept": "cat", "retain_concept": "dog"}
  image_grid     the side-by-side PNG   image_grid:{"retained_prompts": ["a dog"]}
Metrics without their own prompts use --prompts (a text file, one prompt a line, or a CSV with
a prompt column; evaluation_seed and evaluation_guidance columns are honoured per row).

Example:
  mace evaluate --model ./tiny --edit ./erased-cat --prompts prompts.txt \\
      --metric clip_score --metric image_grid --seed 0 --out ./eval-cat
Models and metric weights are read from local folders or the Hugging Face cache only.
"""

RUN_HELP = """\
Run an eval-learn experiment configuration: a full MACE erasure (technique "mace") followed by
its metrics (asr_i2p, clip_score, fid, ua_ira), with reports in eval-learn's layout under
output_dir. Prompt datasets come from local files (prompts_path) or the Hugging Face cache.
See worker/evaluation/examples/ for configurations.
"""


def _add_evaluation_commands(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model or an erased model against its base",
        description=EVALUATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="base model (default: the one the --edit was made from)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--edit", help="an erasure output folder or its edit.safetensors")
    which.add_argument("--base-only", action="store_true", help="evaluate the base model alone")
    p.add_argument(
        "--metric",
        action="append",
        required=True,
        help='NAME or NAME:{"json": "config"} (repeatable; see above)',
    )
    p.add_argument("--prompts", help="prompt file for metrics that name no prompts of their own")
    p.add_argument("--seed", type=int, default=0, help="seed of every image (default 0)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--width", type=int, help="image width (default: the model's)")
    p.add_argument("--height", type=int, help="image height (default: the model's)")
    p.add_argument("--images-per-prompt", type=int, default=1, help="default 1")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.set_defaults(handler=_evaluation("evaluate"))

    p = sub.add_parser(
        "run",
        help="run an eval-learn experiment configuration (erase, then evaluate)",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, help="experiment configuration (JSON)")
    p.set_defaults(handler=_evaluation("run_experiment"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mace", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tiny-model", help="build a tiny random-weight SD-1.x model (offline)")
    p.add_argument("dir", help="folder to write the diffusers pipeline to")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_engine("tiny_model"))

    _add_erase(sub)

    p = sub.add_parser("generate", help="generate an image with a base or erased model")
    p.add_argument("--model", help="base model (default: the one the --erased edit was made from)")
    p.add_argument("--erased", help="an erasure output folder (from mace erase)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument(
        "--side-by-side",
        action="store_true",
        help="with --erased: the base model's image and the erased one's, same seed",
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(handler=_engine("generate"))

    _add_evaluation_commands(sub)

    p = sub.add_parser("export", help="export an erased model for other tools")
    p.add_argument("--erased", required=True, help="an erasure output folder")
    p.add_argument(
        "--format",
        required=True,
        choices=["diffusers", "unet-pt", "lora", "lora-kohya"],
        help="diffusers: pipeline folder; unet-pt: UNet state dict; lora / lora-kohya: "
        "low-rank approximation of the change (diffusers or ComfyUI/A1111 keys)",
    )
    p.add_argument("--out", required=True, help="output path")
    p.add_argument("--model", help="base model (default: the one the edit was made from)")
    p.add_argument("--lora-rank", type=int, help="LoRA export rank (default: smallest within 1%%)")
    p.set_defaults(handler=_engine("export"))
    _add_toy(sub)

    from app.demo import add_demo_command
    from app.serve import add_service_commands

    add_service_commands(sub)
    add_demo_command(sub)
    _add_catalog_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except Exception as exc:  # user errors get one clear line; anything else a traceback
        from_engine = type(exc).__name__ in {"ErasureInputError", "ModelNotFoundError"}
        if from_engine or isinstance(exc, FileExistsError):
            print(f"mace {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
