"""Training the toy model from scratch within a time budget, resumable from checkpoints.

Phases, in order: render a seeded pool of scenes; train the autoencoder on them; encode them to
latents; train UNet and text encoder jointly (with an exponential average of both); keep the
better of the averaged and the raw weights by judge accuracy and save the pipeline in fp16.
Everything is written under the output folder:

    pipeline/          the diffusers pipeline (StableDiffusionPipeline.from_pretrained loads it)
    train_log.jsonl    one JSON object per event: steps, losses, elapsed time, judge accuracy
    checkpoint/        the state to resume from (and the cached scene pool); not shipped
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .autoencoder import (
    encode_scenes,
    latent_scaling_factor,
    reconstruction_psnr,
    reconstruction_step,
    to_model_range,
)
from .dataset import SceneSet, render_scenes
from .denoiser import ExponentialAverage, denoising_loss, learning_rate
from .model import (
    ToyModelSize,
    assemble_pipeline,
    build_noise_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from .prompts import describe, random_wording
from .threads import ThreadChooser

PIPELINE_DIR = "pipeline"
LOG_FILE = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a run depends on besides its seed's draws; recorded in the log."""

    minutes: float = 90.0
    seed: int = 0
    scenes: int = 100_000
    batch_size: int = 64
    vae_batch_size: int = 32
    vae_share: float = 0.1  # of the budget
    vae_lr: float = 3e-3
    lr: float = 8e-4
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty prompts, so classifier-free guidance has something to do
    min_snr_gamma: float | None = 5.0
    checkpoint_minutes: float = 5.0
    judge_minutes: float = 12.0
    judge_prompts_per_concept: int = 2
    final_prompts_per_concept: int = 3
    log_every: int = 25
    # step caps for short, reproducible runs; the time budget still applies
    max_vae_steps: int | None = None
    max_unet_steps: int | None = None
    size: ToyModelSize = field(default_factory=ToyModelSize)


class Clock:
    """Seconds of training so far, across interrupted sessions."""

    def __init__(self, before: float = 0.0):
        self.before, self.started = before, time.monotonic()

    def __call__(self) -> float:
        return self.before + time.monotonic() - self.started


