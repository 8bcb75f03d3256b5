# peftd — plain Makefile.
#   make            build build/peftd (+ CUDA backend: CUDA=auto needs nvcc and a driver;
#                   CUDA=1 forces it, CUDA=0 never; MARCH=native by default)
#   make run        install missing deps, build, serve the default model (conf/peftd.json)
#   make test       install missing deps, build, run unit + integration tests
#   make asan       the same tests under AddressSanitizer + UBSan (build-asan/)
#   make tsan       the CPU worker pool's stress test under ThreadSanitizer (build-tsan/)
#   make test-cluster  replication: a primary + 3 followers on loopback (tests/integration/test_cluster.py)
#   make bench      benchmarks (JSON + one-line summary)
#   make install    install under PREFIX (default /usr/local), staged under DESTDIR
#   make venv       the test virtualenv (build/venv, tests/requirements.txt)
#   make clean      remove every build directory (build/ or $(BUILD), build-asan, build-tsan,
#                   build-fuzz, build-gpu, build-cuda); `make distclean` also the generated benchmark models
# XCFLAGS / XLDFLAGS / XNVCCFLAGS are appended for local experiments. Changing any flag (or
# the compiler) rebuilds what it affects: the effective flags are kept in $(BUILD)/.flags.

BUILD   ?= build
CC      ?= cc
PYTHON  ?= python3
PKGS    := libmicrohttpd libcjson libuv lmdb openblas libpcre2-8 libutf8proc libcrypto libcurl

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# The clients (peftctl, the load generator) use libcurl, and so does the daemon's follower
# (server/replication/: store.follow pulls the primary's change feed).
CLI_PKGS   := libcurl libcjson
CLI_CFLAGS := $(shell pkg-config --cflags $(CLI_PKGS) 2>/dev/null)
CLI_LIBS   := $(shell pkg-config --libs $(CLI_PKGS) 2>/dev/null)

OPT     ?= -O2
# -march: native by default; a portable build (container images, packages) passes e.g.
# MARCH=x86-64-v2.
MARCH   ?= native
CFLAGS  := -std=c11 -D_GNU_SOURCE -g $(OPT) -march=$(MARCH) -fno-strict-aliasing \
           -Wall -Wextra -Werror -Wno-unused-parameter -MMD -MP \
           -I. $(PKG_CFLAGS) $(SANFLAGS) $(XCFLAGS)
LDFLAGS := $(SANFLAGS) $(XLDFLAGS)
LDLIBS  := $(PKG_LIBS) -lm -lpthread

