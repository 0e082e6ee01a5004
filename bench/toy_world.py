"""Erasure measured in the toy world: efficacy, specificity, generality and H of full MACE, CFR
only and LoRA only (then fusion), on the project's own trained toy model, read by its judge.

For each kind (object, style) and each N, the first N concepts of that kind in a seeded order
(concepts with synonyms first, so generality is measured on as many as possible) are erased by
their canonical word only; their other surface forms are kept back to measure generality. Every
method then draws the same seeded prompt suite (`worker.toy.scoring.score_concepts`: per concept,
canonical prompts and synonym prompts, 25 sampling steps) and the judge reads the images:

    efficacy     1 - judge accuracy on the erased concepts' canonical prompts
    specificity  judge accuracy on every other concept's prompts (drop: base minus this)
    generality   1 - judge accuracy on the erased concepts' synonym prompts
    H            harmonic mean of the three

With them, as context: the efficacy the base model already has on the erased concepts, and the
specificity drop over the retained concepts of the erased kind only.

The prompts MACE itself uses are the toy grammar's (the group's own templates), the preservation
prompts are toy captions that name no erased concept.

Unless `--kind-defaults` is given, the toy world's settings replace some kind defaults (which are
the paper's, for Stable Diffusion): `worker.toy.prompts.ERASURE_SETTINGS` (LoRA learning rate and
rank, a LoRA loss on the phrase's tokens only, a preservation statistic over each caption's own
tokens, fusion's preservation weight) and the anchors
`worker.toy.prompts.ANCHORS` (a one-token word for objects instead of the empty phrase, whose
position shift CFR would spread to every prompt; `--anchor ""` measures the empty phrase).

    python bench/toy_world.py --erase 1,5,20 --json bench/results/toy_world.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/toy_world.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from worker.erasure.base_model import load_pipeline, model_identity  # noqa: E402
from worker.erasure.concepts import KIND_DEFAULTS, ConceptGroup  # noqa: E402
from worker.erasure.edit import EditedUnet  # noqa: E402
from worker.erasure.erase import erase  # noqa: E402
from worker.erasure.options import PRESERVATION_TOKENS, ErasureOptions  # noqa: E402
from worker.toy.commands import SHIPPED_MODEL, default_judge, pipeline_dir  # noqa: E402
from worker.toy.judge import load_judge  # noqa: E402
from worker.toy.prompts import (  # noqa: E402
    ANCHORS,
    CONCEPTS,
    ERASURE_SETTINGS,
    captions_without,
    concept,
    erasure_templates,
)
from worker.toy.scoring import score_concepts  # noqa: E402

SEED = 0
# How stage 2 is run: one group and one image at a time, or batched (the engine's default).
STAGE2_MODES = {"sequential": {"concepts_per_pass": 1, "image_batch_size": 1}, "batched": {}}
METHODS = {"full": ("cfr", "lora", "fusion"), "cfr_only": ("cfr",), "lora_only": ("lora", "fusion")}


def erasure_order(kind: str, seed: int = SEED) -> list[str]:
    """The kind's concepts in the order they are erased: those with synonyms first, each part
    shuffled by `seed`."""
    rng = np.random.default_rng([seed, 7])
    concepts = [c for c in CONCEPTS if c.kind == kind]
    with_synonyms = [c.name for c in concepts if c.has_synonyms]
    without = [c.name for c in concepts if not c.has_synonyms]
    return [str(n) for n in (*rng.permutation(with_synonyms), *rng.permutation(without))]


def harmonic_mean(values: list[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def figures(scores, base, erased: list[str]) -> dict:
    """Efficacy, specificity (and its drop against the base), generality and H.

    Two context figures come along: the efficacy the base model already has (a concept it draws
    badly looks erased), and specificity over the retained concepts of the erased kind only
    (specificity over all retained concepts is bounded by the base's accuracy on the other kind).
    """

    def mean(of, names):
        return statistics.mean(of.per_concept[n] for n in names)

    retained = [n for n in scores.per_concept if n not in erased]
    same_kind = [n for n in retained if concept(n).kind == concept(erased[0]).kind]
    with_synonyms = [n for n in erased if n in scores.per_synonym_concept]
    efficacy = 1 - mean(scores, erased)
    specificity = mean(scores, retained)
    generality = (
        1 - statistics.mean(scores.per_synonym_concept[n] for n in with_synonyms)
        if with_synonyms
        else math.nan
    )
    parts = [efficacy, specificity] + ([generality] if with_synonyms else [])
    return {
        "efficacy": round(efficacy, 4),
        "efficacy_base": round(1 - mean(base, erased), 4),
        "specificity": round(specificity, 4),
        "specificity_base": round(mean(base, retained), 4),
        "specificity_drop": round(mean(base, retained) - specificity, 4),
        "specificity_same_kind": round(mean(scores, same_kind), 4),
        "specificity_same_kind_drop": round(mean(base, same_kind) - mean(scores, same_kind), 4),
        "generality": None if math.isnan(generality) else round(generality, 4),
        "generality_concepts": len(with_synonyms),
        "H": round(harmonic_mean(parts), 4),
    }


class ToyBench:
    def __init__(
        self,
        model: Path,
        judge: Path,
        per_concept: int,
        options: dict[str, dict],
        anchors: dict[str, str],
        seed: int = SEED,
    ):
        self.pipe = load_pipeline(str(pipeline_dir(model)))
        self.pipe.set_progress_bar_config(disable=True)
        self.identity = model_identity(str(pipeline_dir(model)))
        self.judge = load_judge(judge)
        self.per_concept = per_concept
        self.options = options  # kind -> engine options
        self.anchors = anchors  # kind -> anchor
        self.seed = seed  # of the prompt suite, the images' noise and the erasures
        self.lora_only_loras: dict[str, dict] = {}  # concept -> factors on the base weights

    def score(self):
        return score_concepts(self.pipe, self.judge, per_concept=self.per_concept, seed=self.seed)

    def groups(self, erased: list[str], kind: str) -> list[ConceptGroup]:
        templates = erasure_templates(kind)
        forms = {c.name: c.surface_forms[0] for c in CONCEPTS}
        anchor = self.anchors[kind]
        return [ConceptGroup((forms[n],), kind, anchor, templates=templates) for n in erased]

    def run(self, kind: str, erased: list[str], method: str) -> tuple[dict, dict]:
        options = ErasureOptions(
            stages=METHODS[method],
            preservation_prompts=captions_without(erased),
            seed=self.seed,
            **self.options[kind],
        )
        groups = self.groups(erased, kind)
        reused = {}
        if method == "lora_only":  # LoRAs on the base weights do not depend on the other groups
            reused = {
                i: self.lora_only_loras[n]
                for i, n in enumerate(erased)
                if n in self.lora_only_loras
            }
        started = time.perf_counter()
        result = erase(self.pipe, self.identity, groups, options, trained_loras=reused)
        seconds = time.perf_counter() - started
        if method == "lora_only":
            for i, name in enumerate(erased):
                self.lora_only_loras.setdefault(name, result.loras[i])
        edited = EditedUnet.of(self.pipe.unet)
        edited.apply(result.edit)
        try:
            scores = self.score()
        finally:
            edited.restore()
        timings = {k: round(v, 2) for k, v in result.timings.items()}
        return {
            "seconds": round(seconds, 2),
            "stage_seconds": timings,
            "reused_loras": len(reused),
        }, scores


def _rounded(accuracy: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in accuracy.items()}


def _log(message: str) -> None:
    print(f"[toy_world {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def format_table(results: list[dict], base: dict) -> str:
    head = (
        f"{'kind':6} {'n':>3} {'method':10} {'efficacy':>8} {'(base)':>6} {'specif.':>8} "
        f"{'drop':>7} {'(kind)':>7} {'general.':>8} {'H':>6} {'seconds':>8}  stage seconds"
    )
    lines = [
        "(base): the efficacy the base model already has; (kind): the drop over retained "
        "concepts of the erased kind only",
        f"base model: judge accuracy {base['mean']:.3f} over {base['concepts']} concepts "
        f"(objects {base['object_mean']:.3f}, styles {base['style_mean']:.3f}), "
        f"synonym prompts {base['synonym_mean']:.3f}",
        "",
        head,
        "-" * len(head),
    ]
    for r in results:
        general = "-" if r["generality"] is None else f"{r['generality']:.3f}"
        stages = ", ".join(f"{k} {v:g}" for k, v in r["stage_seconds"].items())
        lines.append(
            f"{r['kind']:6} {r['n']:>3} {r['method']:10} {r['efficacy']:>8.3f} "
            f"{r['efficacy_base']:>6.3f} {r['specificity']:>8.3f} {r['specificity_drop']:>+7.3f} "
            f"{r['specificity_same_kind_drop']:>+7.3f} {general:>8} {r['H']:>6.3f} "
            f"{r['seconds']:>8.1f}  {stages}"
        )
    return "\n".join(lines)


def _toy(option: str) -> str:
    """Help text naming the toy settings a flag overrides."""
    values = {ERASURE_SETTINGS[kind][option] for kind in ERASURE_SETTINGS}
    if len(values) == 1:
        shown = str(values.pop())
    else:
        shown = ", ".join(f"{kind}s {s[option]}" for kind, s in ERASURE_SETTINGS.items())
    return f"(default {shown}; with --kind-defaults, the engine's)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--erase", default="1,5,20", help="numbers of concepts N (default 1,5,20)")
    p.add_argument("--kinds", default="object,style", help="object, style or both")
    p.add_argument("--methods", default=",".join(METHODS), help=f"from {', '.join(METHODS)}")
    p.add_argument("--per-concept", type=int, default=8, help="prompts per concept and wording")
    p.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="a toy model folder")
    p.add_argument("--judge", type=Path, help="the judge (default: next to the model)")
    p.add_argument("--lora-steps", type=int, help="stage-2 steps per concept (kind default)")
    p.add_argument("--images", type=int, default=8, help="stage-2 images per concept")
    p.add_argument(
        "--lora-lr", type=float, help=f"stage-2 learning rate {_toy('lora_learning_rate')}"
    )
    p.add_argument("--lora-rank", type=int, help=f"stage-2 LoRA rank {_toy('lora_rank')}")
    p.add_argument("--cfr-lambda", type=float, help="CFR regulariser (kind default)")
    p.add_argument(
        "--preservation-weight", type=float, help="preservation captions' weight (kind default)"
    )
    p.add_argument(
        "--fusion-preservation-weight",
        type=float,
        help=f"fusion's preservation weight {_toy('fusion_preservation_weight')}",
    )
    p.add_argument(
        "--preservation-tokens",
        choices=PRESERVATION_TOKENS,
        help=f"positions of each preservation caption that count {_toy('preservation_tokens')}",
    )
    p.add_argument(
        "--lora-end-tokens",
        action=argparse.BooleanOptionalAction,
        help="the LoRA loss also suppresses end and padding tokens "
        + _toy("lora_suppress_end_tokens"),
    )
    p.add_argument(
        "--kind-defaults",
        action="store_true",
        help="use the kind defaults for every setting not given by a flag",
    )
    p.add_argument("--anchor", help="the anchor of every erased concept (default: the toy's)")
    p.add_argument(
        "--stage2",
        choices=STAGE2_MODES,
        default="batched",
        help="stage 2 one group and one image at a time, or batched (default)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help="seeds the prompt suite, the images' noise and the erasures; the erased concepts "
        f"stay the same (default {SEED})",
    )
    p.add_argument("--json", type=Path, help="write {'results': [...]} here")
    args = p.parse_args(argv)
    args.erase = [int(n) for n in args.erase.split(",") if n.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown or set(args.kinds) - {"object", "style"}:
        p.error(f"methods from {', '.join(METHODS)}; kinds object, style")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    judge = args.judge or default_judge(args.model)
    if judge is None:
        raise SystemExit(f"no judge next to {args.model}; train one with `mace toy train-judge`")
    torch.manual_seed(args.seed)
    common = {"images_per_concept": args.images, "image_steps": 25, **STAGE2_MODES[args.stage2]}
    anchors = {
        kind: KIND_DEFAULTS[kind].anchor if args.kind_defaults else ANCHORS[kind]
        for kind in ("object", "style")
    }
    if args.anchor is not None:
        anchors = dict.fromkeys(anchors, args.anchor)
    options = {
        kind: {**common, **({} if args.kind_defaults else ERASURE_SETTINGS[kind])}
        for kind in ("object", "style")
    }
    for flag, option in (
        ("lora_steps", "lora_steps"),
        ("lora_lr", "lora_learning_rate"),
        ("lora_rank", "lora_rank"),
        ("cfr_lambda", "cfr_lambda"),
        ("preservation_weight", "preservation_weight"),
        ("fusion_preservation_weight", "fusion_preservation_weight"),
        ("preservation_tokens", "preservation_tokens"),
        ("lora_end_tokens", "lora_suppress_end_tokens"),
    ):
        if getattr(args, flag) is not None:
            for kind_options in options.values():
                kind_options[option] = getattr(args, flag)
    bench = ToyBench(args.model, judge, args.per_concept, options, anchors, args.seed)
    started = time.perf_counter()
    base_scores = bench.score()
    base = {**base_scores.to_dict(), "concepts": len(base_scores.per_concept)}
    base["seconds"] = round(time.perf_counter() - started, 1)
    _log(f"base: {base['mean']:.3f} (synonyms {base['synonym_mean']:.3f}) in {base['seconds']} s")
    results = []
    for kind in args.kinds:
        order = erasure_order(kind)
        for n in args.erase:
            if n >= len(order):
                _log(f"{kind}: N={n} skipped, the world has {len(order)} {kind} concepts")
                continue
            erased = order[:n]
            for method in args.methods:
                _log(f"{kind} N={n} {method}: {', '.join(erased)}")
                timing, scores = bench.run(kind, erased, method)
                row = {"kind": kind, "n": n, "method": method, "erased": erased}
                row.update(figures(scores, base_scores, erased))
                row.update(timing)
                row["accuracy"] = _rounded(scores.per_concept)
                row["synonym_accuracy"] = _rounded(scores.per_synonym_concept)
                results.append(row)
                _log(f"  H {row['H']:.3f} (e {row['efficacy']:.3f}, s {row['specificity']:.3f})")
                if args.json:
                    write_json(args.json, results, base, args, options, anchors)
    print(format_table(results, base), flush=True)
    return 0


def write_json(
    path: Path,
    results: list[dict],
    base: dict,
    args,
    options: dict[str, dict],
    anchors: dict[str, str],
) -> None:
    """The results so far (rewritten after every row, so an interrupted run keeps them)."""
    payload = {
        "results": results,
        "base": base,
        "settings": {
            "per_concept": args.per_concept,
            "sampling_steps": 25,
            "options": {k: options[k] for k in args.kinds},
            "templates": {k: list(erasure_templates(k)) for k in args.kinds},
            "anchors": {k: anchors[k] for k in args.kinds},
            "seed": args.seed,
            "stage2": args.stage2,
        },
        "environment": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    sys.exit(main())
