"""SFT throughput: tokens/s and model-FLOPs utilisation, TRL's SFTTrainer vs a plain torch loop.

    python benchmarks/bench_sft.py --preset small --steps 8 --batch-size 8

Prints, for one process on ``--threads`` CPU threads:
* the machine's float32 matmul peak measured now (2048x2048 GEMM, best of several);
* tokens/s (non-padding tokens) and MFU = 6 * parameters * tokens/s / peak for
  ``cellduality.training.sft.build_sft_trainer`` (exactly the trainer ``cellduality sft`` runs)
  and for a plain loop (same model init, same batches from the trainer's own dataloader, AdamW,
  forward/backward/step) -- and their ratio, measured in the same run;
* the padding fraction of the batches (padding is computed but is not counted as useful tokens).

Data: SFT rows built from scanpy's bundled pbmc68k_reduced cells with the real annotation prompt
templates (``tests/test_sft_data.py``), i.e. the prompt/completion lengths ``cellduality sft`` sees.
On a shared machine figures move with the load: compare the ratio, and run it more than once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see docs/sft.md)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def matmul_peak(threads: int, size: int = 2048, repeats: int = 6) -> float:
    """Best float32 GEMM rate in FLOP/s on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def trainer_run(sft_dir: Path, out: Path, settings, warmup: int, steps: int):
    """Time ``steps`` optimizer steps of the real SFT trainer after ``warmup`` steps."""
    from transformers import TrainerCallback

    from cellduality.training.sft import build_sft_trainer

    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                marks["t0"], marks["n0"] = time.perf_counter(), trainer._total_train_tokens
            if state.global_step == warmup + steps:
                marks["t1"], marks["n1"] = time.perf_counter(), trainer._total_train_tokens

    trainer = build_sft_trainer(sft_dir, out, settings, callbacks=[Clock()])
    trainer.train()
    return trainer, (marks["n1"] - marks["n0"]) / (marks["t1"] - marks["t0"])


def plain_loop(trainer, settings, warmup: int, steps: int):
    """The same model init and batches, trained by a bare AdamW loop; returns (tokens/s, padding)."""
    import torch

    from cellduality.models import build_model

    model = build_model(settings.model, trainer.processing_class, seed=settings.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    batches = iter(trainer.get_train_dataloader())
    tokens = total = 0
    t0 = 0.0
    for step in range(warmup + steps):
        batch = next(batches)
        if step == warmup:
            t0 = time.perf_counter()
        out = model(**batch)  # padded (attention_mask) or padding-free (position_ids) batch, with labels
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            total += batch["input_ids"].numel()
    return tokens / (time.perf_counter() - t0), 1 - tokens / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--padding-free", action="store_true", help="cellduality sft's padding_free mode")
    parser.add_argument("--no-group-by-length", action="store_true", help="random batches (more padding)")
    parser.add_argument("--no-loop", action="store_true", help="skip the plain-loop comparison")
    args = parser.parse_args()

    import scanpy as sc
    import torch

    from cellduality.models import count_parameters
    from cellduality.training.sft import SFTSettings
    from test_sft_data import make_sft_folder

    peak_before = matmul_peak(args.threads)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        sft_dir = make_sft_folder(sc.datasets.pbmc68k_reduced(), Path(tmp) / "sft", n_cells=args.cells)
        settings = SFTSettings(
            model=args.preset,
            batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            save_steps=10**6,
            logging_steps=10**6,
            warmup_steps=0,
            padding_free=args.padding_free,
            group_by_length=not args.no_group_by_length,
        )
        trainer, trainer_tps = trainer_run(sft_dir, Path(tmp) / "out", settings, args.warmup, args.steps)
        params = count_parameters(trainer.model)
        rows = [("SFTTrainer (cellduality sft)", trainer_tps)]
        padding = None
        if not args.no_loop:
            loop_tps, padding = plain_loop(trainer, settings, args.warmup, args.steps)
            rows.append(("plain torch loop", loop_tps))
    # On a shared machine the load changes during the run: the peak is the best GEMM rate seen
    # before or after the training runs, so MFU is never flattered by a contended peak.
    peak_after = matmul_peak(args.threads)
    peak = max(peak_before, peak_after)
    print(
        f"float32 GEMM peak (2048^2, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s "
        f"(before {peak_before / 1e9:.1f}, after {peak_after / 1e9:.1f}); "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(f"model: {args.preset}, {params / 1e6:.2f}M parameters, batch {args.batch_size}, {args.steps} timed steps")
    if padding is not None:
        print(f"padding: {padding:.1%} of batch positions")
    for name, tps in rows:
        mfu = 6 * params * tps / peak
        print(f"{name:30s} {tps:9.0f} tok/s   MFU {mfu:6.1%}")
    if len(rows) == 2:
        print(f"trainer / loop throughput: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
