# Fireflyer's two commands: `make demo` and `make test` (and `make bench`). Each bootstraps the
# machine (installs what is missing), configures and builds, then runs.
BUILD_DIR ?= build
PYTHON ?= python3
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=

# ccache: paths relative to the checkout, so a fresh clone elsewhere still hits the cache.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true
export CCACHE_MAXSIZE ?= 5G

.PHONY: all bootstrap configure build test demo bench soak format clean

all: build

bootstrap:
	@bash scripts/bootstrap.sh

configure: bootstrap
	@bash scripts/configure.sh "$(BUILD_DIR)" "$(BUILD_TYPE)" "$(PYTHON)" $(CMAKE_ARGS)

build: configure
	@cmake --build $(BUILD_DIR)

test: build
	@BUILD_DIR=$(BUILD_DIR) PYTHON=$(PYTHON) bash scripts/test.sh

demo: build
	@BUILD_DIR=$(BUILD_DIR) PYTHON=$(PYTHON) bash scripts/demo.sh

bench: build
	@BUILD_DIR=$(BUILD_DIR) PYTHON=$(PYTHON) bash scripts/bench.sh

# The long simulation run of fs (many more seeds than the tests); scripts/soak.sh says how many.
soak: build
	@BUILD_DIR=$(BUILD_DIR) bash scripts/soak.sh

format:
	@git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	@rm -rf $(BUILD_DIR) python/fireflyer/_C*.so
