"""What a MACE erasure costs: time against the text-encoding floor, memory, and artifact size.

For each model and number of concept groups, in a fresh process (so peak memory is per run):

- encode_s: encoding every target prompt of every group, nothing else (the floor);
- cfr_encode_s / cfr_s: encoding exactly the prompts CFR encodes (targets + unique anchors), then
  `cfr_statistics` + `closed_form_refine` (object default lambda, no preservation);
- fusion_encode_s / fusion_s: encoding the fusion's prompts (the same target prompts), then
  `group_gram` per group (recomputed, as when fusing LoRA files a user brings) + `fuse_loras`
  with one seeded random rank-1 LoRA per group on the real matrix shapes;
- the stored artifact (`CompactEdit.save`, float32) against the full UNet's size;
- LoRA training steps per second with the real stage-2 code, in its own process per model.

The SD-1.4-architecture UNet is built on the meta device for CFR and fusion, with only its 32
cross-attention key/value matrices created (real shapes, seeded random values), so the memory
reported is the method's and the text encoder's, not the UNet's.

    python -m bench.erase_cost --json bench/results/erase_cost.json
    python -m bench.erase_cost --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worker.erasure.cfr import closed_form_refine
from worker.erasure.concepts import KIND_DEFAULTS, ConceptGroup
from worker.erasure.edit import CompactEdit
from worker.erasure.encoding import PromptEncoder
from worker.erasure.fusion import fuse_loras
from worker.erasure.pairing import (
    TokenCounter,
    check_token_budget,
    group_prompt_pairs,
    target_prompts,
)
from worker.erasure.statistics import cfr_statistics, group_gram
from worker.erasure.versions import library_versions

MODELS = ("tiny", "sd14-arch", "sd14-unet-1layer-te")
MASS_MODEL = "sd14-unet-1layer-te"
BATCH_SIZE = 32
FUSION_LAMBDA = 0.1  # ErasureOptions' default
SEED = 0
REPO_ROOT = Path(__file__).resolve().parent.parent

# LoRA training: (image side in pixels, warm-up steps, timed steps) per model; None = native size.
LORA_PLAN = {"tiny": (None, 3, 30), "sd14-arch": (256, 1, 4), MASS_MODEL: (256, 1, 4)}
LORA_IMAGES = 2
# Timing rounds: repeat all five measurements while a run has taken less than this, best of up to
# MAX_ROUNDS (long runs are measured once).
REPEAT_BELOW_S = 300.0
MAX_ROUNDS = 5
MIN_STEADY_STEPS = 5  # a median over fewer steps per measurement is not reported


def _words(text: str) -> list[str]:
    return text.split()


_ADJECTIVES = _words(
    """amber azure bronze copper crimson golden ivory jade silver scarlet violet wooden velvet
    marble glass paper plastic rusty shiny fluffy spotted striped tiny giant ancient modern
    frozen burning floating sleeping broken hollow frosted painted carved folded"""
)
_NOUNS = _words(
    """fox owl whale tiger rabbit turtle falcon dolphin camel penguin parrot squirrel horse
    lantern kettle violin bicycle tractor umbrella anchor compass telescope clock teapot helmet
    candle ladder basket bottle bridge castle tower cabin lighthouse windmill fountain tree
    cactus mushroom tulip pumpkin apple lemon pretzel pancake sandwich boot scarf guitar"""
)


# ---- workload ----------------------------------------------------------------------------------


def concept_groups(count: int, seed: int = SEED) -> list[ConceptGroup]:
    """`count` distinct object groups of one 1-3 word phrase each, anchor "" (no digits: they
    tokenize oddly)."""
    rng = random.Random(seed)
    phrases: list[str] = []
    seen: set[str] = set()
    while len(phrases) < count:
        words = rng.choices((1, 2, 3), weights=(1, 5, 4))[0]
        phrase = " ".join(rng.sample(_ADJECTIVES, words - 1) + [rng.choice(_NOUNS)])
        if phrase not in seen:
            seen.add(phrase)
            phrases.append(phrase)
    return [ConceptGroup((p,), "object", "") for p in phrases]


def random_loras(matrices: dict[str, torch.Tensor], count: int, seed: int = SEED) -> list[dict]:
    """One seeded random rank-1 LoRA (up, down) per group on the given matrices' shapes."""
    generator = torch.Generator().manual_seed(seed + 1)
    loras = []
    for _ in range(count):
        lora = {}
        for name, weight in matrices.items():
            d_out, d_in = weight.shape
            up = torch.randn(d_out, 1, generator=generator) * 1e-3
            down = torch.randn(1, d_in, generator=generator) / d_in**0.5
            lora[name] = (up, down)
        loras.append(lora)
    return loras