class ToyTrainer:
    """One training run's state; `run` continues from wherever the state is."""

    def __init__(
        self,
        out: str | Path,
        plan: TrainingPlan,
        judge=None,
        threads: int | None = None,
        echo=print,
    ):
        self.out, self.plan, self.judge, self.echo = Path(out), plan, judge, echo
        self.threads = threads or os.cpu_count() or 1
        self.thread_chooser = ThreadChooser(self.threads, fixed=threads is not None)
        self.checkpoint_dir = self.out / CHECKPOINT_DIR
        self.clock = Clock()
        self.phase = "vae"
        self.step = 0
        self.vae_step = 0
        self.deadlines: dict[str, float] = {}
        # seconds kept for choosing and saving; re-estimated from the first judged sample
        self.final_reserve = min(180.0, 0.1 * plan.minutes * 60)
        torch.manual_seed(plan.seed)
        self.vae = build_vae(plan.size)
        self.text_encoder = build_text_encoder(plan.size)
        self.unet = build_unet(plan.size)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder)
        self.ema_unet = copy.deepcopy(self.unet)
        self.ema = ExponentialAverage(
            [self.text_encoder, self.unet], [self.ema_text_encoder, self.ema_unet], plan.ema_decay
        )
        self.vae_optimizer = torch.optim.AdamW(self.vae.parameters(), lr=plan.vae_lr)
        self.optimizer = torch.optim.AdamW(
            list(self.text_encoder.parameters()) + list(self.unet.parameters()),
            lr=plan.lr,
            weight_decay=0.01,
        )
        self.generator = torch.Generator().manual_seed(plan.seed)
        self.prompt_rng = np.random.default_rng([plan.seed, 1])
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0
        self.scaling_factor = 1.0
        self.scenes: SceneSet | None = None
        self.latents: tuple[torch.Tensor, torch.Tensor] | None = None
        self.noise_scheduler = build_noise_scheduler()
        self.tokenizer = None
        self._token_cache: dict[str, torch.Tensor] = {}

    # ---- bookkeeping -------------------------------------------------------------------------

    def log(self, event: str, **values) -> None:
        record = {"event": event, "elapsed_min": round(self.clock() / 60, 2), **values}
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / LOG_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.echo(" ".join(f"{k}={v}" for k, v in record.items() if not isinstance(v, dict)))

    def state_dict(self) -> dict:
        return {
            "plan": asdict(self.plan),
            "phase": self.phase,
            "elapsed": self.clock(),
            "step": self.step,
            "vae_step": self.vae_step,
            "deadlines": self.deadlines,
            "final_reserve": self.final_reserve,
            "scaling_factor": self.scaling_factor,
            "vae": self.vae.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "unet": self.unet.state_dict(),
            "ema_text_encoder": self.ema_text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "prompt_rng": self.prompt_rng.bit_generator.state,
            "order": self.order,
            "position": self.position,
        }

    def save_checkpoint(self) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / "state.pt"
        partial = path.with_suffix(".partial")
        torch.save(self.state_dict(), partial)
        os.replace(partial, path)  # an interruption while writing leaves the previous one intact
        return path

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_dir / "state.pt", weights_only=False)
        if state["plan"]["seed"] != self.plan.seed or state["plan"]["size"] != asdict(
            self.plan.size
        ):
            raise ValueError("the checkpoint was made with another seed or model size")
        self.clock = Clock(state["elapsed"])
        for name in (
            "phase",
            "step",
            "vae_step",
            "deadlines",
            "final_reserve",
            "position",
            "scaling_factor",
            "order",
        ):
            setattr(self, name, state[name])
        for name in (
            "vae",
            "text_encoder",
            "unet",
            "ema_text_encoder",
            "ema_unet",
            "vae_optimizer",
            "optimizer",
        ):
            getattr(self, name).load_state_dict(state[name])
        self.vae.register_to_config(scaling_factor=self.scaling_factor)
        self.generator.set_state(state["generator"])
        self.prompt_rng.bit_generator.state = state["prompt_rng"]

    @property
    def budget(self) -> float:
        return self.plan.minutes * 60.0

    # ---- data --------------------------------------------------------------------------------

    def load_scenes(self) -> SceneSet:
        cache = self.checkpoint_dir / "scenes.npz"
        if cache.is_file():
            data = np.load(cache)
            labels = {k[len("label_") :]: data[k] for k in data.files if k.startswith("label_")}
            return SceneSet(data["images"], labels)
        started = self.clock()
        scenes = render_scenes(self.plan.scenes, seed=self.plan.seed, workers=self.threads)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=scenes.images, **{f"label_{k}": v for k, v in scenes.labels.items()})
        self.log("scenes", count=len(scenes), seconds=round(self.clock() - started, 1))
        return scenes

    def next_batch(self, size: int) -> torch.Tensor:
        if self.position + size > len(self.order):
            self.order = torch.randperm(len(self.scenes), generator=self.generator)
            self.position = 0
        batch = self.order[self.position : self.position + size]
        self.position += size
        return batch

    def input_ids(self, prompts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            from worker.erasure.tokenizer import load_clip_tokenizer

            self.tokenizer = load_clip_tokenizer()
        missing = [p for p in dict.fromkeys(prompts) if p not in self._token_cache]
        if missing:
            ids = self.tokenizer(
                missing,
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids
            self._token_cache.update(zip(missing, ids, strict=True))
        return torch.stack([self._token_cache[p] for p in prompts])

    def captions(self, batch: torch.Tensor) -> list[str]:
        prompts = []
        for i in batch.tolist():
            labels = self.scenes.scene(i)
            prompt = describe(labels, random_wording(labels, self.prompt_rng), self.prompt_rng)
            dropped = self.prompt_rng.random() < self.plan.caption_dropout
            prompts.append("" if dropped else prompt)
        return prompts

    # ---- phases ------------------------------------------------------------------------------

    def run(self) -> Path | None:
        """Train until done or out of time; returns the pipeline folder once it is written."""
        if self.phase in ("choose", "done") and not self.unet_finished():
            self.phase = "unet"  # resumed with a larger budget: train on, then choose again
        self.log("start", plan=asdict(self.plan), phase=self.phase, threads=self.threads)
        self.scenes = self.load_scenes()
        if self.phase == "vae":
            self.train_vae()
        if self.phase == "unet":
            self.train_unet()
        if self.phase == "choose":
            return self.choose_and_save()
        return self.out / PIPELINE_DIR if self.phase == "done" else None

    def vae_train_step(self) -> float:
        """One reconstruction step of the autoencoder; returns its loss."""
        plan = self.plan
        start = self.deadlines["vae"] - plan.vae_share * self.budget
        progress = (self.clock() - start) / (plan.vae_share * self.budget)
        if plan.max_vae_steps:  # capped runs follow the steps, so they are reproducible
            progress = self.vae_step / plan.max_vae_steps
        for group in self.vae_optimizer.param_groups:
            group["lr"] = learning_rate(plan.vae_lr, self.vae_step, 100, progress, 0.05)
        images = to_model_range(self.scenes.images[self.next_batch(plan.vae_batch_size).numpy()])
        loss = reconstruction_step(self.vae, self.vae_optimizer, images, self.generator)
        self.vae_step += 1
        return loss

    def train_vae(self) -> None:
        plan = self.plan
        self.deadlines.setdefault("vae", self.clock() + plan.vae_share * self.budget)
        last_save, losses, logged = self.clock(), [], self.vae_step
        self.vae.train()
        while self.clock() < self.deadlines["vae"] and (
            plan.max_vae_steps is None or self.vae_step < plan.max_vae_steps
        ):
            if self.thread_chooser.due():
                done, timings = self.thread_chooser.choose(self.vae_train_step)
                losses += done
                self.log(
                    "threads",
                    phase="vae",
                    chosen=self.thread_chooser.current,
                    seconds_per_step={k: round(v, 3) for k, v in timings.items()},
                )
            else:
                losses.append(self.vae_train_step())
            if self.vae_step - logged >= plan.log_every:
                self.log("vae", step=self.vae_step, loss=round(float(np.mean(losses)), 5))
                losses, logged = [], self.vae_step
            if self.clock() - last_save > plan.checkpoint_minutes * 60:
                self.save_checkpoint()
                last_save = self.clock()
        psnr = reconstruction_psnr(self.vae, self.scenes.images[-256:])
        self.phase, self.order, self.position = "unet", torch.empty(0, dtype=torch.long), 0
        self.deadlines["unet_start"] = self.clock()
        means, stds = encode_scenes(self.vae, self.scenes.images)
        self.scaling_factor = latent_scaling_factor(means, stds, plan.seed)
        self.vae.register_to_config(scaling_factor=self.scaling_factor)
        self.latents = (means, stds)
        self.log(
            "vae_done",
            steps=self.vae_step,
            psnr_db=round(psnr, 2),
            scaling_factor=round(self.scaling_factor, 5),
        )
        self.save_checkpoint()

    def ensure_latents(self) -> None:
        if self.latents is None:
            self.latents = encode_scenes(self.vae, self.scenes.images)

    def unet_step(self) -> float:
        """One optimisation step of UNet and text encoder; returns the batch's loss."""
        plan = self.plan
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(
                plan.lr, self.step, plan.warmup_steps, self.unet_progress(), plan.final_lr_fraction
            )
        batch = self.next_batch(plan.batch_size)
        means, stds = self.latents[0][batch], self.latents[1][batch]
        latents = means + stds * torch.randn(means.shape, generator=self.generator)
        loss = denoising_loss(
            self.unet,
            self.text_encoder,
            self.noise_scheduler,
            latents * self.scaling_factor,
            self.input_ids(self.captions(batch)),
            self.generator,
            plan.min_snr_gamma,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], 1.0)
        self.optimizer.step()
        self.ema.update(self.step)
        self.step += 1
        return loss.item()

    def unet_time_used(self) -> float:
        """The share of the UNet phase's time already spent."""
        start, end = self.deadlines["unet_start"], self.budget - self.final_reserve
        return (self.clock() - start) / max(end - start, 1.0)

    def unet_progress(self) -> float:
        """Where the learning-rate schedule is: the share of the step cap done if there is one
        (so capped runs are reproducible), else the share of the time used."""
        if self.plan.max_unet_steps:
            return self.step / self.plan.max_unet_steps
        return self.unet_time_used()

    def unet_finished(self) -> bool:
        return self.unet_progress() >= 1.0 or self.unet_time_used() >= 1.0

    def train_unet(self) -> None:
        plan = self.plan
        self.ensure_latents()
        self.vae.eval()
        self.deadlines.setdefault("unet_start", self.clock())
        self.thread_chooser.checked_at = None  # steps cost differently from the autoencoder's
        next_judge = self.clock() + plan.judge_minutes * 60
        last_save, losses, logged = self.clock(), [], self.step
        window, window_steps = time.monotonic(), 0
        self.text_encoder.train()
        self.unet.train()
        while not self.unet_finished():
            if self.thread_chooser.due():
                done, timings = self.thread_chooser.choose(self.unet_step)
                losses += done
                window_steps += len(done)
                self.log(
                    "threads",
                    phase="unet",
                    chosen=self.thread_chooser.current,
                    seconds_per_step={k: round(v, 3) for k, v in timings.items()},
                )
            else:
                losses.append(self.unet_step())
                window_steps += 1
            if self.step - logged >= plan.log_every:
                rate = window_steps / (time.monotonic() - window)
                window, window_steps = time.monotonic(), 0
                self.log(
                    "unet",
                    step=self.step,
                    loss=round(float(np.mean(losses)), 5),
                    lr=round(self.optimizer.param_groups[0]["lr"], 7),
                    steps_per_s=round(rate, 3),
                )
                losses, logged = [], self.step
            if self.judge is not None and self.clock() >= next_judge:
                self.judge_sample()
                next_judge = self.clock() + plan.judge_minutes * 60
                window, window_steps = time.monotonic(), 0  # the rate counts training steps only
            if self.clock() - last_save > plan.checkpoint_minutes * 60:
                self.save_checkpoint()
                last_save = self.clock()
        self.phase = "choose"
        self.save_checkpoint()

    def pipeline(self, averaged: bool):
        text, unet = (
            (self.ema_text_encoder, self.ema_unet) if averaged else (self.text_encoder, self.unet)
        )
        return assemble_pipeline(self.vae, text.eval(), unet.eval(), self.tokenizer)

    def judge_sample(self) -> dict:
        """Judge accuracy of the averaged weights on a small fixed sample; logged."""
        from .scoring import score_concepts

        started = time.monotonic()
        scores = score_concepts(
            self.pipeline(averaged=True),
            self.judge,
            per_concept=self.plan.judge_prompts_per_concept,
            seed=self.plan.seed,
        )
        seconds = time.monotonic() - started
        final_scale = 2 * self.plan.final_prompts_per_concept / self.plan.judge_prompts_per_concept
        self.final_reserve = max(60.0, 30.0 + final_scale * seconds)
        self.text_encoder.train()
        self.unet.train()
        summary = {k: round(v, 4) for k, v in scores.to_dict().items() if not isinstance(v, dict)}
        self.log(
            "judge",
            step=self.step,
            seconds=round(seconds, 1),
            **summary,
            per_concept=scores.per_concept,
        )
        return summary

    def choose_and_save(self) -> Path:
        """Keep the averaged or the raw weights, whichever the judge prefers; save in fp16."""
        from .scoring import score_concepts

        self.ensure_latents()
        choice, results = "averaged", {}
        if self.judge is not None:
            for averaged in (True, False):
                scores = score_concepts(
                    self.pipeline(averaged),
                    self.judge,
                    per_concept=self.plan.final_prompts_per_concept,
                    seed=self.plan.seed + 1,
                )
                results["averaged" if averaged else "raw"] = scores.mean + scores.synonym_mean
                self.log(
                    "final_candidate",
                    averaged=averaged,
                    step=self.step,
                    **{
                        k: round(v, 4)
                        for k, v in scores.to_dict().items()
                        if not isinstance(v, dict)
                    },
                )
            choice = max(results, key=results.get)
        pipe = copy.deepcopy(self.pipeline(averaged=choice == "averaged"))
        path = self.out / PIPELINE_DIR
        pipe.to(torch.float16).save_pretrained(path, safe_serialization=True)
        self.phase = "done"
        self.save_checkpoint()
        self.log("done", weights=choice, step=self.step, pipeline=str(path))
        return path


def train_toy_model(
    out: str | Path,
    plan: TrainingPlan | None = None,
    resume: bool = False,
    judge_path: str | Path | None = None,
    threads: int | None = None,
    echo=print,
) -> Path | None:
    """Train the toy model from scratch into `out` (see the module docstring for the layout).

    Args:
        out: output folder; must hold no other run unless resuming (a judge may be there).
        plan: budget, seed and hyperparameters; the shipped model's by default.
        resume: continue from `out/checkpoint` (refuses a checkpoint of another seed or size);
            a finished run resumed with more minutes trains on and saves the pipeline again.
        judge_path: judge weights for the periodic accuracy and the final choice; without one,
            the averaged weights are kept.
        threads: torch threads and rendering processes (default: every core).
        echo: called with each log line.
    """
    from .judge import load_judge

    out = Path(out)
    plan = plan or TrainingPlan()
    judge = load_judge(judge_path) if judge_path else None
    trainer = ToyTrainer(out, plan, judge=judge, threads=threads, echo=echo)
    checkpoint = out / CHECKPOINT_DIR / "state.pt"
    if resume and checkpoint.is_file():
        trainer.load_checkpoint()
    elif any(p.exists() for p in (checkpoint, out / LOG_FILE, out / PIPELINE_DIR)):
        raise FileExistsError(f"{out} holds a training run; pass --resume to continue it")
    return trainer.run()
