"""API load on loopback: submit/poll latency under N concurrent clients, and `/generate` against
the same pipeline called directly in one process.

The production stack runs on 127.0.0.1 (`bench/load_stack.py`): a fresh Postgres database
migrated by Alembic, a Redis db of its own, uvicorn serving `app.api.main:create_app` and one
Celery worker on the `generate` queue only. No erase worker runs, so submitted jobs stay queued
(they go when the database is dropped) and the cores serve the API.

1. Submit/poll: N clients (asyncio, one keep-alive connection each: a minimal HTTP/1.1 client
   by default, or httpx with `--client httpx`), each looping for `--seconds` after a warm-up:
   POST /erasures (a unique body; every 4th with a fresh Idempotency-Key), then GET
   /erasures/{id} once or twice, with an optional pause (`--think-ms`, jittered) between
   requests. Latency is measured per request, by kind. The default pause, 1 s, is how the
   service's clients behave: dashboards and pre-deployment pipelines poll a job about once a
   second. With no pause the loop is closed: every client always has a request in flight, so
   this is the saturation case, where the mean latency is N / throughput (Little's law) whatever
   the server does; it measures throughput, not latency.
2. Generate: one warm-up call each, then K rounds alternating POST /generate (tiny model, one
   image, 25 steps, seed 0, native size) and `generate_images` on `load_pipeline` of the same
   folder, called directly in one process of its own (fresh, like the worker), both with the same
   torch thread count (OMP_NUM_THREADS, and `torch.set_num_threads` in the direct process). The
   direct time is reported with and without the PNG encode the worker does; the ratio uses the
   one with it (like for like). The PNGs of both sides are compared byte for byte.

The load generator shares the machine's cores with the server, Postgres and Redis.

    python -m bench.api_load --json bench/results/api_load.json --txt bench/results/api_load.txt
    python -m bench.api_load --think-ms 0 --skip-generate --json bench/results/api_saturation.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/api_load.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load_stack import LoadStack, machine_busy_seconds, server_cpu_seconds  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "MACE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PROMPT = "a photo of a cat"
MAX_ITERATIONS_PER_CLIENT = 100_000  # a bound on the loop besides the clock
REQUEST_TIMEOUT_S = 30.0
MS = 1000.0


def _log(message: str) -> None:
    print(f"[api_load] {message}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarise(latencies_s: list[float], errors: int, seconds: float, statuses: dict) -> dict:
    values = sorted(latencies_s)
    count = len(values)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * MS, 2)

    return {
        "count": count,
        "throughput_rps": round(count / seconds, 1) if seconds > 0 else None,
        "p50_ms": ms(percentile(values, 50)),
        "p95_ms": ms(percentile(values, 95)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(values[-1] if values else None),
        "mean_ms": ms(statistics.fmean(values) if values else None),
        "errors": errors,
        "error_rate": round(errors / count, 5) if count else None,
        "statuses": dict(sorted(statuses.items())),
    }


# -- submit / poll load ----------------------------------------------------------------------


class Recorder:
    """Latencies and outcomes per request kind, kept only inside the timed window."""

    def __init__(self):
        self.window = (float("inf"), float("inf"))
        self.latencies: dict[str, list[float]] = {"submit": [], "poll": []}
        self.errors = {"submit": 0, "poll": 0}
        self.statuses: dict[str, dict[str, int]] = {"submit": {}, "poll": {}}
        self.error_samples: list[str] = []

    def record(self, kind: str, started: float, finished: float, status: str, ok: bool) -> None:
        if not (self.window[0] <= started and finished <= self.window[1]):
            return  # warm-up, or a request that ran past the end
        self.latencies[kind].append(finished - started)
        self.statuses[kind][status] = self.statuses[kind].get(status, 0) + 1
        if not ok:
            self.errors[kind] += 1


class RawHttpClient:
    """One keep-alive HTTP/1.1 connection on asyncio streams: ~0.15 ms of CPU per request here,
    against ~1.5-3 ms for an httpx.AsyncClient and ~10 ms for 50 clients sharing one httpx pool,
    CPU the load generator would take from the server it measures on the same two cores."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        host_port = base_url.removeprefix("http://").rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, json_body=None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(
                self._exchange(method, path, json_body, headers), REQUEST_TIMEOUT_S
            )
        except BaseException:
            await self.aclose()  # the connection's state is unknown: start a new one next time
            raise

    async def _exchange(self, method, path, json_body, headers) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.headers}"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if json_body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = None, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise ValueError("chunked responses are not read by this client")
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length or 0)
        if close:
            await self.aclose()
        return status, payload

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class HttpxClient:
    """The same interface on an httpx.AsyncClient of its own (one connection per client:
    a pool shared by 50 clients costs httpx ~10 ms of CPU per request)."""

    def __init__(self, base_url: str, headers: dict[str, str]):
        import httpx

        self.client = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S
        )

    async def request(self, method, path, json_body=None, headers=None) -> tuple[int, bytes]:
        response = await self.client.request(method, path, json=json_body, headers=headers)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self.client.aclose()