# Sources: everything under the three library trees except the daemon's main.
LIB_SRC  := $(shell find lib kernels adapter_store server -name '*.c' ! -path server/main.c | sort)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
# The web console (server/console/*.html,js,css): embedded into the library as a generated
# C array source (server/console/embed.sh; POSIX sh + od), served at / by api_console.c.
CONSOLE_FILES := $(sort $(wildcard server/console/*.html server/console/*.js server/console/*.css))
CONSOLE_GEN   := $(BUILD)/gen/console_assets.c
LIB_OBJ  += $(BUILD)/gen/console_assets.o
TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HARNESS  := $(BUILD)/tests/harness.o $(BUILD)/tests/logit_ref.o $(BUILD)/tests/seq_batch.o $(BUILD)/tests/tok_corpus.o \
            $(BUILD)/tests/adapter_ref.o $(BUILD)/tests/greedy_run.o $(BUILD)/tests/adapter_syn.o
# The command line client: its own binary, not part of the daemon library.
PEFTCTL_SRC := $(wildcard clients/peftctl/*.c)
PEFTCTL_OBJ := $(PEFTCTL_SRC:%.c=$(BUILD)/%.o)
# The load generator (libcurl multi): a client too, built like peftctl.
LOADGEN_SRC := $(wildcard clients/loadgen/*.c)
LOADGEN_OBJ := $(LOADGEN_SRC:%.c=$(BUILD)/%.o)

# CUDA backend. CUDA=auto (default): built when nvcc exists AND an NVIDIA driver is present
# (/dev/nvidiactl or a loadable libcuda.so.1), so a machine with the toolkit but no GPU
# builds CPU-only and links no CUDA library. CUDA=1 forces it (CI: compile-checks the
# kernels without a GPU; an error without nvcc); CUDA=0 never builds it.
CUDA     ?= auto
NVCC     := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CU_SRC   := $(shell find kernels/cuda -name '*.cu' 2>/dev/null | sort)
ifeq ($(CUDA),auto)
  CUDA_DRIVER := $(shell test -e /dev/nvidiactl && echo /dev/nvidiactl || \
                   (ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' && echo libcuda.so.1))
  CUDA_ON := $(and $(NVCC),$(CU_SRC),$(CUDA_DRIVER))
else ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but no nvcc on PATH or in /usr/local/cuda/bin)
  endif
  CUDA_ON := 1
else ifeq ($(CUDA),0)
  CUDA_ON :=
else
  $(error CUDA must be auto, 0 or 1 (got '$(CUDA)'))
endif
ifneq ($(CUDA_ON),)
  CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
  CU_OBJ    := $(CU_SRC:%.cu=$(BUILD)/%.o)
  # sm_80 (A100) and sm_90 (H100/H200) SASS + sm_90 PTX for newer chips; every nvcc
  # warning is an error (-Werror all-warnings), host code under -Wall -Wextra -Werror.
  NVCCFLAGS := -O3 -std=c++17 -I. -lineinfo -MMD -MP \
               -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
               -gencode arch=compute_90,code=compute_90 \
               -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror $(XNVCCFLAGS)
  CFLAGS    += -DPEFTD_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
  BUILD_KIND := CPU + CUDA (CUDA=$(CUDA), nvcc: $(NVCC))
else ifeq ($(CUDA),0)
  BUILD_KIND := CPU-only (CUDA=0)
else ifeq ($(NVCC),)
  BUILD_KIND := CPU-only (no nvcc on PATH: CUDA backend not built; CUDA=1 forces it)
else
  BUILD_KIND := CPU-only (nvcc found but no NVIDIA driver: CUDA=1 builds the CUDA backend anyway)
endif

# make run / make test build with every core unless -j was given.
NPROC   := $(shell nproc 2>/dev/null || echo 2)
JOBS    := $(if $(findstring -j,$(MAKEFLAGS)),,-j$(NPROC))

# Test-time Python packages (openai SDK, prometheus_client, kubernetes-validate) live in a
# virtualenv the Makefile creates: Debian's system pip refuses to install (PEP 668).
VENV    ?= $(BUILD)/venv
VENV_PY := $(VENV)/bin/python
REQS    := tests/requirements.txt

# make install: PREFIX (default /usr/local) and DESTDIR (staging root, for packaging).
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share/peftd
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d

.PHONY: all deps venv install uninstall tests-bin run test test-load test-lm-eval test-cluster test-gpu-dryrun asan tsan fuzz bench clean distclean
.DEFAULT_GOAL := all

# Rebuild when flags change: the effective compiler, flags and libraries are written to
# $(BUILD)/.flags, rewritten only when they differ from the last build's, and every object
# and binary depends on that file. (clean/distclean alone leave it alone.)
FLAGS_FILE := $(BUILD)/.flags
FLAGS_NOW  := CC=$(CC) CUDA=$(CUDA_ON) CFLAGS=$(CFLAGS) LDFLAGS=$(LDFLAGS) LDLIBS=$(LDLIBS) CLI=$(CLI_CFLAGS) $(CLI_LIBS) \
              NVCC=$(NVCC) NVCCFLAGS=$(NVCCFLAGS)
ifneq ($(if $(NOBUILD),,$(filter-out clean distclean,$(or $(MAKECMDGOALS),all))),)
  ifneq ($(strip $(file < $(FLAGS_FILE))),$(strip $(FLAGS_NOW)))
    $(shell mkdir -p $(BUILD))
    $(file > $(FLAGS_FILE),$(FLAGS_NOW))
  endif
endif
# Link lines take the objects and archives of $^, never the flags file.
LINK_IN = $(filter-out $(FLAGS_FILE),$^)

all: $(BUILD)/peftd $(BUILD)/libpeftd.a $(BUILD)/peftctl $(BUILD)/peftd-loadgen
	@echo "peftd: $(BUILD_KIND)"

deps:
	@bash deploy/install_deps.sh

$(BUILD)/libpeftd.a: $(LIB_OBJ) $(CU_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/peftd: $(BUILD)/server/main.o $(BUILD)/libpeftd.a $(FLAGS_FILE)
	$(CC) $(LDFLAGS) -o $@ $(LINK_IN) $(LDLIBS)

$(PEFTCTL_OBJ): CFLAGS += $(CLI_CFLAGS)
$(BUILD)/peftctl: $(PEFTCTL_OBJ) $(FLAGS_FILE)
	$(CC) $(LDFLAGS) -o $@ $(LINK_IN) $(CLI_LIBS)

$(LOADGEN_OBJ): CFLAGS += $(CLI_CFLAGS)
$(BUILD)/peftd-loadgen: $(LOADGEN_OBJ) $(FLAGS_FILE)
	$(CC) $(LDFLAGS) -o $@ $(LINK_IN) $(CLI_LIBS) -lm

# The commit peftd_build_info reports (lib/version.c): the file is rebuilt when HEAD moves.
PEFTD_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
$(BUILD)/lib/version.o: CFLAGS += -DPEFTD_COMMIT='"$(PEFTD_COMMIT)"'
$(BUILD)/lib/version.o: $(wildcard .git/HEAD $(shell git rev-parse --git-dir 2>/dev/null)/logs/HEAD)

$(BUILD)/%.o: %.c $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(CONSOLE_GEN): server/console/embed.sh $(CONSOLE_FILES)
	@mkdir -p $(dir $@)
	sh server/console/embed.sh $@ $(CONSOLE_FILES)

$(BUILD)/gen/console_assets.o: $(CONSOLE_GEN) $(FLAGS_FILE)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cu $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BUILD)/tests/harness.o: tests/harness/test.c tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/logit_ref.o: tests/harness/logit_ref.c tests/harness/logit_ref.h tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/seq_batch.o: tests/harness/seq_batch.c tests/harness/seq_batch.h tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/adapter_ref.o: tests/harness/adapter_ref.c tests/harness/adapter_ref.h tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/greedy_run.o: tests/harness/greedy_run.c tests/harness/greedy_run.h tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/adapter_syn.o: tests/harness/adapter_syn.c tests/harness/adapter_syn.h tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/tok_corpus.o: tests/harness/tok_corpus.c tests/harness/tok_corpus.h tests/harness/test.h $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(HARNESS) $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(HARNESS) $(BUILD)/libpeftd.a $(LDLIBS)

# The benchmarks are built with the tests, so an op-table change cannot leave them broken.
BENCH_BIN := $(BUILD)/bench/bench_adapters $(BUILD)/bench/bench_decode $(BUILD)/bench/bench_prefix \
             $(BUILD)/bench/bench_json $(BUILD)/bench/bench_gpu $(BUILD)/bench/bench_kinds \
             $(BUILD)/bench/bench_rotate $(BUILD)/bench/kernels_bench
tests-bin: $(TEST_BIN) $(BENCH_BIN)

# Benchmarks link the library like the tests do (bench/run.sh builds and runs them).
$(BUILD)/bench/bench_adapters: bench/bench_adapters.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

$(BUILD)/bench/bench_decode: bench/bench_decode.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

$(BUILD)/bench/bench_prefix: bench/bench_prefix.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

$(BUILD)/bench/bench_json: bench/bench_json.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

$(BUILD)/bench/bench_kinds: bench/bench_kinds.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

# OFT / BOFT per-token cost: factored rotation vs a dense materialised delta (CPU, seconds).
$(BUILD)/bench/bench_rotate: bench/bench_rotate.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

# CPU matmul paths against the memory roofline (bench/README.md; run by hand).
$(BUILD)/bench/kernels_bench: bench/kernels_bench.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

# Read-bandwidth probe for the decode roofline (tests/gpu/run.sh; --backend cpu in its dry run).
$(BUILD)/bench/bench_gpu: bench/bench_gpu.c $(BUILD)/libpeftd.a $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpeftd.a $(LDLIBS)

# run / test first install what is missing, then re-enter make so pkg-config sees it.
run: deps
	@$(MAKE) --no-print-directory $(JOBS) all
	$(BUILD)/peftd serve --config conf/peftd.json

test: deps venv
	@$(MAKE) --no-print-directory $(JOBS) all tests-bin
	@BUILD=$(BUILD) PYTHON=$(VENV_PY) bash tests/run_tests.sh

# The test virtualenv: rebuilt when tests/requirements.txt changes. A failed pip install
# fails `make venv` (and so `make test`): the SDK tests never silently skip.
venv: $(VENV)/.stamp
$(VENV)/.stamp: $(REQS) | deps
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -q --no-cache-dir -r $(REQS)
	@touch $@

# make install [PREFIX=/usr/local] [DESTDIR=stage] [NOBUILD=1: install what $(BUILD) holds,
# build nothing, leave $(BUILD)/.flags alone]: binaries, the default model, the config
# examples (paths rewritten to the install's), the systemd unit, sysusers.d (the peftd
# system user) and tmpfiles.d entries. tests/integration/test_install.py checks it.
install: $(if $(NOBUILD),,all)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/models $(DESTDIR)$(SYSCONFDIR)/peftd \
	    $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DATADIR)/doc
	install -m 0755 $(BUILD)/peftd $(BUILD)/peftctl $(BUILD)/peftd-loadgen $(DESTDIR)$(BINDIR)/
	cp -R models/stories260K $(DESTDIR)$(DATADIR)/models/
	for f in conf/peftd.json conf/peftd.production.json; do \
	    sed -e 's|"models/stories260K"|"$(DATADIR)/models/stories260K"|' \
	        -e 's|"var/store"|"/var/lib/peftd/store"|' $$f > $(DESTDIR)$(SYSCONFDIR)/peftd/$$(basename $$f); \
	    chmod 0644 $(DESTDIR)$(SYSCONFDIR)/peftd/$$(basename $$f); done
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' deploy/systemd/peftd.service.in \
	    > $(DESTDIR)$(UNITDIR)/peftd.service && chmod 0644 $(DESTDIR)$(UNITDIR)/peftd.service
	install -m 0644 deploy/systemd/peftd.sysusers $(DESTDIR)$(SYSUSERSDIR)/peftd.conf
	install -m 0644 deploy/systemd/peftd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/peftd.conf
	install -m 0644 README.md CHANGELOG.md $(DESTDIR)$(DATADIR)/doc/

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,peftd peftctl peftd-loadgen) \
	    $(DESTDIR)$(UNITDIR)/peftd.service $(DESTDIR)$(SYSUSERSDIR)/peftd.conf $(DESTDIR)$(TMPFILESDIR)/peftd.conf
	rm -rf $(DESTDIR)$(DATADIR)

# The load acceptance test (256 streaming clients for 60 s, > 1 minute): apart from `make test`
# (under `make test` it skips itself unless PEFTD_TEST_LOAD=1).
test-load: deps venv
	@$(MAKE) --no-print-directory $(JOBS) all
	@PEFTD_TEST_LOAD=1 PEFTD_BIN=$(BUILD)/peftd PEFTD_LOADGEN=$(BUILD)/peftd-loadgen $(VENV_PY) tests/integration/test_load.py

# issue 15 acceptance 2: lm-evaluation-harness (local-completions) against peftd with a LoRA
# adapter, its log-likelihoods checked against transformers+peft (tests/lm_eval/run.sh;
# installs lm_eval into build/lm-eval-venv from PyPI the first time, ~2 min; then ~1.5 min).
test-lm-eval: deps
	@$(MAKE) --no-print-directory $(JOBS) all
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash tests/lm_eval/run.sh

# tests/gpu/run.sh's own logic on the CPU (tests/gpu/test_dryrun.sh: GPU_DRYRUN=1 with a tiny
# model, stand-ins for nvidia-smi/nvcc/compute-sanitizer; ~1-2 min with the transformers
# baseline on the CPU where torch is installed): apart from `make test`, run by .ci/run.
test-gpu-dryrun:
	@PEFTD_DEPS_NUMPY=1 bash deploy/install_deps.sh
	@$(MAKE) --no-print-directory $(JOBS) all tests-bin
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash tests/gpu/test_dryrun.sh

# The replication cluster test (a primary + 3 followers on loopback, tests/integration/
# test_cluster.py): apart from `make test` (under it the file skips itself).
test-cluster:
	@PEFTD_DEPS_HAPROXY=1 bash deploy/install_deps.sh
	@$(MAKE) --no-print-directory all
	@PEFTD_TEST_CLUSTER=1 PEFTD_BIN=$(BUILD)/peftd $(PYTHON) tests/integration/test_cluster.py

# libFuzzer targets (tests/fuzz/fuzz_*.c: safetensors and GGUF readers, tokenizer, request parsers),
# built with clang + ASan/UBSan over a clang build of the library, each run FUZZ_SECONDS.
FUZZ_SECONDS ?= 30
# clang's integer checks too, less unsigned wrap-around (hashes and RNGs rely on it) and
# sign changes (every size_t/int mix): truncating conversions, shifts, division by zero.
INT_SAN  := -fsanitize=integer -fno-sanitize=unsigned-integer-overflow,implicit-integer-sign-change,unsigned-shift-base
FUZZ_SAN := -fsanitize=fuzzer-no-link,address,undefined,float-cast-overflow $(INT_SAN) -fno-sanitize-recover=all
fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang OPT=-O1 SANFLAGS="$(FUZZ_SAN)" build-fuzz/libpeftd.a
	@mkdir -p build-fuzz/corpus
	@for f in tests/fuzz/fuzz_*.c; do \
	    n=$$(basename $$f .c); \
	    clang -g -O1 -std=c11 -D_GNU_SOURCE -march=native -fsanitize=fuzzer,address,undefined,float-cast-overflow $(INT_SAN) -fno-sanitize-recover=all -I. $(PKG_CFLAGS) \
	        $$f build-fuzz/libpeftd.a $(LDLIBS) -o build-fuzz/$$n || exit 1; \
	    mkdir -p build-fuzz/corpus/$$n; \
	    case $$n in \
	      fuzz_request) cp tests/fuzz/request_seeds/* build-fuzz/corpus/$$n/ ;; \
	      fuzz_safetensors) cp models/stories260K/model.safetensors build-fuzz/corpus/$$n/ ;; \
	      fuzz_gguf) cp tests/fixtures/gguf/tiny.gguf tests/fixtures/gguf/meta.gguf tests/fixtures/tokenizer_gguf/stories_spm.gguf \
	                    tests/fixtures/tokenizer_gguf/qwen2bl.gguf build-fuzz/corpus/$$n/ ;; \
	      fuzz_tokenizer) printf 'Once upon a time \xf0\x9f\x98\x80 \xe4\xbd\xa0\xe5\xa5\xbd' > build-fuzz/corpus/$$n/seed ;; \
	      fuzz_detokenizer) printf '\003\200A\200\344\200\270\001\220\200\303\200\251\200\377@\001\200\360\200\237\200\230\200\200' > build-fuzz/corpus/$$n/seed ;; \
	    esac; \
	    echo "== $$n ($(FUZZ_SECONDS) s)"; \
	    build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build-fuzz/corpus/$$n > build-fuzz/$$n.log 2>&1; \
	    st=$$?; tail -n 2 build-fuzz/$$n.log; [ $$st -eq 0 ] || { echo "$$n failed: build-fuzz/$$n.log"; exit 1; }; \
	done

# float-cast-overflow is not part of gcc's -fsanitize=undefined: a JSON number cast to an
# int or a float it does not fit is undefined behaviour, so it is checked too.
ASAN_SAN := -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer
asan: deps venv
	@$(MAKE) --no-print-directory $(JOBS) BUILD=build-asan OPT=-O1 \
	    SANFLAGS="$(ASAN_SAN)" all tests-bin
	@BUILD=build-asan PYTHON=$(abspath $(VENV_PY)) PEFTD_SANITIZED=1 \
	    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    bash tests/run_tests.sh

# The CPU pool's dispatch protocol under ThreadSanitizer (tests/unit/test_threadpool.c
# includes the pool's source; it needs nothing else of the library) at the plain build's
# counts (TSAN_STRESS=N scales them); ThreadSanitizer runs it 10-20x slower, so each test
# gets 900 s instead of 120 on a loaded machine.
TSAN_STRESS ?= 1
tsan:
	@mkdir -p build-tsan
	$(CC) -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=thread -I. -o build-tsan/test_threadpool \
	    tests/unit/test_threadpool.c kernels/cpu/cpu_quota.c tests/harness/test.c -lpthread -lm
	@PEFTD_POOL_STRESS=$(TSAN_STRESS) TEST_TIMEOUT=900 TSAN_OPTIONS=halt_on_error=1 build-tsan/test_threadpool

bench: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash bench/run.sh

# Every build directory this Makefile or the test scripts create (tests/gpu/run.sh builds
# in build-gpu). The benchmark models under bench/models are a cache, not build output:
# generating them takes minutes and nothing about them depends on the code or the flags,
# so clean keeps them and distclean removes them.
clean:
	rm -rf $(BUILD) build build-asan build-tsan build-fuzz build-gpu build-cuda bench/results/tmp

distclean: clean
	rm -rf bench/models

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
