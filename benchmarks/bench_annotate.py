"""Annotation throughput: labels + confidence (fast path), reasoning for every cell, agreement.

    python benchmarks/bench_annotate.py --model OUT/models/sft \\
        --data ../shared/data/kang2018_pbmc_ifnb_scgen/kang2018_scgen_valid.h5ad

Prints, for one process on ``--threads`` CPU threads (or the GPU when there is one):
* cells/s of ``cellduality.inference.annotate`` end to end (sentences, label ranking, columns)
  with the default fast path: labels by likelihood, no reasoning; and its ceiling, the prompt
  pass with one candidate label (as if scoring the others cost nothing);
* cells/s with reasoning written for every cell (``explain=True``) on the first
  ``--reasoning-cells`` cells;
* agreement of the fast labels with the *full path* on the first ``--full-cells`` cells: greedy
  generation of reasoning + answer (batched, the answer parsed from the text), the way
  ``evaluate`` reads a model -- and the agreement of the explained labels with it;
* the middle road: fast labels with reasoning for the ``--explain-share`` least confident cells
  (``--explain-least-confident``), its cells/s and agreement with the full path.

The model must have been taught the answer-only rows (``cellduality teach`` writes them by
default since ``direct_primal``); for an older model the fast path warns and generates.
On a shared machine figures move with the load: run it more than once.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see docs/sft.md)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar in the figures

ROOT = Path(__file__).resolve().parents[1]
KANG = ROOT.parent / "shared" / "data" / "kang2018_pbmc_ifnb_scgen" / "kang2018_scgen_valid.h5ad"


def full_path_labels(mdl, task, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str | None]:
    """Greedy reasoning + answer for each prompt, the answer parsed from the generated text."""
    from cellduality.inference.fast import generate_sorted

    texts = generate_sorted(mdl, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)  # reasoning required
    answers = [task.parse_primal(t) for t in texts]
    return [None if a is None else task.render_answer(a) for a in answers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=KANG)
    parser.add_argument("--cells", type=int, default=None, help="cells for the fast path (default: all)")
    parser.add_argument("--reasoning-cells", type=int, default=200)
    parser.add_argument("--full-cells", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--explain-share", type=float, default=0.1,
                        help="also run the fast path with reasoning for this share of least confident cells")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=1,
                        help="also time the fast path on this many copies of the cells (an atlas-sized input; "
                             "obs names made unique), where per-call costs are spread over more cells")
    parser.add_argument("--batch-tokens", type=int, nargs="*", default=[],
                        help="also time the fast path at these padded tokens per scoring batch (0: the default, "
                             "candidates.BATCH_TOKENS for the device; on a GPU by its free memory)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top operators (host and device time) for one fast-path run")
    parser.add_argument("--int8", action="store_true",
                        help="CPU only: int8 dynamic quantisation of the linear layers (torch.ao quantize_dynamic) "
                             "before timing; the labels it changes are counted against the float32 model")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile(dynamic=True) the model's forward before timing (its warm-up printed "
                             "apart); the labels it changes are counted against the eager model")
    parser.add_argument("--recompile-limit", type=int, default=None,
                        help="with --compile: torch._dynamo's recompile limit (default 8; int8 layers exceed it)")
    args = parser.parse_args()

    import torch

    from cellduality.inference import CellDualityModel, annotate
    from cellduality.sentences import read_h5ad

    torch.set_num_threads(args.threads)
    adata = read_h5ad(args.data)
    if args.cells:
        adata = adata[: args.cells].copy()
    mdl = CellDualityModel.load(args.model)
    task = mdl.task("annotation")
    device = next(mdl.model.parameters()).device
    print(f"model {args.model} ({sum(p.numel() for p in mdl.model.parameters()) / 1e6:.1f}M parameters) on "
          f"{device}, {args.threads} threads; {adata.n_obs} cells of {args.data.name}")
    reference = None
    if args.int8:
        import warnings

        reference = annotate(adata.copy(), mdl, min_overlap=0.0).obs["cellduality_cell_type"].astype(str).to_numpy()
        with warnings.catch_warnings():  # torch.ao's migration notice
            warnings.simplefilter("ignore")
            mdl.model = torch.ao.quantization.quantize_dynamic(mdl.model, {torch.nn.Linear}, dtype=torch.qint8)

    if args.compile:
        reference = annotate(adata.copy(), mdl, min_overlap=0.0).obs["cellduality_cell_type"].astype(str).to_numpy()
        if args.recompile_limit:
            torch._dynamo.config.recompile_limit = args.recompile_limit
        mdl.model.forward = torch.compile(mdl.model.forward, dynamic=True)
        t = time.perf_counter()
        annotate(adata[:300].copy(), mdl, min_overlap=0.0)  # compiles for the shapes of the batches to come
        print(f"torch.compile warm-up: {time.perf_counter() - t:.1f} s")
    annotate(adata[:32].copy(), mdl, warn=print, min_overlap=0.0)  # warm-up (first-call allocations)
    t = time.perf_counter()
    fast = annotate(adata, mdl, warn=print, min_overlap=0.0)  # speed, not a data check
    seconds = time.perf_counter() - t
    print(f"labels + confidence: {adata.n_obs / seconds:.1f} cells/s ({adata.n_obs} cells in {seconds:.1f} s; "
          f"answer-only form: {fast.uns['cellduality']['annotation'].get('answer_form')})")
    if reference is not None:
        same = (fast.obs["cellduality_cell_type"].astype(str).to_numpy() == reference).mean()
        print(f"{'compiled' if args.compile else 'int8'}: the same label as the eager float32 model for {same:.1%} "
              f"of {adata.n_obs} cells")

    _scale_figures(args, adata, mdl, annotate)

    examples = _examples(fast, mdl, task)  # the examples annotate built, for the ceiling and the full path
    ceiling = prompt_pass_rate(mdl, task, examples)
    print(f"ceiling: the answer-only prompt pass with one candidate label instead of all {ceiling:.1f} cells/s")

    sub = adata[: args.reasoning_cells].copy()
    t = time.perf_counter()
    explained = annotate(sub, mdl, explain=True, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         min_overlap=0.0)
    seconds = time.perf_counter() - t
    print(f"reasoning for every cell: {sub.n_obs / seconds:.1f} cells/s ({sub.n_obs} cells in {seconds:.1f} s)")

    n = min(args.full_cells, adata.n_obs)
    prompts = [task.primal_prompt(ex) for ex in examples[:n]]
    t = time.perf_counter()
    full = full_path_labels(mdl, task, prompts, args.batch_size, args.max_new_tokens)
    seconds = time.perf_counter() - t
    fast_labels = fast.obs["cellduality_cell_type"].astype(str).to_numpy()[:n]
    agree = sum(f == g for f, g in zip(fast_labels, full, strict=True)) / n
    unparsed = sum(g is None for g in full)
    print(f"full path (greedy reasoning + parsed answer): {n / seconds:.1f} cells/s; {unparsed} unparsed")
    parsed = [i for i, g in enumerate(full) if g is not None]
    agree_parsed = sum(fast_labels[i] == full[i] for i in parsed) / max(1, len(parsed))
    print(f"agreement fast vs full path: {agree:.1%} of {n} cells ({agree_parsed:.1%} of the {len(parsed)} "
          "whose full-path answer parsed)")
    m = min(n, sub.n_obs)
    ex_labels = explained.obs["cellduality_cell_type"].astype(str).to_numpy()[:m]
    agree_ex = sum(f == g for f, g in zip(ex_labels, full[:m], strict=True)) / max(1, m)
    print(f"agreement explained vs full path: {agree_ex:.1%} of {m} cells")
    conf = fast.obs["cellduality_confidence"].to_numpy()[:n]
    hit = fast_labels == [g or "" for g in full]
    if args.explain_share > 0:
        part = adata[:n].copy()
        k = int(round(args.explain_share * n))
        t = time.perf_counter()
        mixed = annotate(part, mdl, explain_least_confident=k, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, min_overlap=0.0)
        seconds = time.perf_counter() - t
        labels = mixed.obs["cellduality_cell_type"].astype(str).to_numpy()
        agree_mixed = sum(f == g for f, g in zip(labels, full, strict=True)) / n
        print(f"fast + reasoning for the {k} least confident: {n / seconds:.1f} cells/s; agreement with the full "
              f"path {agree_mixed:.1%} of {n} cells")
    mean = lambda values: f"{values.mean():.2f}" if len(values) else "-"  # noqa: E731
    print(f"mean confidence: {mean(conf)} (agreeing cells {mean(conf[hit])}, disagreeing {mean(conf[~hit])})")


def _scale_figures(args, adata, mdl, annotate) -> None:
    """The fast path at other scoring batch sizes, on a tiled (atlas-sized) input, and its profile."""
    import anndata as ad

    from cellduality.models import candidates

    device = "cuda" if next(mdl.model.parameters()).device.type == "cuda" else "cpu"
    default = candidates.BATCH_TOKENS[device]
    if device == "cuda" and default is None:
        print(f"tokens per scoring batch by free memory (the default): {candidates.default_batch_tokens(mdl.model)}")
    big = ad.concat([adata] * args.tile, index_unique="-") if args.tile > 1 else adata
    for tokens in args.batch_tokens or ([default] if args.tile > 1 else []):
        candidates.BATCH_TOKENS[device] = tokens or default
        try:
            annotate(big[:32].copy(), mdl, min_overlap=0.0)  # warm-up at this batch size
            t = time.perf_counter()
            annotate(big, mdl, min_overlap=0.0)
            seconds = time.perf_counter() - t
        finally:
            candidates.BATCH_TOKENS[device] = default
        print(f"labels + confidence, {tokens or 'default'} tokens per scoring batch: {big.n_obs / seconds:.1f} cells/s "
              f"({big.n_obs} cells = {args.tile} x {adata.n_obs} in {seconds:.1f} s)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            annotate(adata, mdl, min_overlap=0.0)
        for key in ["self_cpu_time_total"] + (["self_device_time_total"] if device == "cuda" else []):
            print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))


def prompt_pass_rate(mdl, task, examples) -> float:
    """Cells/s of the answer-only prompt pass with one candidate instead of all (its shared head
    once, then each cell's tokens): what labels + confidence would cost if scoring the other
    candidates were free (its ceiling)."""
    from cellduality.inference.fast import answer_prompts, answer_split, taught_form
    from cellduality.models.candidates import score_candidates
    from cellduality.tasks.base import ANSWER_PROMPT

    prompts = answer_prompts(task, taught_form(mdl.path, task.name) or ANSWER_PROMPT,
                             [task.primal_prompt(ex) for ex in examples], [task.split(ex) for ex in examples])
    prefix, lead, tail = answer_split("")
    one = f"{lead}{task.render_answer(task.answer_candidates()[0])}{tail}"
    start = time.perf_counter()
    score_candidates(mdl.model, mdl.tokenizer, prompts, [prefix] * len(prompts), [one])
    return len(prompts) / (time.perf_counter() - start)


def _examples(adata, mdl, task):
    """The examples ``annotate`` builds for these cells (same sentences, same seeds)."""
    from cellduality.inference.predict import cell_examples, model_sentences

    cells, _ = model_sentences(adata, task, 0)
    return cell_examples(task, adata.obs_names, cells, {}, 0)


if __name__ == "__main__":
    main()
