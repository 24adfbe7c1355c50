# Gatehouse: the two front-door commands are `make run` and `make test`.
SHELL := /bin/bash
APT_PACKAGES := libhiredis-dev libjwt-dev libssl-dev pkg-config redis-server redis-tools python3 python3-pip curl openssl
BIN := .build/debug/gatehouse

.PHONY: deps build run test fuzz bench clean

## deps: install the Debian packages the build and the tests need (only the missing ones).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@# The live WebSocket tests' peers: the Python `websockets` library, 13 or later (its asyncio API).
	@python3 -c "import websockets.asyncio.server" 2>/dev/null || python3 -m pip install -q --user "websockets>=13" \
	  || python3 -m pip install -q --user --break-system-packages "websockets>=13"
	@# The live tracing tests' OTLP receiver decodes spans with the official protobuf definitions.
	@python3 -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" 2>/dev/null \
	  || python3 -m pip install -q --user "opentelemetry-proto>=1.20" \
	  || python3 -m pip install -q --user --break-system-packages "opentelemetry-proto>=1.20"

build: deps
	swift build

## run: the example policy (config/gateway.yaml) in front of a sample echo upstream on 127.0.0.1:9001.
run: build
	@export GATEHOUSE_DEV_SECRET=$${GATEHOUSE_DEV_SECRET:-dev-only-secret-change-me-0123456789abcdef}; \
	export GATEHOUSE_ADMIN_TOKEN=$${GATEHOUSE_ADMIN_TOKEN:-dev-admin-token}; \
	python3 scripts/sample_upstream.py 9001 & UP=$$!; trap "kill $$UP 2>/dev/null" EXIT INT TERM; \
	TOKEN=$$($(BIN) token --tenant acme --sub alice --roles admin --scope echo:admin --secret-env GATEHOUSE_DEV_SECRET); \
	echo; echo "Gatehouse on http://127.0.0.1:8080 (admin on 127.0.0.1:9901). Try:"; \
	echo "  curl -i http://127.0.0.1:8080/public/hello                 # no auth needed"; \
	echo "  curl -i http://127.0.0.1:8080/api/echo/hello               # 401: a token or API key is required"; \
	echo "  curl -i -H 'Authorization: Bearer $$TOKEN' http://127.0.0.1:8080/api/echo/hello"; \
	echo "  curl -i -H 'X-API-Key: gh_dev_globex_key' http://127.0.0.1:8080/api/echo/items"; \
	echo "  curl -i -H 'X-API-Key: gh_dev_globex_key' -H 'Accept-Version: 2' http://127.0.0.1:8080/api/echo/items   # route echo-v2"; \
	echo "  curl -i -H 'X-API-Key: gh_dev_globex_key' http://127.0.0.1:8080/api/admin/x   # 403 forbidden (no role)"; \
	echo "  curl -i -H 'Authorization: Bearer $$TOKEN' http://127.0.0.1:8080/api/admin/x   # role admin, scope echo:admin"; \
	echo "  curl -i -X POST -H 'X-API-Key: gh_dev_globex_key' -d '{}' http://127.0.0.1:8080/api/echo/items  # audited"; \
	echo "  .build/debug/gatehouse audit verify var/audit.jsonl        # the audit log's hash chain"; \
	echo "  curl -s http://127.0.0.1:9901/metrics"; echo "Ctrl-C stops both."; echo; \
	$(BIN) serve --config config/gateway.yaml

## test: install what the tests need, build, run every suite (unit and live), then the parser's fuzz target.
test: build
	swift build --build-tests
	timeout 1500 swift test --skip-build   # a hung test fails the run instead of stalling CI
	$(MAKE) fuzz FUZZ_SECONDS=$${FUZZ_SECONDS:-60}

## fuzz: libFuzzer on the HTTP/1 request and response parsers and the PROXY header parser (Sources/HTTPWire) for FUZZ_SECONDS (default 300), seeded from
## fuzz/corpus; a finding fails the run and leaves the input in .build/fuzz/.
FUZZ_SECONDS ?= 300
fuzz:
	@mkdir -p .build/fuzz/corpus
	swiftc -parse-as-library -sanitize=fuzzer,address -O Sources/HTTPWire/*.swift fuzz/http1_parsers.swift \
	  -o .build/fuzz/http1-parsers 2> >(grep -v "Cannot export local symbol" >&2)
	cp fuzz/corpus/http1/* .build/fuzz/corpus/
	cd .build/fuzz && timeout $$(( $(FUZZ_SECONDS) + 120 )) ./http1-parsers -max_total_time=$(FUZZ_SECONDS) \
	  -print_final_stats=1 -artifact_prefix=./ corpus 2>&1 | grep -E "^stat::|ERROR|crash|precondition|Base64" ; \
	  test $${PIPESTATUS[0]} -eq 0

## bench: the load harness (see benchmarks/README.md).
bench:
	benchmarks/run

clean:
	rm -rf .build
