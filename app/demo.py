"""`mace demo`: the whole service on this machine, used as a client would use it.

Starts the embedded default (SQLite, local artifacts, filesystem broker) in a fresh data folder,
registers the project's own trained toy model, erases one of its concepts through HTTP, polls
the job, then draws the same prompts and seeds with the base and the erased model: prompts that
name the erased concept (by each of its words) and prompts of other concepts. The toy world's
judge reads every image, so the demo ends with a measurement as well as a picture.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_NAME = "toy-sd"
ROWS_PER_SIDE = 4  # erased-concept prompts, then as many prompts of retained concepts
# What the erasure request sets besides the concept; the toy world's benchmark uses the same.
ERASURE_OPTIONS = {"images_per_concept": 8, "image_steps": 25}


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="run the service locally and erase a concept end to end")
    p.add_argument("--out", default="out/demo", help="folder for the data and the PNG")
    p.add_argument(
        "--concept",
        default="star",
        help="a concept of the toy world to erase, with all its words (default star)",
    )
    p.set_defaults(handler=run_demo)


class Client:
    """A minimal JSON-over-HTTP client (urllib: the demo needs nothing beyond the service)."""

    def __init__(self, base_url: str, key: str):
        self.base_url, self.key = base_url, key

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            sys.exit(f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')}")

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        return json.loads(self.request(method, path, body)[1])


def _mace(*args: str, env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base_url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("mace serve stopped before it was ready")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("mace serve did not become ready")


def _image(client: Client, body: dict):
    from PIL import Image

    content_type, payload = client.request("POST", "/generate", body)
    if not content_type.startswith("image/png"):
        payload = base64.b64decode(json.loads(payload)["images"][0])
    return Image.open(io.BytesIO(payload)).convert("RGB")


def _poll(client: Client, job_id: str) -> dict:
    shown = None
    while True:
        job = client.json("GET", f"/erasures/{job_id}")
        state = (job["status"], job.get("stage") or "-", int(job["progress"] * 10))
        if state != shown:  # a line per stage and per tenth of progress
            print(f"  {state[0]:<9} stage={state[1]:<12} progress={job['progress']:.2f}")
            shown = state
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)


def _toy_model() -> Path:
    from worker.erasure.errors import ErasureInputError
    from worker.toy.commands import SHIPPED_MODEL, pipeline_dir

    try:
        return pipeline_dir(SHIPPED_MODEL)
    except ErasureInputError:
        sys.exit(
            f"the toy model is missing from {SHIPPED_MODEL}; "
            f"train it with `mace toy train --out {SHIPPED_MODEL}`"
        )


def _demo_prompts(name: str) -> list[tuple[str, object, bool]]:
    """(prompt, labels, names the erased concept) rows: the erased concept by each of its words
    in turn, then one prompt for each of as many other concepts of its kind."""
    from worker.toy.prompts import CONCEPTS, concept, concept_prompts

    erased = concept(name)
    rows = []
    for i in range(ROWS_PER_SIDE):
        form = erased.surface_forms[i % len(erased.surface_forms)]
        prompt, labels = concept_prompts(name, 1, seed=[3, i], form=form)[0]
        rows.append((prompt, labels, True))
    others = [c.name for c in CONCEPTS if c.kind == erased.kind and c.name != name]
    for i, other in enumerate(others[:: max(1, len(others) // ROWS_PER_SIDE)][:ROWS_PER_SIDE]):
        prompt, labels = concept_prompts(other, 1, seed=[4, i])[0]
        rows.append((prompt, labels, False))
    return rows


def run_demo(args) -> int:
    from worker.toy.prompts import CONCEPTS, concept

    try:
        args.toy_concept = concept(args.concept)
    except KeyError:
        sys.exit(
            f"--concept {args.concept!r} is not in the toy world; use one of: "
            + ", ".join(c.name for c in CONCEPTS)
        )
    model = _toy_model()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACE_")}
    env.update(MACE_DATA_DIR=str(out / "data"), MACE_CACHE_DIR=str(out / "data" / "cache"))
    print(f"1. registering the project's toy model ({model})")
    _mace("migrate", env=env)
    _mace("base-models", "add", MODEL_NAME, str(model), env=env)
    key = (
        _mace("keys", "create", "--role", "operator", "--name", "demo", env=env)
        .strip()
        .splitlines()[-1]
    )
    port = _free_port()
    print(f"2. starting the service (API and worker) on http://127.0.0.1:{port}")
    with open(out / "serve.log", "w") as log:
        return _run_against_server(args, out, env, key, port, log)


def _erasure_request(client: Client, toy_concept) -> dict:
    """The toy world's erasure: its own prompt language and anchors, and its captions without
    the concept as preservation prompts."""
    from worker.toy.prompts import erasure_request, preservation_prompt_set

    prompt_set = client.json("POST", "/prompt-sets", preservation_prompt_set([toy_concept.name]))
    return erasure_request(toy_concept.name, MODEL_NAME, prompt_set["id"], ERASURE_OPTIONS)


def _draw_rows(client: Client, model: dict, rows) -> list:
    return [
        _image(client, {**model, "prompt": prompt, "seed": seed, "num_inference_steps": 25})
        for seed, (prompt, _labels, _erased) in enumerate(rows)
    ]


def _run_against_server(args, out: Path, env: dict, key: str, port: int, log) -> int:
    base_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(base_url, server)
        client = Client(base_url, key)
        toy_concept = args.toy_concept
        rows = _demo_prompts(toy_concept.name)
        print(f"3. generating {len(rows)} prompts with the base model")
        before = _draw_rows(client, {"base_model": MODEL_NAME}, rows)
        words = ", ".join(toy_concept.surface_forms)
        print(f"4. POST /erasures: erasing the {toy_concept.kind} {toy_concept.name!r} ({words})")
        job = client.json("POST", "/erasures", _erasure_request(client, toy_concept))
        job = _poll(client, job["id"])
        if job["status"] != "succeeded":
            sys.exit(f"the erasure ended {job['status']}: {job.get('error')}")
        print(f"5. generating the same prompts with the erased model {job['model_id']}")
        after = _draw_rows(client, {"model_id": job["model_id"]}, rows)
        path = out / "before-after.png"
        _report(rows, before, after, toy_concept, path)
        model = client.json("GET", f"/models/{job['model_id']}")
        sizes = ", ".join(f"{a['kind']} {a['bytes']} B" for a in model["artifacts"])
        print(f"  stage timings: {job['stage_timings']}\n  artifacts: {sizes}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


def _report(rows, before: list, after: list, toy_concept, path: Path) -> None:
    """The judge's reading of every image, as a labelled grid and a summary line per side."""
    import numpy as np

    from worker.evaluation.image_grid import comparison_grid
    from worker.toy.commands import default_judge
    from worker.toy.dataset import LABEL_NAMES
    from worker.toy.judge import images_to_tensor, load_judge

    judge = load_judge(default_judge(None))
    kind = toy_concept.kind
    read = {}
    for side, images in (("base", before), ("erased", after)):
        batch = images_to_tensor(np.stack([np.asarray(im) for im in images]))
        read[side] = [LABEL_NAMES[kind][i] for i in judge.predict(batch)[kind]]
    grid_rows = []
    for i, (prompt, labels, _erased) in enumerate(rows):
        expected = getattr(labels, kind)
        seen = f"judge: {read['base'][i]} | {read['erased'][i]} (asked: {expected})"
        grid_rows.append((f"{prompt}\n{seen}", [before[i], after[i]]))
    columns = ("base model", f"{toy_concept.name} erased")
    comparison_grid(grid_rows, columns, cell=128).save(path)
    for erased_side, what in ((True, f"naming {toy_concept.name}"), (False, "of other concepts")):
        picked = [i for i, row in enumerate(rows) if row[2] == erased_side]
        counts = [
            sum(read[side][i] == getattr(rows[i][1], kind) for i in picked)
            for side in ("base", "erased")
        ]
        print(
            f"  prompts {what}: the judge sees what was asked in {counts[0]}/{len(picked)} "
            f"base images and {counts[1]}/{len(picked)} erased images"
        )
    print(f"done: {path}")
