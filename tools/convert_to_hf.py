"""Convert a training checkpoint to a transformers GPTNeoXForCausalLM directory.

    python tools/convert_to_hf.py RUN_DIR|CHECKPOINT_DIR -o OUT_DIR [--dtype float32|bfloat16|float16]
                                  [--tokenizer PATH] [--overwrite] [--verify]

RUN_DIR resolves to its newest complete checkpoint (checkpoints/latest). The output loads with
AutoModelForCausalLM.from_pretrained(OUT_DIR) and AutoTokenizer.from_pretrained(OUT_DIR).
"""

import sys, pathlib; sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # noqa: E401,E702

import argparse
import warnings

from neox.hf_export import DTYPES, ExportError, export_hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="RUN_DIR|CHECKPOINT_DIR")
    parser.add_argument("-o", "--out", required=True, metavar="OUT_DIR")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the saved weights")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="tokenizer.json (or a directory holding it); default: the run's tokenizer.json")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--verify", action="store_true",
                        help="load the export with transformers and compare its logits with ours (fp32, CPU)")
    args = parser.parse_args(argv)
    # One plain line per warning, without the source line Python's default format appends.
    warnings.showwarning = lambda message, *_args, **_kw: print(f"convert_to_hf: warning: {message}", file=sys.stderr)
    try:
        out = export_hf(args.source, args.out, dtype=args.dtype, tokenizer=args.tokenizer, overwrite=args.overwrite)
    except ExportError as e:
        print(f"convert_to_hf: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    if args.verify:
        import torch

        from neox.hf_export import load_checkpoint_config, max_logit_diff, resolve_checkpoint

        vocab_size = int(load_checkpoint_config(resolve_checkpoint(args.source))["model"]["vocab_size"])
        input_ids = torch.randint(0, vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
        diff = max_logit_diff(args.source, out, input_ids)
        print(f"max |logit difference| ours vs transformers ({args.dtype} export, 2 x 32 random tokens): {diff:.3e}")
        # Only an fp32 export must match to float round-off; bf16/fp16 differ by their own rounding.
        if args.dtype == "float32" and diff > 1e-4:
            print(f"convert_to_hf: error: logit difference {diff:.3e} exceeds 1e-4", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