def cfr_prompts(tokenizer, groups: list[ConceptGroup]) -> list[str]:
    """Exactly what `cfr_statistics` encodes: every target prompt and each anchor prompt once."""
    counter = TokenCounter(tokenizer)
    pairs = [p for g in groups for p in group_prompt_pairs(counter, g)]
    return [p.target_prompt for p in pairs] + sorted({p.anchor_prompt for p in pairs})


# ---- memory ------------------------------------------------------------------------------------


_PEAK_BEFORE_RESETS_MB = 0.0  # the highest VmHWM seen before any reset


def peak_rss_mb() -> float:
    """Peak RSS of the whole process. Resetting VmHWM also resets what ru_maxrss reports, so the
    peaks seen before each reset are kept and counted too."""
    current = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return max(current, _PEAK_BEFORE_RESETS_MB)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_high_water_mark() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process, where Linux allows it."""
    global _PEAK_BEFORE_RESETS_MB
    _PEAK_BEFORE_RESETS_MB = peak_rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def high_water_mark_mb() -> float | None:
    """VmHWM: the peak RSS since the last reset."""
    try:
        with open("/proc/self/status") as handle:
            found = re.search(r"VmHWM:\s+(\d+) kB", handle.read())
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


_STAGE_FILE: Path | None = None  # where a measurement process says what it is doing
_PARTIAL: dict = {}  # what it has measured so far (kept next to the stage file)


def _enter_stage(stage: str) -> None:
    """Note the stage about to run, so a run stopped for its memory says where it was."""
    if _STAGE_FILE is not None:
        _STAGE_FILE.write_text(stage)


def _note_partial(**values) -> None:
    """Keep measured values on disk, so a run stopped before its end still reports them."""
    _PARTIAL.update(values)
    if _STAGE_FILE is not None:
        _STAGE_FILE.with_suffix(".partial").write_text(json.dumps(_PARTIAL))


# ---- models ------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    tokenizer: object
    text_encoder: torch.nn.Module
    matrices: dict[str, torch.Tensor]  # the edited to_k/to_v weights, real shapes
    unet_parameters: int


def load_model(name: str) -> BenchModel:
    """The model's tokenizer and text encoder, its edited matrices and its UNet's size."""
    from bench import sd14_models

    if name == "tiny":
        from worker.erasure.tiny_model import build_tiny_pipeline

        pipe = build_tiny_pipeline(SEED)
        pipe.text_encoder.eval().requires_grad_(False)
        return BenchModel(
            pipe.tokenizer,
            pipe.text_encoder,
            sd14_models.edited_matrices(pipe.unet),
            sd14_models.unet_parameter_count(pipe.unet),
        )
    layers = {"sd14-arch": 12, MASS_MODEL: 1}[name]
    from worker.erasure.tokenizer import load_clip_tokenizer

    unet = sd14_models.meta_unet()
    return BenchModel(
        load_clip_tokenizer(),
        sd14_models.text_encoder(layers, SEED),
        sd14_models.edited_matrices(unet, SEED),
        sd14_models.unet_parameter_count(unet),
    )


# ---- one erasure measurement (own process) -----------------------------------------------------


@dataclass
class Timing:
    """Best (minimum) wall and CPU seconds over the rounds a measurement was repeated, and the
    highest peak RSS seen while it ran (None where Linux cannot reset the peak)."""

    name: str
    wall: float = float("inf")
    cpu: float = float("inf")
    peak_mb: float | None = None
    rss_after_mb: float = 0.0
    per_prompt: list[float] = field(default_factory=list)  # seconds per prompt of each step
    fewest_steps: int = 0  # fewest steps one measurement took
    _last: float = 0.0

    def tick(self, prompts: int) -> None:
        """One step (a batch, or a group) of `prompts` prompts has just finished."""
        now = time.perf_counter()
        self.per_prompt.append((now - self._last) / prompts)
        self._last = now

    @property
    def steady_per_prompt(self) -> float | None:
        """Median seconds per prompt over the steps: what a step costs when nothing else on
        the machine interferes with it (bursts of other load only hit some steps)."""
        return statistics.median(self.per_prompt) if self.fewest_steps >= MIN_STEADY_STEPS else None

    def measure(self, work, *args):
        """`work(*args, tick)`, timed; `work` calls `tick(prompts)` after each step."""
        _enter_stage(self.name)
        tracked = reset_high_water_mark()
        self._last = time.perf_counter()
        wall, cpu = time.perf_counter(), time.process_time()
        steps_before = len(self.per_prompt)
        value = work(*args, self.tick)
        steps = len(self.per_prompt) - steps_before
        self.fewest_steps = min(self.fewest_steps, steps) if self.fewest_steps else steps
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, time.process_time() - cpu)
        peak = high_water_mark_mb() if tracked else None
        if peak is not None:
            self.peak_mb = max(self.peak_mb or 0.0, peak)
        self.rss_after_mb = rss_mb()
        _note_partial(**{f"{self.name}_s": round(self.wall, 3), f"{self.name}_peak_rss_mb": peak})
        return value


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _encode_only(encoder: PromptEncoder, prompts: list[str], tick) -> None:
    for _, batch in encoder.batches(prompts):
        tick(len(batch))


def _cfr(encoder, groups, cfr_lambda, tick):
    reported = 0

    def progress(done: int, total: int) -> None:  # called after each encoded batch
        nonlocal reported
        tick(done - reported)
        reported = done

    stats = cfr_statistics(encoder, groups, progress=progress)
    return closed_form_refine(stats, cfr_lambda=cfr_lambda)


def _fusion(encoder, groups, transform, loras, tick):
    def grams():  # one at a time, as erase() does past its gram cache
        for group in groups:
            yield group_gram(encoder, group)
            tick(len(target_prompts(group)))  # runs once fuse_loras has used this group

    return fuse_loras(transform, grams(), loras, fusion_lambda=FUSION_LAMBDA)


def _ignore(prompts: int) -> None:
    pass


def _steady_ratio(stage: Timing, floor: Timing) -> float | None:
    if stage.steady_per_prompt is None or floor.steady_per_prompt is None:
        return None
    return round(stage.steady_per_prompt / floor.steady_per_prompt, 3)


def _time_rounds(encoder, groups, targets, cfr_inputs, cfr_lambda, loras):
    """Time each stage next to its floor, in rounds; short runs are repeated (best of up to
    MAX_ROUNDS) so that other load on the machine does not decide a ratio."""
    times = {key: Timing(key) for key in ("encode", "cfr_encode", "cfr", "fusion_encode", "fusion")}
    rounds, started = 0, time.perf_counter()
    while rounds < MAX_ROUNDS and (rounds == 0 or time.perf_counter() - started < REPEAT_BELOW_S):
        refinement = fused = None  # the previous round's results must not count in this one's peak
        times["encode"].measure(_encode_only, encoder, targets)
        times["cfr_encode"].measure(_encode_only, encoder, cfr_inputs)
        refinement = times["cfr"].measure(_cfr, encoder, groups, cfr_lambda)
        times["fusion_encode"].measure(_encode_only, encoder, targets)
        fused = times["fusion"].measure(_fusion, encoder, groups, refinement.transform, loras)
        rounds += 1
    return times, rounds, refinement, fused


def _artifact_sizes(fused, model_name, groups, cfr_lambda, refinement) -> tuple[int, int]:
    """Bytes of the stored edit (with the metadata erase() records), float32 and float16."""
    metadata = {
        "base_model": {"name": model_name, "sha256": "random-weights"},
        "concepts": [g.to_dict() for g in groups],
        "options": {"cfr_lambda": cfr_lambda, "fusion_lambda": FUSION_LAMBDA, "lora_rank": 1},
        "seed": SEED,
        "group_rank": 1,
        "versions": library_versions(),
        "log": refinement.log_lines(),
    }
    sizes = []
    with tempfile.TemporaryDirectory() as folder:
        for dtype in (torch.float32, torch.float16):
            path = CompactEdit.from_fused(fused, metadata, dtype).save(Path(folder) / str(dtype))
            sizes.append(path.stat().st_size)
    return sizes[0], sizes[1]


def measure_erasure(model_name: str, concepts: int) -> dict:
    """Time CFR and fusion against their encoding floors; memory; artifact size."""
    started = time.perf_counter()
    model = load_model(model_name)
    build_s = time.perf_counter() - started
    rss_after_build, peak_after_build = rss_mb(), peak_rss_mb()
    groups = concept_groups(concepts)
    counter = TokenCounter(model.tokenizer)
    for group in groups:
        check_token_budget(counter, group)
    targets = [p for g in groups for p in target_prompts(g)]
    cfr_inputs = cfr_prompts(model.tokenizer, groups)
    cfr_lambda = KIND_DEFAULTS["object"].cfr_lambda
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, batch_size=BATCH_SIZE)
    loras = random_loras(model.matrices, concepts)

    # Warm-up: first calls pay for lazy initialisation, which no timing should include.
    warm = _cfr(encoder, groups[:1], cfr_lambda, _ignore)
    _fusion(encoder, groups[:1], warm.transform, loras[:1], _ignore)

    _log(f"{model_name} x {concepts}: {len(targets)} target prompts, {len(cfr_inputs)} CFR prompts")
    load_before = os.getloadavg()[0]
    times, rounds, refinement, fused = _time_rounds(
        encoder, groups, targets, cfr_inputs, cfr_lambda, loras
    )
    load_after = os.getloadavg()[0]
    stage_peaks = [times[k].peak_mb for k in ("cfr", "fusion") if times[k].peak_mb is not None]
    artifact_bytes, artifact_fp16_bytes = _artifact_sizes(
        fused, model_name, groups, cfr_lambda, refinement
    )
    return {
        "model": model_name,
        "concepts": concepts,
        "target_prompts": len(targets),
        "cfr_prompts": len(cfr_inputs),
        "batch_size": BATCH_SIZE,
        "text_layers": model.text_encoder.config.num_hidden_layers,
        "text_width": model.text_encoder.config.hidden_size,
        "edited_matrices": len(model.matrices),
        "edited_numbers": sum(m.numel() for m in model.matrices.values()),
        "build_s": round(build_s, 3),
        "rounds": rounds,
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        **{f"{key}_s": round(t.wall, 3) for key, t in times.items()},
        **{f"{key}_cpu_s": round(t.cpu, 3) for key, t in times.items()},
        "cfr_ratio": round(times["cfr"].wall / times["cfr_encode"].wall, 3),
        "fusion_ratio": round(times["fusion"].wall / times["fusion_encode"].wall, 3),
        "cfr_cpu_ratio": round(times["cfr"].cpu / times["cfr_encode"].cpu, 3),
        "fusion_cpu_ratio": round(times["fusion"].cpu / times["fusion_encode"].cpu, 3),
        "cfr_steady_ratio": _steady_ratio(times["cfr"], times["cfr_encode"]),
        "fusion_steady_ratio": _steady_ratio(times["fusion"], times["fusion_encode"]),
        **{
            f"{key}_steady_ms_per_prompt": _round(t.steady_per_prompt and 1e3 * t.steady_per_prompt)
            for key, t in times.items()
        },
        "cfr_ridge": refinement.ridge,
        "fusion_ridge": fused.ridge,
        "rss_after_build_mb": round(rss_after_build, 1),
        "peak_rss_after_build_mb": round(peak_after_build, 1),
        "cfr_peak_rss_mb": _round(times["cfr"].peak_mb),
        "fusion_peak_rss_mb": _round(times["fusion"].peak_mb),
        "cfr_fusion_peak_rss_mb": _round(max(stage_peaks)) if stage_peaks else None,
        "rss_after_cfr_mb": _round(times["cfr"].rss_after_mb),
        "rss_after_fusion_mb": _round(times["fusion"].rss_after_mb),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "artifact_bytes": artifact_bytes,
        "artifact_fp16_bytes": artifact_fp16_bytes,
        "unet_parameters": model.unet_parameters,
        "unet_bytes": model.unet_parameters * 4,
        "unet_fp16_bytes": model.unet_parameters * 2,
        "artifact_fraction": artifact_bytes / (model.unet_parameters * 4),
    }


# ---- LoRA training speed (own process) ---------------------------------------------------------


def synthetic_training_set(group: ConceptGroup, side: int, count: int = LORA_IMAGES):
    """Seeded random images with a centred box mask (training speed does not depend on content)."""
    from worker.erasure.templates import TRAINING_IMAGE_PROMPT, fill
    from worker.erasure.training_data import TrainingSet

    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(count, 3, side, side, generator=generator)
    masks = torch.zeros(count, side, side, dtype=torch.bool)
    masks[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = True
    phrase = group.targets[0]
    prompt = fill(TRAINING_IMAGE_PROMPT[group.kind], phrase)
    return TrainingSet(
        group, images, masks, [prompt] * count, [phrase] * count, list(range(count)), "box"
    )


def measure_lora(model_name: str) -> dict:
    """Stage-2 steps per second with `train_concept_lora`, after warm-up steps."""
    from worker.erasure.lora_training import LoraOptions, train_concept_lora

    side, warmup, timed = LORA_PLAN[model_name]
    if model_name == "tiny":
        from worker.erasure.tiny_model import build_tiny_pipeline

        pipe = build_tiny_pipeline(SEED)
    else:
        from bench.sd14_models import sd14_pipeline

        pipe = sd14_pipeline({"sd14-arch": 12, MASS_MODEL: 1}[model_name], SEED)
    pipe.set_progress_bar_config(disable=True)
    side = side or pipe.unet.config.sample_size * pipe.vae_scale_factor
    rss_after_build = rss_mb()
    group = concept_groups(1)[0]
    training_set = synthetic_training_set(group, side)
    stamps: list[float] = []
    options = LoraOptions.for_group(group, steps=warmup + timed)
    started = time.perf_counter()
    train_concept_lora(
        pipe,
        group,
        0,
        training_set,
        options,
        seed=SEED,
        progress=lambda done, total: stamps.append(time.perf_counter()),
    )
    total_s = time.perf_counter() - started
    step_seconds = [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]
    return {
        "lora_steps_per_s": round(timed / sum(step_seconds), 4),
        "lora_steady_steps_per_s": round(1 / statistics.median(step_seconds), 4),
        "lora_resolution": side,
        "lora_latent_size": side // pipe.vae_scale_factor,
        "lora_timed_steps": timed,
        "lora_warmup_steps": warmup,
        "lora_setup_and_warmup_s": round(stamps[warmup - 1] - started, 2),
        "lora_total_s": round(total_s, 2),
        "lora_rss_after_build_mb": round(rss_after_build, 1),
        "lora_peak_rss_mb": round(peak_rss_mb(), 1),
        "lora_note": "real train_concept_lora, synthetic images and box masks, batch 1, rank 1",
    }


# ---- orchestration -----------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _child_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            found = re.search(r"VmRSS:\s+(\d+) kB", handle.read())
    except OSError:
        return 0.0
    return int(found.group(1)) / 1024 if found else 0.0


def run_child(task: str, model: str, concepts: int = 0, *, rss_cap_mb: float) -> dict:
    """Run one measurement in a fresh interpreter; its result comes back through a file.

    The child is stopped if its resident memory passes `rss_cap_mb`, so a run whose memory grows
    with the number of concepts reports that instead of exhausting the machine.
    """
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable,
            "-m",
            "bench.erase_cost",
            "--child",
            task,
            "--child-model",
            model,
            "--child-concepts",
            str(concepts),
            "--child-out",
            str(out),
        ]
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sys.stderr)
        highest = 0.0
        while child.poll() is None:
            highest = max(highest, _child_rss_mb(child.pid))
            if highest > rss_cap_mb:
                child.kill()
                child.wait()
                stage, partial = out.with_suffix(".stage"), out.with_suffix(".partial")
                during = f" during {stage.read_text()}" if stage.exists() else ""
                return {
                    **(json.loads(partial.read_text()) if partial.exists() else {}),
                    "error": f"stopped{during}: resident memory passed the cap of "
                    f"{rss_cap_mb:.0f} MB",
                    "peak_rss_mb": round(highest, 1),
                }
            time.sleep(0.2)
        if child.returncode != 0 or not out.exists():
            return {"error": f"{task} run exited with status {child.returncode}"}
        return json.loads(out.read_text())


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _lora_cell(r: dict) -> str:
    if not r.get("lora_steps_per_s"):
        return "-"
    mean, steady = r["lora_steps_per_s"], r["lora_steady_steps_per_s"]
    return f"{mean:.3g} ({steady:.3g}) @{r['lora_resolution']}px"


TIME_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("concepts", lambda r: str(r["concepts"])),
    ("prompts", lambda r: str(r["target_prompts"])),
    ("encode_s", lambda r: _fmt(r["encode_s"])),
    ("cfr_enc_s", lambda r: _fmt(r["cfr_encode_s"])),
    ("cfr_s", lambda r: _fmt(r["cfr_s"])),
    ("cfr/enc", lambda r: _fmt(r["cfr_ratio"])),
    ("(steady)", lambda r: _fmt(r["cfr_steady_ratio"])),
    ("fus_enc_s", lambda r: _fmt(r["fusion_encode_s"])),
    ("fusion_s", lambda r: _fmt(r["fusion_s"])),
    ("fus/enc", lambda r: _fmt(r["fusion_ratio"])),
    ("(steady)", lambda r: _fmt(r["fusion_steady_ratio"])),
    ("rounds", lambda r: str(r["rounds"])),
    ("load", lambda r: "/".join(f"{x:.1f}" for x in r["load_average_1min"])),
    ("lora steps/s (steady)", _lora_cell),
]

MEMORY_COLUMNS = [
    ("model", lambda r: r["model"]),
    ("concepts", lambda r: str(r["concepts"])),
    ("rss_base_MB", lambda r: _fmt(r["rss_after_build_mb"], 0)),
    ("cfr_peak_MB", lambda r: _fmt(r["cfr_peak_rss_mb"], 0)),
    ("fusion_peak_MB", lambda r: _fmt(r["fusion_peak_rss_mb"], 0)),
    ("peak_rss_MB", lambda r: _fmt(r["peak_rss_mb"], 0)),
    ("artifact_MB", lambda r: _fmt(r["artifact_bytes"] / 2**20, 2)),
    ("art_fp16_MB", lambda r: _fmt(r["artifact_fp16_bytes"] / 2**20, 2)),
    ("unet_fp32_MB", lambda r: _fmt(r["unet_bytes"] / 2**20, 1)),
    ("unet_fp16_MB", lambda r: _fmt(r["unet_fp16_bytes"] / 2**20, 1)),
    ("art/unet", lambda r: f"{100 * r['artifact_fraction']:.3f}%"),
]


def _columns_table(columns, runs: list[dict]) -> str:
    return _table([h for h, _ in columns], [[cell(r) for _, cell in columns] for r in runs])


def _failure_line(r: dict) -> str:
    line = f"{r['model']} x {r['concepts']}: {r['error']}"
    if r.get("peak_rss_mb"):
        line += f" (peak {r['peak_rss_mb']:.0f} MB)"
    done = [f"{k}={r[k]:g}" for k in r if k.endswith("_s") and isinstance(r[k], float)]
    done = [d for d in done if not d.startswith("lora_")]
    done += [
        f"{k}={r[k]:.0f}"
        for k in r
        if k.endswith("_peak_rss_mb") and not k.startswith("lora_") and r[k] is not None
    ]
    return line + (f"; measured before it: {', '.join(done)}" if done else "")


def format_report(runs: list[dict]) -> str:
    measured = [r for r in runs if "error" not in r]
    parts = [
        "Time (wall seconds, best of `rounds`; ratios: stage / its own text-encoding floor; "
        "steady: the same ratio from median seconds per prompt over the batches/groups, which "
        "bursts of other load on the machine do not move; load: 1-min load average "
        "before/after; lora: stage-2 steps/s, mean (median step) at that image size)",
        _columns_table(TIME_COLUMNS, measured),
        "Memory (RSS in MB: after building the model; peak while CFR ran; peak while fusion "
        "ran; whole process) and size (artifact: CompactEdit.save, float32 and float16, vs the "
        "full UNet; art/unet in float32)",
        _columns_table(MEMORY_COLUMNS, measured),
    ]
    failed = [r for r in runs if "error" in r]
    if failed:
        parts.append("Runs without results:\n" + "\n".join(_failure_line(r) for r in failed))
    return "\n\n".join(parts)


def measure_all(args: argparse.Namespace) -> list[dict]:
    """Every planned run, each in its own process; LoRA speed once per model."""
    lora: dict[str, dict] = {}
    runs = []
    cap = args.rss_cap_gb * 1024
    revision = engine_revision()
    for model, concepts in plan(args):
        _log(f"erasure: {model}, {concepts} groups")
        run = {"model": model, "concepts": concepts}
        run.update(run_child("erasure", model, concepts, rss_cap_mb=cap))
        if model not in lora:
            lora[model] = _lora_speed(model, args.skip_lora, cap)
        runs.append(
            {**run, **lora[model], **revision, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        )
        _log(json.dumps(runs[-1]))
    return runs


def _lora_speed(model: str, skip: bool, cap: float) -> dict:
    if skip:
        return {
            "lora_steps_per_s": None,
            "lora_resolution": None,
            "lora_note": "skipped (--skip-lora)",
        }
    _log(f"LoRA training speed: {model}")
    result = run_child("lora", model, rss_cap_mb=cap)
    if "error" in result:
        return {"lora_steps_per_s": None, "lora_resolution": None, "lora_note": result["error"]}
    return result


def merge_runs(earlier: list[dict], latest: list[dict]) -> list[dict]:
    """`earlier` with the runs of `latest` in place of those with the same model and concepts
    (a rerun with --skip-lora keeps the LoRA speed measured before)."""
    fresh = {(r["model"], r["concepts"]): r for r in latest}
    merged = []
    for old in earlier:
        new = fresh.pop((old["model"], old["concepts"]), None)
        if new is None:
            merged.append(old)
            continue
        if new.get("lora_steps_per_s") is None and old.get("lora_steps_per_s") is not None:
            new = {**new, **{k: v for k, v in old.items() if k.startswith("lora_")}}
        merged.append(new)
    return merged + [r for r in latest if (r["model"], r["concepts"]) in fresh]


def environment() -> dict:
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "lora_plan": {
            m: dict(zip(("resolution", "warmup", "timed"), p, strict=True))
            for m, p in LORA_PLAN.items()
        },
        "concept_groups": "one synthetic 1-3 word object phrase each, anchor ''",
        "timing": f"best of up to {MAX_ROUNDS} rounds while a run is under {REPEAT_BELOW_S:.0f} s",
    }


def engine_revision() -> dict:
    """The commit measured, and whether worker/ had uncommitted changes."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "engine_commit": git("rev-parse", "HEAD") or None,
        "engine_uncommitted_changes": bool(git("status", "--porcelain", "--", "worker")),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    parser.add_argument("--concepts", default="1,10,100", help="comma-separated group counts")
    parser.add_argument(
        "--mass-concepts", type=int, default=1000, help=f"extra run for {MASS_MODEL} (0: none)"
    )
    parser.add_argument("--json", type=Path, help="write {'runs': [...]} here")
    parser.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing --json file (same model and concepts are replaced)",
    )
    parser.add_argument("--skip-lora", action="store_true", help="do not measure LoRA training")
    parser.add_argument(
        "--rss-cap-gb",
        type=float,
        default=10.0,
        help="stop a measurement whose resident memory passes this (GiB)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny model, 1 and 10 groups"
    )
    for name in ("--child", "--child-model", "--child-out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--child-concepts", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.concepts = "tiny", "1,10"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; use {', '.join(MODELS)}")
    args.concepts = [int(c) for c in args.concepts.split(",") if c.strip()]
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    runs = [(model, n) for model in args.models for n in args.concepts]
    mass = (MASS_MODEL, args.mass_concepts)
    if MASS_MODEL in args.models and args.mass_concepts and not args.quick and mass not in runs:
        runs.append(mass)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        global _STAGE_FILE
        _STAGE_FILE = Path(args.child_out).with_suffix(".stage")
        result = (
            measure_erasure(args.child_model, args.child_concepts)
            if args.child == "erasure"
            else measure_lora(args.child_model)
        )
        Path(args.child_out).write_text(json.dumps(result))
        return 0
    runs = measure_all(args)
    if args.json and args.update and args.json.exists():
        runs = merge_runs(json.loads(args.json.read_text())["runs"], runs)
    print(format_report(runs), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "environment": environment()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