CLIENTS = {"raw": RawHttpClient, "httpx": HttpxClient}


async def _request(client, recorder: Recorder, kind: str, method: str, path: str, **kwargs):
    """The response body of a 2xx answer, else None; the latency is recorded either way."""
    started = time.perf_counter()
    try:
        status, payload = await client.request(method, path, **kwargs)
    except Exception as exc:  # timeouts, refused or dropped connections: errors, counted
        recorder.record(kind, started, time.perf_counter(), type(exc).__name__, False)
        if len(recorder.error_samples) < 5:
            recorder.error_samples.append(f"{kind}: {type(exc).__name__}: {exc}")
        return None
    finished = time.perf_counter()
    ok = 200 <= status < 300
    recorder.record(kind, started, finished, str(status), ok)
    if not ok and len(recorder.error_samples) < 5:
        recorder.error_samples.append(f"{kind}: {status} {payload[:200]!r}")
    return payload if ok else None


async def _client_loop(
    index: int, client, recorder: Recorder, deadline: float, think_s: float, base_model: str
) -> None:
    # Pauses drawn around `think_s` (x0.5..1.5) and a random start, so the clients do not march
    # in step and arrive as bursts of N; seeded per client, so runs are repeatable.
    rng = random.Random(index)

    async def pause(scale: float = 1.0) -> None:
        if think_s:
            await asyncio.sleep(think_s * scale * rng.uniform(0.5, 1.5))

    try:
        await pause(rng.random())
        for iteration in range(MAX_ITERATIONS_PER_CLIENT):
            if time.perf_counter() >= deadline:
                return
            body = {
                "base_model": base_model,
                "concepts": [f"bench concept {index} {iteration}"],
                "seed": iteration,
            }
            key = {"Idempotency-Key": f"bench-{index}-{iteration}"} if iteration % 4 == 0 else None
            payload = await _request(
                client, recorder, "submit", "POST", "/erasures", json_body=body, headers=key
            )
            if payload is not None:
                job_id = json.loads(payload)["id"]
                for _ in range(1 + iteration % 2):  # one poll, then two, alternately
                    await pause()
                    if time.perf_counter() >= deadline:
                        return
                    await _request(client, recorder, "poll", "GET", f"/erasures/{job_id}")
            await pause()
    finally:
        await client.aclose()


def _snapshot(stack: LoadStack) -> dict:
    times = os.times()
    return {
        "at": time.perf_counter(),
        "machine_busy_s": machine_busy_seconds(),
        "api_cpu_s": stack.cpu_seconds("api"),
        "worker_cpu_s": stack.cpu_seconds("worker"),
        "postgres_cpu_s": server_cpu_seconds("postgres"),
        "redis_cpu_s": server_cpu_seconds("redis-server"),
        "load_cpu_s": times.user + times.system,
        "postgres_sessions": stack.postgres_sessions(),
    }


async def _snapshot_at(moment: float, stack: LoadStack) -> dict:
    await asyncio.sleep(max(0.0, moment - time.perf_counter()))
    return await asyncio.to_thread(_snapshot, stack)


