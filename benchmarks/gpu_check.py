"""One command for a machine with one GPU: the speed of each GPU path against its goal, then the
report's 9x9 pipeline (collect, train AD at several contexts, evaluate on held-out test tasks, draw
the figures) into one new folder, within a time budget (9 minutes; not yet measured on a GPU).

    python benchmarks/gpu_check.py                    # one H100/H200, into data/gpu_check/
    python benchmarks/gpu_check.py --smoke            # the same code paths, tiny, on the CPU (a test runs it)

Every stage calls the project's scripts through their `main(args)`, exactly as their command lines
do, from inside the output folder (so TensorBoard's runs/ lands there too). Each speed is measured on
what the check runs, and nothing is extrapolated:
- SAC: agent-steps per second of `sac_collect.py` over the whole collection of 800 runs x 8,000 steps.
  Goal: 333,333 agent-steps/s, the rate that would collect the full 800 x 50,000-step dataset in 2
  minutes (stated as a rate: the check does not collect that dataset);
- AD training: iterations per second of ad_train's training iteration at batch 64, context 500, the
  report's model (4 x 128) with the pipeline's tokens (`--arrival-token` as the pipeline trains), eager and
  compiled (goal: 250), and the bf16 model FLOP utilisation at batch 256 against a bf16 matrix
  multiply measured on the same GPU;
- evaluation: the seconds `ad_eval.py` takes for all 612 test tasks of 9x9 x 17,500 steps at context
  500, run as one batch (goal: 60 s).
`--smoke` runs the same functions on the CPU, `torch.compile` included (inductor, the default mode:
CUDA graphs need a GPU), at sizes where no goal applies. The results land in <out>/report.md and
<out>/summary.json.
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
    """run every stage tiny on the CPU (seconds; compiling adds about 30 s the first time): the same code paths,
    no meaningful numbers"""
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
    model: tuple = (4, 4, 128, 768)  # n_layer, n_head, n_embd, d_ff: the report's (ad_train's defaults are 3 x 64)
    contexts: tuple = (500, 50, 10)
    batches: tuple = (64, 256)  # training batch (the report's), and the batch of the MFU measurement
    iterations: tuple = (1_000, 6_000)  # fewest and most iterations of the longest context
    speed_context: int = 500
    speed_iterations: int = 50
    eval_envs: int | None = None  # None: every test task of the grid (612 at 9x9)
    eval_steps: int = 17_500
    figure_bin: int = 500  # env steps per point of the AD figures
    goals: bool = True  # the goals are for this scale; the smoke scale states none
    compile_always: bool = False  # train the longest context compiled whenever compiling works, not only where it paid


SMOKE = Scale(
    size=5,
    runs=8,
    steps=600,  # past sac_collect's 512 random warm-up steps, so the SAC update runs too
    model=(1, 2, 16, 32),
    contexts=(40, 20, 10),
    batches=(8, 8),  # one batch: each compiled shape costs a compilation (about 30 s on 2 CPU cores)
    iterations=(4, 8),
    speed_context=40,
    speed_iterations=2,
    eval_envs=6,
    eval_steps=1_000,  # enough for the first and the last 500 steps
    figure_bin=100,
    goals=False,
    compile_always=True,  # the smoke runs ad_train.py's --compile path, whatever it gains on the CPU
)

# The goals on one GPU (an H100 or H200)
SAC_GOAL_AGENT_STEPS_PER_S = 800 * 50_000 / 120  # the full Nx1 dataset, 800 runs x 50,000 steps, in 2 minutes
TRAIN_GOAL_ITERATIONS_PER_S = 250  # batch 64, context 500, the report's model
EVAL_GOAL_S = 60  # every 9x9 test task x 17,500 steps at context 500


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
    """`function(*args)` and the seconds it took."""
    started = time.time()
    result = function(*args)
    return result, time.time() - started


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a clock read after it measures that work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of a large bf16 matrix multiply on the GPU (float32 on the CPU): the MFU's denominator."""
    if device.type == "cuda":
        n = 8192
        dtype = torch.bfloat16
    else:
        n = 512
        dtype = torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    count = 0
    started = time.time()
    while time.time() - started < seconds:  # long enough for a steady rate, in batches of 10 launches
        for _ in range(10):
            a @ b
        synchronize(device)
        count += 10
    return 2 * n**3 * count / (time.time() - started)


