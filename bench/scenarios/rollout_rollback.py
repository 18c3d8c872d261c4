"""How long an automatic rollback takes from the first bad answer, for a slow, a wrong and a failing version.

    python -m bench.scenarios.rollout_rollback [--rounds 3] [--window 5s] [--concurrency 8] [--out results.json]

One ``surge serve`` pinned to CPU 0 serves model ``m`` (``tests.models.write_rollout_repository``: Python
backend, version 1 ``y = x + 1``, every request pinned to it); version 2 is bad in one way. A closed loop of
``--concurrency`` requests from this process (our ``AsyncInferenceClient``, no retries, each request its own
routing key, standard-normal inputs), pinned to CPU 1, runs throughout. After 1 s of load the script starts a
rollout with the gates of the README's example (``p99<1.2x``, ``errors<0.5%``, ``agreement>99%``) and
``--window``, and waits for the decision. Cases:

- ``slow-shadow``, ``wrong-shadow``: steps ``shadow,5,25,50,100``; the bad answers are the shadow's, which no
  client sees, so "first bad answer" is the moment the shadow route was set (the audit file's ``start``
  decision; the first mirrored request follows within milliseconds under this load).
- ``slow-split``, ``failing-split``: steps ``20,50,100`` (no shadow): the first bad answer is the first answer
  version 2 gave a client (slow) or the first request that failed (failing).

Reported per case (medians over rounds, and every round): seconds from the first bad answer to the rollback
(the audit file's ``rollback`` time: server and client share the machine's clock), the failed requests and
the answers version 2 gave. Times are wall clock on a shared machine; the controller looks every
``window / 20`` seconds (at least 0.2 s), and the first look of a step only marks its start.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from surge.clients import AsyncInferenceClient, InferenceServerError, SurgeClient
from tests.models import write_rollout_repository
from tests.process import SurgeProcess

GATES = ["p99<1.2x", "errors<0.5%", "agreement>99%"]
CASES = {"slow-shadow": ("slow", "shadow,5,25,50,100"), "wrong-shadow": ("wrong", "shadow,5,25,50,100"),
         "slow-split": ("slow", "20,50,100"), "failing-split": ("failing", "20,50,100")}


async def one(case: str, window: str, concurrency: int, workdir: Path) -> dict:
    kind, steps = CASES[case]
    root = write_rollout_repository(workdir / "repository", kind)
    server = SurgeProcess(root, workdir / "server", "--log-level", "warning")
    server.start()
    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(server.proc.pid)], check=True, capture_output=True)  # type: ignore[union-attr]
    failures: list[float] = []
    v2_answers: list[float] = []
    stop = asyncio.Event()
    ids = itertools.count()
    rng = np.random.default_rng(0)
    try:
        async with AsyncInferenceClient(server.address, timeout_s=30.0, retries=0) as client:
            async def worker() -> None:
                while not stop.is_set():
                    x = rng.standard_normal((1, 4)).astype(np.float32)
                    try:
                        result = await client.infer("m", {"x": x}, request_id=f"{case}-{next(ids)}")
                    except InferenceServerError:
                        failures.append(time.time())
                        continue
                    if result.model_version == "2":
                        v2_answers.append(time.time())

            tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
            await asyncio.sleep(1.0)
            with SurgeClient(server.address) as admin:
                await asyncio.to_thread(admin.start_rollout, "m", 2, steps=steps, window=window, gates=GATES)
                deadline = time.monotonic() + 120
                while (r := await asyncio.to_thread(admin.rollout, "m")).state == "running" and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        server.stop()
    audit = [json.loads(line) for line in (root / ".surge" / "rollout-audit.jsonl").read_text().splitlines()]
    started = next(e["time"] for e in audit if e["decision"] == "start")
    rolled = next((e for e in audit if e["decision"] == "rollback"), None)
    first_bad = started if case.endswith("shadow") else min(failures) if kind == "failing" and failures else min(v2_answers, default=started)
    return {
        "case": case, "state": r.state, "reason": r.reason, "step": r.steps[r.step],
        "seconds_from_first_bad_answer": round(rolled["time"] - first_bad, 3) if rolled else None,
        "seconds_from_start": round(rolled["time"] - started, 3) if rolled else None,
        "failed_requests": len(failures), "answers_by_version_2": len(v2_answers),
        "failures_after_rollback": sum(t > rolled["time"] + 0.05 for t in failures) if rolled else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", default="5s")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    rounds: dict[str, list[dict]] = {c: [] for c in args.cases.split(",")}
    for i in range(args.rounds):
        for case in rounds:  # cases interleaved round by round
            with tempfile.TemporaryDirectory() as tmp:
                result = asyncio.run(one(case, args.window, args.concurrency, Path(tmp)))
            rounds[case].append(result)
            print(f"round {i + 1} {case}: {result}", file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d')} commit {commit}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; window {args.window}, "
          f"{args.concurrency} requests in flight, gates {' '.join(GATES)}")
    print("| case | rolled back at step | s from first bad answer (median; rounds) | failed requests (rounds) | answers by v2 (rounds) |")
    print("|---|---|---|---|---|")
    for case, results in rounds.items():
        secs = [r["seconds_from_first_bad_answer"] for r in results if r["seconds_from_first_bad_answer"] is not None]
        med = f"{statistics.median(secs):.2f}" if secs else "-"
        steps = ",".join(sorted({r["step"] for r in results if r["state"] == "rolled_back"})) or "not rolled back"
        print(f"| {case} | {steps} | {med} ({', '.join(f'{s:.2f}' for s in secs)}) | {', '.join(str(r['failed_requests']) for r in results)} "
              f"| {', '.join(str(r['answers_by_version_2']) for r in results)} |")
    if args.out:
        args.out.write_text(json.dumps({"window": args.window, "concurrency": args.concurrency, "gates": GATES, "commit": commit, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