async def _run_load(
    stack: LoadStack,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    think_s: float,
    client_kind: str = "raw",
) -> dict:
    recorder = Recorder()
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    start = time.perf_counter()
    recorder.window = (start + warmup, start + warmup + seconds)
    deadline = recorder.window[1]
    snapshots = [asyncio.create_task(_snapshot_at(moment, stack)) for moment in recorder.window]
    await asyncio.gather(
        *(
            _client_loop(
                i,
                CLIENTS[client_kind](stack.base_url, headers),
                recorder,
                deadline,
                think_s,
                stack.base_model_name,
            )
            for i in range(clients)
        )
    )
    first, last = await asyncio.gather(*snapshots)
    result = {
        kind: summarise(recorder.latencies[kind], recorder.errors[kind], seconds, statuses)
        for kind, statuses in recorder.statuses.items()
    }
    result["usage"] = _usage(first, last, sum(len(v) for v in recorder.latencies.values()))
    result["error_samples"] = recorder.error_samples
    return result


def _usage(first: dict, last: dict, requests: int) -> dict:
    """Where the cores went during the timed window, as shares of all cores (1.0 = all busy)."""
    span = (last["at"] - first["at"]) * (os.cpu_count() or 1)

    def delta(name: str) -> float | None:
        if first[name] is None or last[name] is None:
            return None
        return last[name] - first[name]

    parts = {
        "api": delta("api_cpu_s"),
        "postgres": delta("postgres_cpu_s"),
        "redis": delta("redis_cpu_s"),
        "load_generator": delta("load_cpu_s"),
        "generate_worker": delta("worker_cpu_s"),
    }
    usage = {f"{name}_cpu_share": v / span for name, v in parts.items() if v is not None}
    busy = delta("machine_busy_s")
    if busy is not None:
        usage["machine_busy_share"] = busy / span
        # The kernel, and anything else running on the machine (other jobs included).
        usage["rest_cpu_share"] = (busy - sum(v for v in parts.values() if v)) / span
    for name in ("api", "postgres", "redis"):
        if parts[name] is not None and requests:
            usage[f"{name}_cpu_ms_per_request"] = parts[name] / requests * MS
    sessions = delta("postgres_sessions")
    if sessions is not None:
        usage["postgres_sessions_opened"] = sessions
    return {name: round(value, 3) for name, value in usage.items()}


# -- generate: HTTP against direct -----------------------------------------------------------


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def direct_pipeline_process(model_dir: str, steps: int) -> int:
    """The direct baseline's process (`--direct-child`): load the pipeline with `load_pipeline`,
    then per line on stdin one `generate_images` call, answered on stdout as JSON with its time
    without and with the PNG encode, and the PNG. A process of its own, fresh like the worker:
    the same call inside this benchmark's process, after the load phase, ran ~5% slower."""
    import base64

    import torch

    from worker.erasure.base_model import load_pipeline
    from worker.erasure.generate import generate_images

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    pipe = load_pipeline(model_dir)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    print(json.dumps({"ready": True, "threads": torch.get_num_threads(), "size": size}), flush=True)
    for _line in sys.stdin:
        started = time.perf_counter()
        images = generate_images(pipe, PROMPT, seed=0, num_inference_steps=steps, num_images=1)
        generated = time.perf_counter()
        png = _png(images[0])
        done = time.perf_counter()
        answer = {
            "generate_s": generated - started,
            "with_png_s": done - started,
            "png": base64.b64encode(png).decode("ascii"),
        }
        print(json.dumps(answer), flush=True)
    return 0


class DirectPipeline:
    """The parent's handle on `direct_pipeline_process`, with the worker's thread count."""

    def __init__(self, stack: LoadStack, steps: int):
        import subprocess

        command = [sys.executable, "-m", "bench.api_load", "--direct-child", str(stack.model_dir)]
        command += ["--steps", str(steps)]
        self.log_path = stack.folder / "direct.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=Path(__file__).resolve().parents[1],
                env=stack.child_env(),  # OMP_NUM_THREADS as the worker has it
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            log = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"the direct pipeline process exited ({self.process.poll()}):\n{log}"
            )
        return json.loads(line)

    def call(self) -> tuple[float, float, bytes]:
        import base64

        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        answer = self._answer()
        return answer["generate_s"], answer["with_png_s"], base64.b64decode(answer["png"])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except Exception:
                self.process.kill()
                self.process.wait(10)


