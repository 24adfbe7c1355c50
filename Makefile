# Gatehouse: the two front-door commands are `make run` and `make test`.
SHELL := /bin/bash
APT_PACKAGES := libhiredis-dev libjwt-dev libssl-dev pkg-config redis-server python3 curl
BIN := .build/debug/gatehouse

.PHONY: deps build run test bench clean

## deps: install the Debian packages the build and the tests need (only the missing ones).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	swift build

## run: the example policy (config/gateway.yaml) in front of a sample echo upstream on 127.0.0.1:9001.
run: build
	@python3 scripts/sample_upstream.py 9001 & UP=$$!; trap "kill $$UP 2>/dev/null" EXIT INT TERM; \
	echo; echo "Gatehouse on http://127.0.0.1:8080 (admin on 127.0.0.1:9901). Try:"; \
	echo "  curl -i http://127.0.0.1:8080/api/echo/hello"; \
	echo "  curl -i -X POST -d '{\"a\":1}' http://127.0.0.1:8080/api/echo/items"; \
	echo "  curl -i http://127.0.0.1:8080/nowhere        # 404 problem document"; \
	echo "  curl -s http://127.0.0.1:9901/metrics"; echo "Ctrl-C stops both."; echo; \
	$(BIN) serve --config config/gateway.yaml

## test: install what the tests need, build, run every suite (unit and live).
test: build
	swift build --build-tests
	swift test --skip-build

## bench: the load harness (see benchmarks/README.md).
bench:
	benchmarks/run

clean:
	rm -rf .build
