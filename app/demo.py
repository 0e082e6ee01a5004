"""`mace demo`: the whole service on this machine, used as a client would use it.

Starts the embedded default (SQLite, local artifacts, filesystem broker) in a fresh data folder,
registers the project's own small model, erases a concept through HTTP, polls the job, and
writes the model's image before and after, side by side.
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

MODEL_NAME = "tiny-sd"


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="run the service locally and erase a concept end to end")
    p.add_argument("--out", default="out/demo", help="folder for the data and the PNG")
    p.add_argument(
        "--concept", default="cat, kitten", help='concept to erase (default "cat, kitten")'
    )
    p.add_argument("--prompt", default="a photo of a cat", help="prompt of the before/after images")
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


def run_demo(args) -> int:
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACE_")}
    env.update(MACE_DATA_DIR=str(out / "data"), MACE_CACHE_DIR=str(out / "data" / "cache"))
    print("1. building the project's small model and registering it")
    _mace("tiny-model", str(out / "model"), env=env)
    _mace("migrate", env=env)
    _mace("base-models", "add", MODEL_NAME, str(out / "model"), env=env)
    key = (
        _mace("keys", "create", "--role", "operator", "--name", "demo", env=env)
        .strip()
        .splitlines()[-1]
    )
    port = _free_port()
    print(f"2. starting the service (API and worker) on http://127.0.0.1:{port}")
    with open(out / "serve.log", "w") as log:
        return _run_against_server(args, out, env, key, port, log)


def _run_against_server(args, out: Path, env: dict, key: str, port: int, log) -> int:
    from worker.erasure.commands import side_by_side

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
        picture = {"prompt": args.prompt, "seed": 3, "num_inference_steps": 25}
        print(f"3. generating {args.prompt!r} with the base model")
        before = _image(client, {"base_model": MODEL_NAME, **picture})
        print(f"4. POST /erasures: erasing {args.concept!r}")
        job = client.json(
            "POST",
            "/erasures",
            {
                "base_model": MODEL_NAME,
                "concepts": [args.concept],
                "name": "demo",
                "images_per_concept": 4,
                "image_steps": 10,
            },
        )
        job = _poll(client, job["id"])
        if job["status"] != "succeeded":
            sys.exit(f"the erasure ended {job['status']}: {job.get('error')}")
        print(f"5. generating {args.prompt!r} with the erased model {job['model_id']}")
        after = _image(client, {"model_id": job["model_id"], **picture})
        path = out / "before-after.png"
        side_by_side(before, after, ("base model", f"erased: {args.concept}")).save(path)
        model = client.json("GET", f"/models/{job['model_id']}")
        sizes = ", ".join(f"{a['kind']} {a['bytes']} B" for a in model["artifacts"])
        print(f"done: {path}\n  stage timings: {job['stage_timings']}\n  artifacts: {sizes}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0