def _run_generate(stack: LoadStack, *, calls: int, steps: int, threads: int) -> dict:
    import httpx

    body = {
        "base_model": stack.base_model_name,
        "prompt": PROMPT,
        "seed": 0,
        "num_inference_steps": steps,
        "num_images": 1,
    }

    def http_call(client) -> tuple[float, float, bytes]:
        started = time.perf_counter()
        response = client.post("/generate", json=body)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"/generate answered {response.status_code}: {response.text[:300]}")
        return (
            elapsed,
            float(response.headers.get("X-Generation-Seconds") or "nan"),
            response.content,
        )

    http_s, worker_s, direct_s, direct_png_s = [], [], [], []
    direct = DirectPipeline(stack, steps)
    try:
        with httpx.Client(
            base_url=stack.base_url,
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=300.0,
        ) as client:
            _log("generate: warm-up (loads the pipeline in the worker, and in the direct process)")
            _, _, http_png = http_call(client)
            _, _, direct_png = direct.call()
            at_before, busy_before = time.perf_counter(), machine_busy_seconds()
            cpu_before = _own_cpu(stack) + direct.cpu_seconds()
            for round_ in range(calls):
                # Alternate the order, so neither side always runs right after the other.
                order = ("http", "direct") if round_ % 2 == 0 else ("direct", "http")
                for side in order:
                    if side == "http":
                        elapsed, on_worker, http_png = http_call(client)
                        http_s.append(elapsed)
                        worker_s.append(on_worker)
                    else:
                        generated, with_png, direct_png = direct.call()
                        direct_s.append(generated)
                        direct_png_s.append(with_png)
            span = (time.perf_counter() - at_before) * (os.cpu_count() or 1)
            busy = machine_busy_seconds()
            own = _own_cpu(stack) + direct.cpu_seconds() - cpu_before
    finally:
        direct.close()
    rest = None
    if busy is not None and busy_before is not None:
        rest = round((busy - busy_before - own) / span, 3)
    http_median = statistics.median(http_s)
    direct_png_median = statistics.median(direct_png_s)
    direct_median = statistics.median(direct_s)
    return {
        "calls": calls,
        "steps": steps,
        "image_size": direct.info["size"],
        "torch_threads": threads,
        "direct_process_torch_threads": direct.info["threads"],
        "http_median_s": round(http_median, 4),
        "http_p90_s": round(percentile(sorted(http_s), 90), 4),
        "worker_reported_median_s": round(statistics.median(worker_s), 4),
        "direct_median_s": round(direct_png_median, 4),
        "direct_p90_s": round(percentile(sorted(direct_png_s), 90), 4),
        "direct_without_png_median_s": round(direct_median, 4),
        "ratio": round(http_median / direct_png_median, 4),
        "ratio_without_png": round(http_median / direct_median, 4),
        "http_overhead_median_ms": round((http_median - direct_png_median) * MS, 1),
        # Per call, the HTTP time less what the worker itself reports (generation + PNG): the
        # API, broker and result backend's share, measured on the same call, so less noisy.
        "http_minus_worker_median_ms": round(
            statistics.median(h - w for h, w in zip(http_s, worker_s, strict=True)) * MS, 1
        ),
        "images_identical": http_png == direct_png,
        "direct_includes_png_encode": True,
        # Cores busy with anything but this benchmark's processes (Postgres and Redis count as
        # "rest" here), as a share of all cores: other jobs on the machine show up here.
        "rest_cpu_share": rest,
        "http_s": [round(v, 4) for v in http_s],
        "direct_s": [round(v, 4) for v in direct_png_s],
    }


def _own_cpu(stack: LoadStack) -> float:
    times = os.times()
    worker, api = stack.cpu_seconds("worker") or 0.0, stack.cpu_seconds("api") or 0.0
    return times.user + times.system + worker + api


