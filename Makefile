# phigate: the two commands of the README are `make run` and `make test`.
# Both install what is missing (scripts/install-deps.sh), then build with CMake.

BUILD_DIR ?= build
ASAN_DIR  ?= build-asan
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build run test test-unit test-asan bench fuzz format clean

all: build

deps:
	@sh scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD_DIR) -j$(JOBS)

run: build
	./$(BUILD_DIR)/phigate demo

# Unit tests, CLI tests and cross-checks, then the unit tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer.
test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS)
	@$(MAKE) --no-print-directory test-asan

test-asan: deps
	@cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=Debug -DPHG_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_DIR) -j$(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    ctest --test-dir $(ASAN_DIR) --output-on-failure -j$(JOBS) -L 'unit|cli|e2e'

bench: build
	./$(BUILD_DIR)/phigate bench phi
	./$(BUILD_DIR)/phigate bench keys
	./$(BUILD_DIR)/phigate bench webhook
	@sh scripts/install-bench-deps.sh
	bash bench/load.sh

# libFuzzer builds of the fuzz drivers (clang), then 60 s on each.
FUZZ_SECONDS ?= 60
fuzz: deps
	@dpkg-query -W -f='$${Status}' libclang-rt-14-dev 2>/dev/null | grep -q 'install ok installed' || \
	    { apt-get update -qq && apt-get install -y -qq libclang-rt-14-dev clang >/dev/null; }
	@CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DPHG_SANITIZE=ON -DPHG_LIBFUZZER=ON >/dev/null
	@cmake --build build-fuzz -j$(JOBS)
	@for f in phi_decrypt keyring jsonl base64 fernet config webhook; do \
	    mkdir -p build-fuzz/corpus-$$f && \
	    ./build-fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus-$$f fuzz/corpus/$$f || exit 1; \
	done

format:
	clang-format -i include/*.h include/phigate/*.h src/*.c src/*.h src/cli/*.c src/cli/*.h tests/unit/*.c tests/unit/*.h

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) build-fuzz