def model_sizes(scale: Scale) -> dict:
    """n_layer, n_head, n_embd, d_ff: the scale's."""
    return dict(zip(("n_layer", "n_head", "n_embd", "d_ff"), scale.model, strict=True))


# --- The stages
def collect(args: Args, scale: Scale, out: str, data: str) -> dict:
    """The Nx1 dataset (Light, read Dark by AD), timing the SAC population over the whole collection."""
    collect_args = S.Args(
        style="nx1",
        light=True,
        size=scale.size,
        num_runs=scale.runs,
        steps=scale.steps,
        group_size=scale.runs,  # the whole population in one group, as one GPU holds it
        seed=args.seed,
        data_dir=data,
        progress=False,
    )
    with inside(out):
        summary, seconds = timed(S.main, collect_args)
    rate = scale.runs * scale.steps / seconds
    print(f"collect: {seconds:.0f} s, {rate:,.0f} agent-steps/s; {summary}")
    return {
        "seconds": seconds,
        "runs": scale.runs,
        "steps": scale.steps,
        "agent_steps_per_s": rate,
        "goal_agent_steps_per_s": SAC_GOAL_AGENT_STEPS_PER_S if scale.goals else None,
    }


def training_speed(
    sampler: A.WindowSampler,
    config: A.ModelConfig,
    scale: Scale,
    batch: int,
    compile: bool,
    device: torch.device,
) -> dict:
    """Iterations per second of ad_train's training iteration (windows gathered on the device, bf16 autocast on
    CUDA, fused AdamW on CUDA, clipping) on the model `config`, compiled as `--compile` does."""
    defaults = A.Args()
    model = A.DecisionModel(config).to(device)
    optimizer = model.optimizer(defaults.lr, defaults.weight_decay, device)
    torch._dynamo.reset()  # a fresh compile cache per measurement: no recompile limit, no shapes carried over
    step_model = A.training_model(model, compile, device, world_size=1)  # compiled as ad_train.py compiles
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def iteration():  # the body of ad_train.main's loop (but for the learning rate's schedule)
        inputs, targets = sampler.sample(batch, generator)
        loss, _ = A.loss_and_accuracy(step_model, inputs, targets, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup = 10 if compile else 3  # compiling, and CUDA graphs' recording, take the first calls
    for _ in range(warmup):
        iteration()
    synchronize(device)
    started = time.time()
    for _ in range(scale.speed_iterations):
        iteration()
    synchronize(device)
    per_second = scale.speed_iterations / (time.time() - started)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pos."))
    # nanoGPT's estimate: 6 FLOPs per parameter and token, plus attention over the causal half of the context
    flops_per_token = 6 * params + 6 * config.n_layer * config.n_embd * config.context
    return {
        "batch": batch,
        "compile": compile,
        "iterations_per_s": per_second,
        "model_flops_per_s": per_second * batch * config.context * flops_per_token,
    }


def measure_training(args: Args, scale: Scale, data: str, device: torch.device) -> dict:
    """AD training speed on the pipeline's model and tokens: eager at the training batch, then compiled at the
    training and MFU batches; if compiling fails, eager at the MFU batch, and the pipeline trains eagerly."""
    runs, meta = A.load_dataset(
        os.path.join(data, "nx1-light"),
        light_obs=False,
        min_steps=scale.speed_context,
        arrival=args.arrival_token,
    )
    config = A.ModelConfig(
        obs_dim=meta["obs_dim"],
        context=scale.speed_context,
        dropout=A.Args().dropout,
        arrival=args.arrival_token,
        **model_sizes(scale),
    )
    sampler = A.WindowSampler(runs, scale.speed_context, meta["obs_scale"], device)
    peak = matmul_peak(device)
    batch = scale.batches[0]
    mfu_batch = scale.batches[1]
    rows = [training_speed(sampler, config, scale, batch, False, device)]
    compile_error = None
    try:  # CUDA graphs through torch.compile on a GPU, inductor's kernels on the CPU
        for size in sorted({batch, mfu_batch}):
            rows.append(training_speed(sampler, config, scale, size, True, device))
    except Exception as e:  # noqa: BLE001  (any compiler error: report it and go on eagerly)
        compile_error = f"{type(e).__name__}: {e}"[:500]
        print(f"training: torch.compile failed, eager from here on ({compile_error[:200]})")
        rows = [row for row in rows if not row["compile"]]
        if mfu_batch != batch:
            rows.append(training_speed(sampler, config, scale, mfu_batch, False, device))
    for row in rows:
        row["mfu"] = row["model_flops_per_s"] / peak
        print(
            f"training: batch {row['batch']}, {'compiled' if row['compile'] else 'eager'}: "
            f"{row['iterations_per_s']:.0f} iterations/s, MFU {100 * row['mfu']:.1f}%"
        )
    at_batch = [row for row in rows if row["batch"] == batch]
    best = max(at_batch, key=lambda row: row["iterations_per_s"])
    return {
        "rows": rows,
        "peak_flops": peak,
        "arrival_token": args.arrival_token,
        "context": scale.speed_context,
        "best": best,  # the pipeline compiles only where compiling paid
        "eager": at_batch[0],
        "compiled": compile_error is None,
        "compile_error": compile_error,
        "goal_iterations_per_s": TRAIN_GOAL_ITERATIONS_PER_S if scale.goals else None,
    }


def train(args: Args, scale: Scale, contexts, speed: dict, left_s: float, out: str, data: str, device) -> dict:
    """AD at each context; the longest gets the most of the time left, and only it is compiled where compiling paid
    (a compilation costs tens of seconds, the short contexts train fast eagerly; the smoke compiles it whenever
    compiling works, to run that path). Returns per context its checkpoint and speed."""
    trained = {}
    for i, context in enumerate(contexts):
        share = 0.25 if i == 0 else 0.06  # of the time left; the rest is evaluation and figures
        if scale.compile_always:
            compiled = i == 0 and speed["compiled"]
        else:
            compiled = i == 0 and speed["best"]["compile"]
        rate = speed["best"]["iterations_per_s"] if i == 0 else speed["eager"]["iterations_per_s"]
        iterations = int(np.clip(share * left_s * rate, *scale.iterations))
        train_args = A.Args(
            context=context,
            iterations=iterations,
            batch_size=scale.batches[0],
            lr=6e-4,
            warmup_iterations=min(300, iterations),
            arrival_token=args.arrival_token,
            episode_stride=1,  # every episode, as the report trains (ad_train's default, 8, is the laptop recipe's)
            **model_sizes(scale),
            eval_every=0,
            save_every=iterations,
            val_every=max(1, iterations // 4),
            log_every=max(1, iterations // 20),
            compile=compiled,
            data_dir=data,
            seed=args.seed,
            exp_name="ad-gpu",
            progress=False,
            cuda=device.type == "cuda",
        )
        torch._dynamo.reset()
        with inside(out):
            result, seconds = timed(A.main, train_args)
        val_loss = result.get("val_loss", float("nan"))
        trained[context] = {
            "checkpoint": result["checkpoint"],
            "seconds": seconds,
            "iterations": iterations,
            "compile": compiled,
            "iterations_per_s": result["iterations_per_second"],
            "val_loss": val_loss,
        }
        print(
            f"train ctx {context}: {iterations} iterations in {seconds:.0f} s "
            f"({result['iterations_per_second']:.0f}/s in ad_train.py's loop), val loss {val_loss:.3f}"
        )
    return trained


def evaluate(args: Args, scale: Scale, context: int, checkpoint: str, out: str, device: torch.device) -> dict:
    """ad_eval.py on the test tasks (all of them at the GPU scale) as one batch, timed as a whole."""
    num_envs = scale.eval_envs or len(K.task_split(scale.size, "test"))
    eval_args = E.Args(
        checkpoints=(checkpoint,),
        split="test",
        num_envs=num_envs,
        steps=scale.eval_steps,
        seed=args.seed,
        source_runs=20,
        progress=False,
        cuda=device.type == "cuda",
    )
    with inside(out):
        (row,), seconds = timed(E.main, eval_args)
    return {"context": context, "eval_file": row.pop("out"), "seconds": seconds, "tasks": num_envs, **row}


def figures(scale: Scale, results: list[dict], out: str, data: str) -> None:
    """The source population (Figure 2) and AD over contexts (Figures 3 and 4), with a table."""
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
        M.ad(
            M.Ad(
                fig3=[evals[0], evals[-1]],
                fig4=evals,
                source=os.path.join(data, "nx1-light"),
                bin=scale.figure_bin,
                out_dir=out,
            )
        )
        M.table(M.Table(evals=evals))


def main(args: Args) -> dict:
    # 1. the device, the flags and the output folder, before any work
    scale = SMOKE if args.smoke else Scale()
    if args.smoke or not torch.cuda.is_available():
        device = torch.device("cpu")
    else:
        device = torch.device("cuda")
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
    started = time.time()
    stages = {}
    print(f"gpu_check: {'smoke scale on the CPU' if args.smoke else device_name(device)} -> {out}")

    # 2. collect the Nx1 dataset, timing the SAC population
    sac = collect(args, scale, out, data)
    stages["collect"] = sac["seconds"]

    # 3. training speed on the pipeline's model and tokens
    train_speed, seconds = timed(measure_training, args, scale, data, device)
    stages["training_speed"] = seconds

    # 4. train AD at each context, in the time left
    left_s = args.budget_s - (time.time() - started)
    trained = train(args, scale, contexts, train_speed, left_s, out, data, device)
    for context, row in trained.items():
        stages[f"train_ctx{context}"] = row["seconds"]

    # 5. evaluate every model on the test tasks, the longest context's evaluation against the goal
    results = []
    for context in contexts:
        result = evaluate(args, scale, context, trained[context]["checkpoint"], out, device)
        stages[f"eval_ctx{context}"] = result["seconds"]
        results.append(result)

    # 6. figures and the report
    figures(scale, results, out, data)
    stages["total"] = time.time() - started
    speeds = {
        "sac": sac,
        "train": train_speed,
        "ad_train": trained,
        "eval": {
            "seconds": results[0]["seconds"],
            "tasks": results[0]["tasks"],
            "steps": scale.eval_steps,
            "context": contexts[0],
            # the goal is for context 500 on every test task: another --contexts has none
            "goal_s": EVAL_GOAL_S if scale.goals and contexts[0] == 500 else None,
        },
    }
    report = write_report(args, scale, device, speeds, stages, results, out)
    print(report)
    return {"speeds": speeds, "stages": stages, "results": results}


def verdict(measured: float, goal: float | None, higher_is_better: bool) -> str:
    if goal is None:  # the smoke scale, or an evaluation at another context than the goal's
        return "no goal at these sizes"
    met = measured >= goal if higher_is_better else measured <= goal
    return "meets the goal" if met else "misses the goal"


def write_report(
    args: Args, scale: Scale, device: torch.device, speeds: dict, stages: dict, results: list[dict], out: str
) -> str:
    """report.md (what a person reads: only numbers this run measured) and summary.json (the same for a program)."""
    sac = speeds["sac"]
    train = speeds["train"]
    evaluation = speeds["eval"]
    best = train["best"]
    tokens = "with the arrival token" if train["arrival_token"] else "without the arrival token"

    def goal(value, text: str) -> str:
        return "" if value is None else text

    lines = [
        f"# gpu_check ({'smoke, ' if args.smoke else ''}{device_name(device)}), {scale.size}x{scale.size}",
        "",
        "| speed | measured | goal | |",
        "|---|---|---|---|",
        f"| SAC collection, {sac['runs']} runs x {sac['steps']:,} steps | {sac['agent_steps_per_s']:,.0f} "
        f"agent-steps/s ({sac['seconds']:.0f} s) | "
        + goal(sac["goal_agent_steps_per_s"], f"{SAC_GOAL_AGENT_STEPS_PER_S:,.0f} agent-steps/s (800 x 50k in 2 min)")
        + f" | {verdict(sac['agent_steps_per_s'], sac['goal_agent_steps_per_s'], True)} |",
        f"| AD training, batch {best['batch']}, context {train['context']}, {tokens}, "
        f"{'compiled' if best['compile'] else 'eager'} | {best['iterations_per_s']:.0f} iterations/s | "
        + goal(train["goal_iterations_per_s"], f"{TRAIN_GOAL_ITERATIONS_PER_S} iterations/s")
        + f" | {verdict(best['iterations_per_s'], train['goal_iterations_per_s'], True)} |",
    ]
    for row in train["rows"]:
        lines.append(
            f"| AD training, batch {row['batch']}, {'compiled' if row['compile'] else 'eager'} | "
            f"{row['iterations_per_s']:.0f} iterations/s, MFU {100 * row['mfu']:.1f}% | | |"
        )
    if train["compile_error"]:
        lines.append(f"| torch.compile | failed: {train['compile_error'][:200]} | | |")
    for context, row in speeds["ad_train"].items():
        lines.append(
            f"| `ad_train.py` at context {context}, {row['iterations']} iterations"
            f"{', compiled' if row['compile'] else ''} | {row['iterations_per_s']:.0f} iterations/s in its own loop, "
            f"compilation and validation included | | |"
        )
    lines += [
        f"| evaluation (`ad_eval.py`), {evaluation['tasks']} test tasks x {evaluation['steps']:,} steps in one batch, "
        f"context {evaluation['context']} | {evaluation['seconds']:.1f} s | "
        + goal(evaluation["goal_s"], f"{EVAL_GOAL_S} s")
        + f" | {verdict(evaluation['seconds'], evaluation['goal_s'], False)} |",
        f"| the whole check | {stages['total']:.0f} s | "
        + goal(scale.goals or None, f"{args.budget_s:.0f} s (--budget-s)")
        + f" | {verdict(stages['total'], args.budget_s if scale.goals else None, False)} |",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()]
    lines += [
        "",
        f"AD on {results[0]['tasks']} test tasks (one training seed; mean over tasks, 95% bootstrap interval over "
        "tasks):",
        "",
        "| AD context | first 500 steps | last 500 steps | rise (last 500 - first 500) | last 5 episodes | "
        "envs reaching MA(10) 1.8 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [f"{r[m]:.2f} [{r[f'{m}_low']:.2f}, {r[f'{m}_high']:.2f}]" for m in ("first500", "last500", "rise")]
        cells.append(f"{r['last5']:.2f} [{r['last5_low']:.2f}, {r['last5_high']:.2f}]")
        lines.append(f"| {r['context']} | " + " | ".join(cells) + f" | {r['reached']}/{r['envs']} |")
    report = "\n".join(lines) + "\n"
    K.atomic_write(os.path.join(out, "report.md"), lambda f: f.write(report.encode()))
    summary = {"args": asdict(args), "scale": asdict(scale), "speeds": speeds, "stages": stages, "results": results}
    text = json.dumps(summary, indent=1)
    K.atomic_write(os.path.join(out, "summary.json"), lambda f: f.write(text.encode()))
    return report


if __name__ == "__main__":
    K.run_cli(main, Args)
