"""One command for a machine with one GPU: the speed of each GPU path against its goal, then the
report's 9x9 pipeline (collect, train AD at several contexts, evaluate on held-out test tasks, draw
the figures) into one new folder, within a time budget (9 minutes; not yet measured on a GPU).

    python benchmarks/gpu_check.py                    # one H100/H200, into data/gpu_check/
    python benchmarks/gpu_check.py --smoke            # the same code paths, tiny, on the CPU (a test runs it)

Every stage calls the project's scripts through their `main(args)`, exactly as their command lines
do, from inside the output folder (so TensorBoard's runs/ lands there too). The speeds:
- SAC: agent-steps per second of `sac_collect.py` over the whole collection, and the time projected
  for 800 runs x 50,000 steps (goal: 2 minutes);
- AD training: iterations per second of ad_train's training iteration at batch 64, context 500, the
  default model (goal: 250), and the bf16 model FLOP utilisation at batch 256 against a bf16 matrix
  multiply measured on the same GPU;
- evaluation: the seconds `ad_eval.py` takes for every test task x 17,500 steps at context 500
  (goal: 60 s for the 632 held-out tasks of 9x9).
The results land in <out>/report.md and <out>/summary.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the scripts live in the repo root
import ad_eval as E  # noqa: E402
import ad_train as A  # noqa: E402
import docs.make_figures as M  # noqa: E402
import keydoor_env as K  # noqa: E402
import sac_collect as S  # noqa: E402


@dataclass
class Args:
    out: str = "data/gpu_check"
    """output folder (new or empty): datasets, checkpoints, evaluation files, figures, TensorBoard runs, report"""
    smoke: bool = False
    """run every stage tiny on the CPU (seconds): the same code paths, no meaningful numbers"""
    budget_s: float = 540.0
    """wall-clock budget of the whole check; AD's training length is fitted to what is left"""
    contexts: tuple[int, ...] | None = None
    """AD contexts trained and evaluated, the first with the most training time (default: 500 50 10; smoke: 40 20 10)"""
    arrival_token: bool = True
    """train AD with the arrival cell in its tokens (the project's best-known 9x9 setting)"""
    seed: int = 1
    """seed of every stage"""


@dataclass
class Scale:
    """Sizes of one check: the GPU scale, or the smoke scale of the same code paths."""

    size: int = 9
    runs: int = 800
    steps: int = 8_000
    model: tuple | None = None  # n_layer, n_head, n_embd, d_ff; None: ad_train's defaults
    contexts: tuple = (500, 50, 10)
    batches: tuple = (64, 256)  # training batch (ad_train's default), and the batch of the MFU measurement
    iterations: tuple = (1_000, 6_000)  # fewest and most iterations of the longest context
    speed_context: int = 500
    speed_iterations: int = 50
    eval_envs: int = 612  # every test task of 9x9 (the other 20 held-out tasks are the validation set)
    eval_steps: int = 17_500


SMOKE = Scale(
    size=5,
    runs=16,
    steps=1_200,
    model=(1, 2, 16, 32),
    contexts=(40, 20, 10),
    batches=(8, 16),
    iterations=(4, 8),
    speed_context=40,
    speed_iterations=3,
    eval_envs=6,
    eval_steps=200,
)


