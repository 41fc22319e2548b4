# make test : set up a virtual environment on a fresh machine and run the whole test suite (CPU).
# make demo : set up, build the offline demo corpus, train its tokenizer, preprocess, derive its *noisy* variant
#             (8 clean + 8 junk domains), train AC-ODM and uniform sampling side by side on it (the mixing-quality
#             benchmark's setting, one seed), then write one plot and print a one-line verdict.
# make study : the whole mixing-quality study (benchmarks/mixing_quality.py: 4 variants x methods x 3 seeds).
# make eval-demo : a short demo proxy -> target pair (runs/eval_demo), then MMLU and HumanEval on the target from
#             the offline task data (tools/get_eval_data.py), with --limit so it takes minutes on 2 CPU cores.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO := data/demo
CACHE ?= $(CURDIR)/.cache
RUN_DIR ?= runs/demo
BENCH ?= data/mixing_bench
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast demo demo-data study clean-demo eval-demo

$(VENV)/.installed: pyproject.toml requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned, so nothing below can pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# DeepSpeed JIT-builds its CPU shared-memory op on the first distributed start; build it here, with no timeout,
# so that no test or run compiles it under a time limit (a killed build used to leave a lock that hung every
# later start; neox/training/ds_ops.py now removes such a lock).
setup: $(VENV)/.installed
	$(PY) -m neox.training.ds_ops

test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

# The edit-test loop: every test that starts no process (no train.py, launcher, gloo worker or tool run).
test-fast: $(VENV)/.installed
	ACODM_TEST_FAST=1 $(PY) -m pytest -q -n 2 -m "not launches" tests

$(DEMO)/corpus/stats.json: | setup
	$(PY) tools/build_minipile.py --out $(DEMO)/corpus --profile tiny --cache $(CACHE)/minipile --overwrite

$(DEMO)/tokenizer.json: $(DEMO)/corpus/stats.json
	$(PY) tools/train_tokenizer.py --input $(DEMO)/corpus --vocab-size 4096 --out $@

$(DEMO)/tokens/manifest.json: $(DEMO)/tokenizer.json
	$(PY) tools/preprocess_data.py --input $(DEMO)/corpus --output-dir $(DEMO)/tokens --tokenizer $< --overwrite

demo-data: $(DEMO)/tokens/manifest.json

$(BENCH)/%/variant.json: $(DEMO)/tokens/manifest.json
	$(PY) tools/make_mixing_benchmark.py --variants $* --corpus $(DEMO)/corpus --tokenizer $(DEMO)/tokenizer.json --out $(BENCH)

# The two runs go in parallel, one thread each (2 cores).
demo: setup $(BENCH)/noisy/variant.json
	rm -rf $(RUN_DIR)
	$(PY) benchmarks/mixing_quality.py --variants noisy --methods uniform,acodm --seeds 1 --bench-dir $(BENCH) \
		--runs-dir $(RUN_DIR) --out $(RUN_DIR)
	$(PY) tools/plot_mixing_demo.py $(RUN_DIR) --variant $(BENCH)/noisy -o $(RUN_DIR)/demo.png

study: setup $(BENCH)/clean/variant.json $(BENCH)/noisy/variant.json $(BENCH)/imbalanced/variant.json $(BENCH)/heldout/variant.json
	$(PY) benchmarks/mixing_quality.py --bench-dir $(BENCH) --transfer

EVAL_DATA ?= data/eval
EVAL_RUN ?= runs/eval_demo
EVAL_STEPS ?= 100
EVAL_LIMIT ?= 1

$(EVAL_RUN)/target/checkpoints/latest: | setup demo-data
	$(PY) train.py configs/demo_proxy.yml schedule.train_steps=$(EVAL_STEPS) logging.run_dir=$(EVAL_RUN)/proxy
	$(PY) tools/export_actor.py $(EVAL_RUN)/proxy -o $(EVAL_RUN)/proxy/actor
	$(PY) train.py configs/demo_target.yml schedule.train_steps=$(EVAL_STEPS) \
		mixing.acodm_frozen.actor=$(EVAL_RUN)/proxy/actor logging.run_dir=$(EVAL_RUN)/target

$(EVAL_DATA)/%/source.json: | setup
	$(PY) tools/get_eval_data.py $* --out $(EVAL_DATA)

# MMLU: --limit questions per subject (57 subjects), 0- and 5-shot. HumanEval: 4x --limit problems, greedy, at most
# 128 new tokens (the demo model has 256 positions; lm-eval's 1024 would not fit).
eval-demo: $(EVAL_RUN)/target/checkpoints/latest $(EVAL_DATA)/mmlu/source.json $(EVAL_DATA)/humaneval/source.json
	$(PY) tools/run_eval.py $(EVAL_RUN)/target --suite mmlu --data-source local --eval-data $(EVAL_DATA) --limit $(EVAL_LIMIT) \
		--out $(EVAL_RUN)/eval/mmlu.json
	$(PY) tools/run_eval.py $(EVAL_RUN)/target --suite humaneval --data-source local --eval-data $(EVAL_DATA) \
		--limit $$(( 4 * $(EVAL_LIMIT) )) --max-gen-toks 128 --allow-code-execution --out $(EVAL_RUN)/eval/humaneval.json

clean-demo:
	rm -rf $(DEMO) $(RUN_DIR) $(BENCH)