# -- report ----------------------------------------------------------------------------------


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: dict) -> str:
    config = result["config"]
    lines = [
        f"API load on 127.0.0.1: {config['clients']} clients, {config['seconds']:g} s after "
        f"{config['warmup_s']:g} s warm-up, think {config['think_ms']:g} ms, uvicorn workers "
        f"{config['uvicorn_workers']}, {config['cpu_count']} cores",
        "(the load generator runs on the same cores as the API, Postgres, Redis and the worker)",
        f"load average before/after: {config['loadavg_before']} / {config.get('loadavg_after')}",
        "",
        f"{'kind':8} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>7} {'err rate':>9}",
    ]
    for kind in ("submit", "poll"):
        row = result.get(kind)
        if not row:
            continue
        lines.append(
            f"{kind:8} {row['count']:>7} {_fmt(row['throughput_rps']):>7} "
            f"{_fmt(row['p50_ms']):>8} {_fmt(row['p95_ms']):>8} {_fmt(row['p99_ms']):>8} "
            f"{_fmt(row['max_ms']):>8} {row['errors']:>7} {_fmt(row['error_rate'], '.4f'):>9}"
        )
    usage = result.get("usage")
    if usage:

        def pct(name: str) -> str:
            value = usage.get(name)
            return "-" if value is None else f"{value * 100:.0f}%"

        lines += [
            f"cores busy {pct('machine_busy_share')} of {config['cpu_count']}: API "
            f"{pct('api_cpu_share')}, Postgres {pct('postgres_cpu_share')}, Redis "
            f"{pct('redis_cpu_share')}, load generator {pct('load_generator_cpu_share')}, "
            f"rest (kernel, other jobs) {pct('rest_cpu_share')}",
            f"CPU per request (submit and poll together): API "
            f"{_fmt(usage.get('api_cpu_ms_per_request'), '.2f')} ms, Postgres "
            f"{_fmt(usage.get('postgres_cpu_ms_per_request'), '.2f')} ms, Redis "
            f"{_fmt(usage.get('redis_cpu_ms_per_request'), '.2f')} ms; Postgres sessions opened "
            f"{_fmt(usage.get('postgres_sessions_opened'), '.0f')}",
        ]
    submit, poll = result.get("submit"), result.get("poll")
    if submit and poll and not config["think_ms"]:
        total = (submit["throughput_rps"] or 0) + (poll["throughput_rps"] or 0)
        lines.append(
            f"closed loop: every client always waits on a request, so the mean latency is "
            f"clients / throughput = {config['clients']} / {total:.0f} req/s = "
            f"{config['clients'] / total * MS if total else float('nan'):.0f} ms"
        )
    for sample in result.get("error_samples") or []:
        lines.append(f"  error: {sample}")
    generate = result.get("generate")
    if generate:
        lines += [
            "",
            f"generate: tiny model, {generate['steps']} steps, {generate['image_size']}px, "
            f"1 image, seed 0, torch threads {generate['torch_threads']}, {generate['calls']} "
            "calls each, alternating",
            f"  POST /generate        median {generate['http_median_s'] * MS:8.1f} ms   "
            f"p90 {generate['http_p90_s'] * MS:8.1f} ms   (worker-reported "
            f"{generate['worker_reported_median_s'] * MS:.1f} ms; HTTP less worker, per call: "
            f"{generate['http_minus_worker_median_ms']:.1f} ms)",
            f"  direct + PNG encode   median {generate['direct_median_s'] * MS:8.1f} ms   "
            f"p90 {generate['direct_p90_s'] * MS:8.1f} ms",
            f"  direct, no PNG        median "
            f"{generate['direct_without_png_median_s'] * MS:8.1f} ms",
            f"  ratio HTTP/direct     {generate['ratio']:.3f}  (without PNG in the baseline: "
            f"{generate['ratio_without_png']:.3f}); same image bytes: "
            f"{generate['images_identical']}",
            f"  cores busy with other work meanwhile: {_fmt(generate['rest_cpu_share'], '.0%')}",
        ]
    targets = result.get("targets")
    if targets:
        lines += ["", "targets:"]
        lines += [f"  {name}: {'met' if met else 'MISSED'}" for name, met in targets.items()]
    return "\n".join(lines)


