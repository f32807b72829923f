# mpiformer: a distributed Transformer trainer in C for MPI clusters.
#
#   make            build bin/mpiformer and the test programs
#   make deps       install the Debian packages that are missing (idempotent)
#   make test       deps + build + every test in tests/ (WERROR=1 in CI), the layout tests
#                   also in a DEBUG=1 tree, $(BUILD)-debug (tests/test_debug_build.sh)
#   make demo       deps + build + Bible data + a short 2-rank training + BLEU + plot
#   make bench      figures, not pass/fail
#   make study      the small-scale warm-up study (gradnorm, translation, classification)
#   make report     runs/ -> runs/report.md and PNG plots
#
# Switches: V=1 (echo commands), WERROR=1, DEBUG=1 (-O0, and the collective-argument checks
# of debug.h), SANITIZER=address|undefined, BUILD=dir (objects go there; default build/),
# ONEDNN=0|1 (link oneDNN; default: when /usr/include/dnnl.h exists).

BUILD     ?= build
BIN       ?= bin
CC        := mpicc
PKGS      := ompi hdf5-openmpi scalapack-openmpi openblas
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS  := -std=c11 -D_GNU_SOURCE -g -Wall -Wextra -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wno-unused-parameter -MMD -MP -Iinclude
ifeq ($(DEBUG),1)
  CFLAGS += -O0 -DMPIFORMER_DEBUG=1
else
  CFLAGS += -O3 -march=x86-64-v3 -fno-math-errno
endif
ifeq ($(WERROR),1)
  CFLAGS += -Werror
endif
ifneq ($(SANITIZER),)
  CFLAGS += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=$(SANITIZER)
endif
CFLAGS += $(PKG_CFLAGS)
LIBS   := $(PKG_LIBS) -lm
# oneDNN (libdnnl-dev, no pkg-config file in Debian): linked when its header is there, or
# forced off with ONEDNN=0 (then gemm=onednn is refused and gemm=auto means OpenBLAS).
ONEDNN ?= $(if $(wildcard /usr/include/dnnl.h),1,0)
ifeq ($(ONEDNN),1)
  CFLAGS += -DMPIFORMER_ONEDNN=1
  LIBS   += -ldnnl -lgomp
endif

ifneq ($(V),1)
  Q := @
endif

LIB_SRCS  := $(filter-out src/main.c,$(wildcard src/*.c))
LIB_OBJS  := $(LIB_SRCS:src/%.c=$(BUILD)/%.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard bench/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps test demo bench study report clean format
all: $(BIN)/mpiformer $(TEST_BINS) $(BENCH_BINS)

$(BUILD)/%.o: src/%.c | $(BUILD)
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmpiformer.a: $(LIB_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN)/mpiformer: $(BUILD)/main.o $(BUILD)/libmpiformer.a | $(BIN)
	@[ "$(V)" = 1 ] || echo "  LD  $@"
	$(Q)$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

$(BUILD)/tests/%: tests/%.c tests/harness.h $(BUILD)/libmpiformer.a | $(BUILD)
	@mkdir -p $(BUILD)/tests
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) $(CFLAGS) -Itests $< $(BUILD)/libmpiformer.a $(LDFLAGS) $(LIBS) -o $@

$(BUILD)/bench/%: bench/%.c $(BUILD)/libmpiformer.a | $(BUILD)
	@mkdir -p $(BUILD)/bench
	@[ "$(V)" = 1 ] || echo "  CC  $<"
	$(Q)$(CC) $(CFLAGS) $< $(BUILD)/libmpiformer.a $(LDFLAGS) $(LIBS) -o $@

$(BUILD) $(BIN):
	@mkdir -p $@

deps:
	@scripts/deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) WERROR=$(WERROR) tests/run_tests.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bench/run_bench.sh

study: deps
	@$(MAKE) --no-print-directory all
	@scripts/study.sh

report:
	@scripts/report.sh

clean:
	rm -rf $(BUILD) $(BUILD)-debug $(BIN)

format:
	clang-format -i src/*.c include/*.h tests/*.c tests/*.h

-include $(LIB_OBJS:.o=.d) $(BUILD)/main.d
