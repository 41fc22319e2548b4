"""Evaluate a model with lm-eval: an exported transformers directory, a run or a checkpoint.

    python tools/run_eval.py MODEL_DIR|RUN_DIR|CHECKPOINT_DIR --suite mmlu|humaneval|paper|task1,task2
        [--num-fewshot N] [--limit N] [--include-path DIR] [--batch-size N|auto] [--device cpu]
        [--allow-code-execution] [--data-source auto|hub|local] [--eval-data DIR] [--max-gen-toks N]
        --out FILE.json

Suites: mmlu (0- and 5-shot, two runs), humaneval (pass@1, greedy; runs model-written code, so only
with --allow-code-execution), paper (lambada_openai, piqa, winogrande, arc_easy, sciq, wikitext,
openbookqa). Writes FILE.json (task -> metric -> value per run, n-shot, limit, lm-eval version, where
the tasks came from) and a markdown table to FILE.md.

Offline: mmlu and humaneval run from the local tasks that tools/get_eval_data.py writes into
--eval-data (default data/eval) whenever the Hugging Face Hub is not reachable (or HF_HUB_OFFLINE=1),
with lm-eval's task names and metrics; --data-source local forces them, hub forbids them. Other tasks
need their datasets in the Hugging Face cache (HF_DATASETS_CACHE, with HF_DATASETS_OFFLINE=1
HF_HUB_OFFLINE=1) or local tasks via --include-path.
"""

import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse
import json

from neox.files import atomic_write_text  # noqa: E402


def _batch_size(text: str) -> "int | str":
    if text == "auto" or text.startswith("auto:"):
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch-size must be >= 1 or 'auto', got {text}")
    return value


def _limit(text: str) -> "int | float":
    # lm-eval reads a limit below 1 as a fraction of each task's documents.
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL_DIR", help="transformers dir (convert_to_hf output), run or checkpoint")
    parser.add_argument("--suite", required=True, help="mmlu, humaneval, paper, or comma-separated lm-eval task names")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot count (default: the suite's/task's)")
    parser.add_argument("--limit", type=_limit, default=None, help="documents per task (testing only)")
    parser.add_argument("--include-path", default=None, metavar="DIR", help="folder of extra lm-eval task YAMLs")
    parser.add_argument("--batch-size", type=_batch_size, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--allow-code-execution", action="store_true",
                        help="allow tasks that execute model-generated code (humaneval); use a sandbox")
    parser.add_argument("--data-source", choices=["auto", "hub", "local"], default="auto",
                        help="mmlu/humaneval tasks: lm-eval's (hub), get_eval_data's (local), or local when "
                             "the Hub is not reachable (auto, default)")
    parser.add_argument("--eval-data", default="data/eval", metavar="DIR",
                        help="folder written by tools/get_eval_data.py (default: %(default)s)")
    parser.add_argument("--max-gen-toks", type=int, default=None, metavar="N",
                        help="cap on generated tokens for generate_until tasks (humaneval: 1024), for models "
                             "with a shorter context; recorded in the report")
    parser.add_argument("--bootstrap-iters", type=int, default=100000,
                        help="bootstrap resamples for standard errors that have no closed form")
    parser.add_argument("--out", required=True, metavar="FILE.json")
    args = parser.parse_args(argv)
    if args.max_gen_toks is not None and args.max_gen_toks < 1:
        parser.error(f"--max-gen-toks must be >= 1, got {args.max_gen_toks}")

    from neox.evaluation import EvalError, results_markdown, run_suite

    try:
        report = run_suite(args.model, args.suite, num_fewshot=args.num_fewshot, limit=args.limit,
                           include_path=args.include_path, batch_size=args.batch_size, device=args.device,
                           allow_code_execution=args.allow_code_execution, bootstrap_iters=args.bootstrap_iters,
                           eval_data_dir=args.eval_data, data_source=args.data_source,
                           gen_kwargs=None if args.max_gen_toks is None else {"max_gen_toks": args.max_gen_toks})
    except EvalError as e:
        print(f"run_eval: error: {e}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    table = results_markdown(report)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
