# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo_out

.PHONY: demo card test lint clean study wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch 2.13.0: pip takes the CPU build where its find-links hold one (these machines: about 1 GB in
# the venv, where PyPI's CUDA build of the newest torch brings 5.5 GB and filled CI's disk).
# `make TORCH=torch ...` leaves the choice to pip.
TORCH ?= torch==2.13.0

# One stamp per set of extras, so a changed setup.cfg reinstalls.
$(VENV)/.installed-%: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)" -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-calibrate,dev
	$(BIN)/avemo synth --preset tiny --out $(DEMO)/cache --seed 0
	for regime in audio visual conventional colearn; do \
		$(BIN)/avemo train --data $(DEMO)/cache --preset tiny --regime $$regime --out $(DEMO)/runs/$$regime || exit 1; \
	done
	$(BIN)/avemo eval $(DEMO)/runs/audio $(DEMO)/runs/visual $(DEMO)/runs/conventional $(DEMO)/runs/colearn \
		--split test --data $(DEMO)/cache --out $(DEMO)/table --results-md $(DEMO)/RESULTS.md
	$(BIN)/avemo-export $(DEMO)/runs/colearn --precision fp16 --out $(DEMO)/models --force
	$(BIN)/avemo calibrate $(DEMO)/models --data $(DEMO)/cache --samples 48 --method max
	$(BIN)/avemo verify $(DEMO)/models
	$(BIN)/avemo sample $(DEMO)/clip.mp4
	$(BIN)/avemo infer $(DEMO)/clip.mp4 --models $(DEMO)/models
	$(MAKE) card

# The card's path at the real model's size (the paper preset: per-channel INT8 scales in the external
# weight file, 128-px faces), run from another working directory: a synthetic cache, 1 epoch, INT8 in one
# command, verify (fp16 in the reference evaluator: minutes at this size), infer in fp32, fp16 and int8.
CARD := $(CURDIR)/$(DEMO)/card
AVEMO := $(CURDIR)/$(BIN)/avemo
card: $(VENV)/.installed-calibrate,dev
	mkdir -p $(CARD)
	$(BIN)/avemo sample $(CARD)/clip.mp4
	cd /tmp && $(AVEMO) synth --preset paper --out $(CARD)/cache --clips 40 --seed 0
	cd /tmp && $(AVEMO) train --data $(CARD)/cache --preset paper --regime colearn --epochs 1 --out $(CARD)/run
	cd /tmp && $(AVEMO)-export $(CARD)/run --precision int8 --data $(CARD)/cache --samples 16 --out $(CARD)/models --force
	cd /tmp && $(AVEMO) verify $(CARD)/models
	cd /tmp && for p in fp32 fp16 int8; do $(AVEMO) infer $(CARD)/clip.mp4 --models $(CARD)/models --precision $$p || exit 1; done

# A real Triton server for the serving tests: the nvidia-pytriton wheel's tritonserver binary (Linux
# x86_64, glibc 2.35+). --no-deps: its metadata pins numpy<2 and we use only the binary. Where the
# wheel does not install, the server tests skip and say why.
$(VENV)/.installed-tritonserver: | $(BIN)/python
	$(BIN)/pip install -q --no-deps nvidia-pytriton==0.7.0 || echo "nvidia-pytriton does not install here: Triton server tests will skip"
	touch $@

test: $(VENV)/.installed-calibrate,dev $(VENV)/.installed-tritonserver
	$(BIN)/ruff check .
	bash scripts/typecheck_trt.sh
	$(BIN)/pytest

# The multi-seed co-learning study behind docs/RESULTS.md (about 90 min on 2 CPU cores; resumable).
STUDY := study_out
study: $(VENV)/.installed-calibrate,dev
	$(BIN)/avemo synth --preset tiny --out $(STUDY)/cache-mixed --clips 1200 --seed 0
	$(BIN)/avemo synth --preset tiny --out $(STUDY)/cache-audio-led --clips 1200 --seed 0 --benchmark audio-led
	$(BIN)/avemo study --data mixed=$(STUDY)/cache-mixed --data audio-led=$(STUDY)/cache-audio-led \
		--preset tiny --seeds 3 --epochs 80 --patience 6 --min-epochs 8 --out $(STUDY) --quiet \
		--results-md docs/RESULTS.md

# The wheel to copy to a device: there, pip install 'avemo-<version>-py3-none-any.whl[runtime]'.
wheel: | $(BIN)/python
	$(BIN)/pip install -q "setuptools>=69"
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls dist/avemo-*.whl

lint: $(VENV)/.installed-calibrate,dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO) $(STUDY) .pytest_cache dist build
