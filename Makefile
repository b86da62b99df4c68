# anvil - build
#   make            ./anvil (CPU always; CUDA too when nvcc is found, unless NO_CUDA=1)
#   make test       build and run the whole CPU test suite
#   make asan       the test suite under AddressSanitizer + UBSan (build-asan/)
# Debian packages: libopenblas-dev libyaml-dev libpcre2-dev libjansson-dev libutf8proc-dev zlib1g-dev

CC      ?= gcc
NVCC    ?= nvcc
BUILD   ?= build
OPT     ?= -O3
CFLAGS  += -std=gnu11 $(OPT) -g -Wall -Wextra -Wno-unused-parameter -Werror=implicit-function-declaration \
           -fopenmp -Isrc -MMD -MP
LDLIBS  += -lopenblas -lyaml -lpcre2-8 -ljansson -lutf8proc -lz -lm -lpthread
LDFLAGS += -fopenmp

CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
ifeq ($(NO_CUDA),1)
  HAVE_CUDA :=
else
  HAVE_CUDA := $(if $(CUDA_HOME),1,)
endif

SRC_C   := $(sort $(wildcard src/core/*.c src/io/*.c src/data/*.c src/model/*.c src/backend/*.c \
             src/backend/cpu/*.c src/train/*.c src/eval/*.c src/cli/*.c))
MAIN_C  := src/cli/main.c
LIB_C   := $(filter-out $(MAIN_C),$(SRC_C))
LIB_O   := $(LIB_C:%.c=$(BUILD)/%.o)

CU_SRC := $(sort $(wildcard src/backend/cuda/*.cu))
ifeq ($(CU_SRC),)
  HAVE_CUDA :=
endif
ifeq ($(HAVE_CUDA),1)
  CU_O     := $(CU_SRC:%.cu=$(BUILD)/%.o)
  CUDA_ARCH ?= -gencode=arch=compute_90a,code=sm_90a
  NVFLAGS  += -O3 -std=c++17 $(CUDA_ARCH) -Isrc -lineinfo -Xcompiler -Wall,-Wno-unused-parameter,-fopenmp -MMD -MP
  CFLAGS   += -DANVIL_CUDA=1 -I$(CUDA_HOME)/include
  LDFLAGS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64
  LDLIBS   += -lcudart -lcublasLt -lstdc++
else
  CU_O :=
endif

BIN      ?= anvil
TEST_C   := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_C:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test clean asan format fuzz fuzz-bins
all: $(BIN)

$(BIN): $(BUILD)/src/cli/main.o $(LIB_O) $(CU_O)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB_O) $(CU_O)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test: $(BIN) $(TEST_BIN)
	@ANVIL=$(abspath $(BIN)) bash tests/run_all.sh $(BUILD)

asan:
	$(MAKE) BUILD=build-asan BIN=build-asan/anvil NO_CUDA=1 OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer" \
	        LDFLAGS="-fsanitize=address,undefined -fopenmp" test

# libFuzzer harnesses (clang): build into build-fuzz/, run with tools/fuzz.sh
FUZZ_C := $(sort $(wildcard tests/fuzz/fuzz_*.c))
fuzz:
	$(MAKE) BUILD=build-fuzz NO_CUDA=1 CC=clang OPT="-O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
	        LDFLAGS="-fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined" fuzz-bins

fuzz-bins: $(FUZZ_C:tests/fuzz/%.c=$(BUILD)/fuzz/%)

$(BUILD)/fuzz/%: $(BUILD)/tests/fuzz/%.o $(LIB_O)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD) build-asan build-fuzz anvil

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