@contextlib.contextmanager
def inside(folder: str):
    """Run a stage from inside the output folder: its runs/ (TensorBoard) goes there too."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


def timed(function, *args):
    started = time.time()
    result = function(*args)
    return result, time.time() - started


def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of a large bf16 matrix multiply on the GPU (float32 on the CPU): the MFU's denominator."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    count, started = 0, time.time()
    while time.time() - started < seconds:  # long enough for a steady rate, in batches of 10 launches
        for _ in range(10):
            a @ b
        synchronize(device)
        count += 10
    return 2 * n**3 * count / (time.time() - started)


def model_sizes(scale: Scale) -> dict:
    """n_layer, n_head, n_embd, d_ff: the scale's, or ad_train.py's defaults."""
    names, defaults = ("n_layer", "n_head", "n_embd", "d_ff"), A.Args()
    return dict(zip(names, scale.model or [getattr(defaults, name) for name in names]))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_speed(runs: list[dict], meta: dict, scale: Scale, batch: int, compile: bool, device: torch.device) -> dict:
    """Iterations per second of ad_train's training iteration (windows gathered on the device, bf16
    autocast on CUDA, fused AdamW, clipping) at `scale.speed_context`, compiled as `--compile` does."""
    defaults, sizes = A.Args(), model_sizes(scale)
    config = A.ModelConfig(
        obs_dim=meta["obs_dim"], context=scale.speed_context, dropout=defaults.dropout, arrival=False, **sizes
    )
    model = A.DecisionModel(config).to(device)
    optimizer = model.optimizer(defaults.lr, defaults.weight_decay, device)
    torch._dynamo.reset()  # a fresh compile cache per measurement: no recompile limit, no shapes carried over
    step_model = torch.compile(model, mode="reduce-overhead", dynamic=False) if compile else model
    sampler = A.WindowSampler(runs, scale.speed_context, meta["obs_scale"], device)
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def iteration():  # the body of ad_train.main's loop
        loss, _ = A.loss_and_accuracy(step_model, *sampler.sample(batch, generator), autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.max_grad_norm)
        optimizer.step()

    for _ in range(3 if not compile else 10):  # warm-up (and compilation)
        iteration()
    synchronize(device)
    started = time.time()
    for _ in range(scale.speed_iterations):
        iteration()
    synchronize(device)
    per_second = scale.speed_iterations / (time.time() - started)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pos."))
    flops_per_token = (
        6 * params + 6 * sizes["n_layer"] * sizes["n_embd"] * scale.speed_context
    )  # nanoGPT's, causal half
    return {
        "batch": batch,
        "compile": compile,
        "iterations_per_s": per_second,
        "model_flops_per_s": per_second * batch * scale.speed_context * flops_per_token,
    }


def main(args: Args) -> dict:
    scale = SMOKE if args.smoke else Scale()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if not args.smoke and device.type != "cuda":
        raise ValueError("no CUDA device: this check is for one GPU; --smoke runs its code paths on the CPU")
    contexts = args.contexts or scale.contexts
    if not contexts or min(contexts) < 1 or max(contexts) > scale.steps:
        raise ValueError(f"--contexts must lie in 1..{scale.steps} (the histories' length), got {contexts}")
    if os.path.isdir(args.out) and os.listdir(args.out):  # a rerun into it would resume, not measure
        raise ValueError(f"{args.out} is not empty: pass a new --out (a rerun there would resume, not measure)")
    K.check_writable(args.out)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "data")
    started, stages, speeds, results = time.time(), {}, {}, []
    print(f"gpu_check: {'smoke scale on the CPU' if args.smoke else torch.cuda.get_device_name()} -> {out}")

    # 1. collect the Nx1 dataset (Light, read Dark by AD), timing the SAC population
    with inside(out):
        collect = S.Args(
            style="nx1",
            light=True,
            size=scale.size,
            num_runs=scale.runs,
            steps=scale.steps,
            group_size=scale.runs,
            seed=args.seed,
            data_dir=data,
            progress=False,
        )
        summary, stages["collect"] = timed(S.main, collect)
    rate = scale.runs * scale.steps / stages["collect"]
    speeds["sac"] = {"agent_steps_per_s": rate, "projected_800x50k_s": 800 * 50_000 / rate, "goal_s": 120}
    print(f"collect: {stages['collect']:.0f} s, {rate:,.0f} agent-steps/s; {summary}")

    # 2. training speed of the default model at context 500: batch 64 (eager and compiled), batch 256 for MFU
    runs, meta = A.load_dataset(os.path.join(data, "nx1-light"), light_obs=False, min_steps=scale.speed_context)
    peak = matmul_peak(device)
    t0 = time.time()
    batch, mfu_batch = scale.batches
    measured, compiled = [training_speed(runs, meta, scale, batch, False, device)], device.type == "cuda"
    if compiled:  # CUDA graphs through torch.compile; if they fail here, the pipeline trains eagerly
        try:
            measured += [training_speed(runs, meta, scale, size, True, device) for size in (batch, mfu_batch)]
        except Exception as e:  # noqa: BLE001  (any compiler error: report it and go on)
            compiled, speeds["compile_error"] = False, f"{type(e).__name__}: {e}"[:500]
            print(f"training: torch.compile failed, eager from here on ({speeds['compile_error'][:200]})")
    if not compiled and device.type == "cuda":
        measured.append(training_speed(runs, meta, scale, mfu_batch, False, device))
    for row in measured:
        row["mfu"] = row["model_flops_per_s"] / peak
    stages["training_speed"] = time.time() - t0
    speeds["train"] = {"rows": measured, "peak_flops": peak, "goal_iterations_per_s": 250}
    best = max((row for row in measured if row["batch"] == batch), key=lambda row: row["iterations_per_s"])
    compiled = compiled and best["compile"]  # train compiled only where compiling paid
    for row in measured:
        print(
            f"training: batch {row['batch']}, {'compiled' if row['compile'] else 'eager'}: "
            f"{row['iterations_per_s']:.0f} iterations/s, MFU {100 * row['mfu']:.1f}%"
        )

    # 3. train AD at each context: the longest gets the most of the time left
    left = args.budget_s - (time.time() - started)
    checkpoints = []
    for i, context in enumerate(contexts):
        share = 0.25 if i == 0 else 0.06  # of the time left; the rest is evaluation and figures
        # only the longest context is compiled: a compilation costs tens of seconds, the short ones train fast eagerly
        speed = best if i == 0 else measured[0]  # measured[0]: eager, batch 64
        iterations = int(np.clip(share * left * speed["iterations_per_s"], *scale.iterations))
        train = A.Args(
            context=context,
            iterations=iterations,
            batch_size=batch,
            lr=6e-4,
            warmup_iterations=min(300, iterations),
            arrival_token=args.arrival_token,
            **model_sizes(scale),
            eval_every=0,
            save_every=iterations,
            val_every=max(1, iterations // 4),
            log_every=max(1, iterations // 20),
            compile=compiled and i == 0,
            data_dir=data,
            seed=args.seed,
            exp_name="ad-gpu",
            progress=False,
            cuda=device.type == "cuda",
        )
        torch._dynamo.reset()
        with inside(out):
            result, stages[f"train_ctx{context}"] = timed(A.main, train)
        checkpoints.append(result["checkpoint"])
        per_second, val_loss = result["iterations_per_second"], result.get("val_loss", float("nan"))
        speeds[f"ad_train_ctx{context}"] = {
            "iterations": iterations,
            "iterations_per_s": per_second,
            "val_loss": val_loss,
        }
        print(
            f"train ctx {context}: {iterations} iterations in {stages[f'train_ctx{context}']:.0f} s "
            f"({per_second:.0f}/s in ad_train.py's loop), val loss {val_loss:.3f}"
        )

    # 4. evaluate every model on the test tasks, 17,500 steps each, timing the longest context
    for context, checkpoint in zip(contexts, checkpoints):
        evaluate = E.Args(
            checkpoints=(checkpoint,),
            split="test",
            num_envs=scale.eval_envs,
            steps=scale.eval_steps,
            seed=args.seed,
            source_runs=20,
            progress=False,
            cuda=device.type == "cuda",
        )
        with inside(out):
            (row,), stages[f"eval_ctx{context}"] = timed(E.main, evaluate)
        results.append({"context": context, "eval_file": row.pop("out"), **row})
    speeds["eval"] = {
        "seconds": stages[f"eval_ctx{contexts[0]}"],
        "tasks": scale.eval_envs,
        "steps": scale.eval_steps,
        "context": contexts[0],
        "goal_s_for_632": 60,
    }

    # 5. figures: the source population (Figure 2) and AD over contexts (Figures 3 and 4), with a table
    evals = [result["eval_file"] for result in results]
    with inside(out):
        M.sac(
            M.Sac(
                nx1=os.path.join(data, "nx1-light"),
                onexn_light="",
                onexn_dark="",
                bin=max(50, scale.steps // 40),
                out=os.path.join(out, "fig2_sac"),
            )
        )
        M.ad(M.Ad(fig3=[evals[0], evals[-1]], fig4=evals, source=os.path.join(data, "nx1-light"), out_dir=out))
        M.table(M.Table(evals=evals))
    stages["total"] = time.time() - started
    report = write_report(args, scale, speeds, stages, results, out)
    print(report)
    return {"speeds": speeds, "stages": stages, "results": results}


def write_report(args: Args, scale: Scale, speeds: dict, stages: dict, results: list[dict], out: str) -> str:
    """report.md (what a person reads) and summary.json (the same numbers for a program)."""

    def verdict(ok: bool) -> str:
        return "meets the goal" if ok else "misses the goal"

    sac, train, evaluation = speeds["sac"], speeds["train"], speeds["eval"]
    eval_632 = evaluation["seconds"] * 632 / evaluation["tasks"]
    best = max(row["iterations_per_s"] for row in train["rows"] if row["batch"] == scale.batches[0])
    lines = [
        f"# gpu_check ({'smoke, CPU' if args.smoke else torch.cuda.get_device_name()}), {scale.size}x{scale.size}",
        "",
        "| speed | measured | goal | |",
        "|---|---|---|---|",
        f"| SAC, {scale.runs} runs x {scale.steps:,} steps | {sac['agent_steps_per_s']:,.0f} agent-steps/s; "
        f"800 x 50k projected {sac['projected_800x50k_s']:.0f} s | {sac['goal_s']} s | "
        f"{verdict(sac['projected_800x50k_s'] <= sac['goal_s'])} |",
        f"| AD training, batch {scale.batches[0]}, context {scale.speed_context} | {best:.0f} iterations/s | "
        f"{train['goal_iterations_per_s']} | {verdict(best >= train['goal_iterations_per_s'])} |",
    ]
    lines += [
        f"| AD training, batch {row['batch']}, {'compiled' if row['compile'] else 'eager'} | "
        f"{row['iterations_per_s']:.0f} iterations/s, MFU {100 * row['mfu']:.1f}% | | |"
        for row in train["rows"]
    ]
    lines += [
        f"| `ad_train.py` at context {name[len('ad_train_ctx') :]}, {row['iterations']} iterations | "
        f"{row['iterations_per_s']:.0f} iterations/s in its own loop | | |"
        for name, row in speeds.items()
        if name.startswith("ad_train_ctx")
    ]
    lines += [
        f"| evaluation, {evaluation['tasks']} tasks x {evaluation['steps']:,} steps, "
        f"context {evaluation['context']} | {evaluation['seconds']:.0f} s ({eval_632:.0f} s scaled to 632 tasks) | "
        f"{evaluation['goal_s_for_632']} s | "
        f"{verdict(eval_632 <= evaluation['goal_s_for_632'])} |",
        f"| the whole check | {stages['total']:.0f} s | {args.budget_s:.0f} s | "
        f"{verdict(stages['total'] <= args.budget_s)} |",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in stages.items()]
    lines += [
        "",
        "| AD context | first 500 steps | last 5 episodes | envs reaching MA(10) 1.8 | "
        "(test tasks, 95% CI over tasks) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['context']} | {r['first500']:.2f} ± {r['first500_ci']:.2f} | "
        f"{r['last5']:.2f} ± {r['last5_ci']:.2f} | {r['reached']}/{r['envs']} | |"
        for r in results
    ]
    report = "\n".join(lines) + "\n"
    K.atomic_write(os.path.join(out, "report.md"), lambda f: f.write(report.encode()))
    summary = {"args": asdict(args), "scale": asdict(scale), "speeds": speeds, "stages": stages, "results": results}
    K.atomic_write(os.path.join(out, "summary.json"), lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return report


if __name__ == "__main__":
    K.run_cli(main, Args)