def _targets(result: dict, clients: int, think_ms: float) -> dict:
    targets = {}
    submit, poll = result.get("submit"), result.get("poll")
    if submit:
        label = f"submit p99 < 50 ms at {clients} clients, think {think_ms:g} ms"
        targets[label] = (submit["p99_ms"] or 1e9) < 50.0
        targets["no errors"] = submit["errors"] == 0 and (poll or {}).get("errors", 0) == 0
    if result.get("generate"):
        targets["/generate within 1.10x of direct"] = result["generate"]["ratio"] <= 1.10
    return targets


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed load (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="untimed load first (default 3)")
    p.add_argument(
        "--think-ms",
        type=float,
        default=1000.0,
        help="pause before each request of a client (default 1000: a dashboard or a pipeline "
        "polling its job once a second; 0: closed loop, the saturation case)",
    )
    p.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="raw",
        help="raw: a minimal keep-alive HTTP/1.1 client on asyncio streams (default, cheapest); "
        "httpx: one httpx.AsyncClient per simulated client",
    )
    p.add_argument(
        "--uvicorn-workers", type=int, default=2, help="API processes (default 2, as `mace api`)"
    )
    p.add_argument("--generate-calls", type=int, default=20, help="K calls per side (default 20)")
    p.add_argument("--steps", type=int, default=25, help="inference steps (default 25)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads of the worker (OMP_NUM_THREADS) and of the direct call (default 1)",
    )
    p.add_argument(
        "--app",
        default="app.api.main:create_app",
        help="the uvicorn application factory (default app.api.main:create_app); another one "
        "on PYTHONPATH lets a candidate fix be measured without touching the service",
    )
    p.add_argument("--redis-db", type=int, default=11, help="Redis db of this run (flushed)")
    p.add_argument("--skip-load", action="store_true", help="only the generate comparison")
    p.add_argument("--skip-generate", action="store_true", help="only the submit/poll load")
    p.add_argument("--direct-child", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--txt", type=Path, help="write the table here too")
    args = p.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.generate_calls < 1:
        p.error("--clients and --generate-calls must be >= 1, --seconds > 0")
    if args.seconds > 600 or args.clients > 1000:
        p.error("keep runs bounded: --seconds <= 600, --clients <= 1000")
    return args


def _terminate_as_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.direct_child:
        return direct_pipeline_process(args.direct_child, args.steps)
    # Before torch is imported (building the tiny model): this process, the worker and the direct
    # pipeline's process all use this many threads.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    config = {
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "think_ms": args.think_ms,
        "uvicorn_workers": args.uvicorn_workers,
        "app": args.app,
        "torch_threads": args.torch_threads,
        "generate_calls": args.generate_calls,
        "steps": args.steps,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "stack": "uvicorn (app.api.main:create_app) + Postgres + Redis broker/results + "
        "file:// artifacts + 1 Celery worker (-Q generate, solo pool), all on 127.0.0.1",
        "direct_baseline": "load_pipeline + generate_images (+ PNG encode) in a process of its "
        "own, alternating call by call with POST /generate",
        "load_generator": f"asyncio, {args.client} client, one keep-alive connection per "
        "simulated client, in this process, on the same machine",
        "submit_body": "unique concept and seed per request; every 4th with an Idempotency-Key",
        "polls_per_submit": "1 and 2 alternately",
    }
    stack = LoadStack(
        postgres_admin_url=POSTGRES_ADMIN_URL,
        redis_db=args.redis_db,
        uvicorn_workers=args.uvicorn_workers,
        torch_threads=args.torch_threads,
        app_factory=args.app,
    )
    result: dict = {"config": config}
    try:
        stack.start(log=_log)
        if not args.skip_load:
            _log(f"submit/poll: {args.clients} clients, {args.warmup:g}+{args.seconds:g} s")
            load = asyncio.run(
                _run_load(
                    stack,
                    clients=args.clients,
                    seconds=args.seconds,
                    warmup=args.warmup,
                    think_s=args.think_ms / MS,
                    client_kind=args.client,
                )
            )
            result.update(load)
        if not args.skip_generate:
            _log(f"generate: {args.generate_calls} HTTP and {args.generate_calls} direct calls")
            result["generate"] = _run_generate(
                stack, calls=args.generate_calls, steps=args.steps, threads=args.torch_threads
            )
    except KeyboardInterrupt:
        _log("interrupted; tearing down")
        return 130
    finally:
        stack.stop()
        _log("torn down: processes stopped, database dropped, redis db flushed")
    config["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    result["targets"] = _targets(result, args.clients, args.think_ms)
    report = format_report(result)
    print(report, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.txt:
        args.txt.parent.mkdir(parents=True, exist_ok=True)
        args.txt.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
