# Everything a person or CI runs. `make help` lists the targets.
# uv comes from PyPI when it is not installed; Go must be on PATH (it builds the local cluster).

UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export PYTHONPATH := tools:operator

.DEFAULT_GOAL := help

.PHONY: help setup demo demo-down bench bench-failover bench-memory bench-pods bench-wire crash soak chart-docs lint test test-unit binaries cluster cluster-down cluster-status gen gen-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## install uv if missing and the locked Python environment
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

demo: setup ## Sidecarless as pods on a local cluster with kubelet nodes (MODE=embedded|central): a pod mounts a volume, expand, snapshot, restore, delete (KEEP=1 keeps it)
	$(UV) run python tools/demo.py $(if $(KEEP),--keep) $(if $(MODE),--mode $(MODE))

bench: binaries ## the sidecars and Sidecarless side by side: N (100) claims, DRIVERS (1), ROUNDS (3), SETTINGS, SCENARIO (all), SIDES (sidecars,sidecarless; sharded: 3 sharded replicas)
	$(UV) run python -m bench.side_by_side --n $(or $(N),100) --drivers $(or $(DRIVERS),1) --rounds $(or $(ROUNDS),3) \
		--settings $(or $(SETTINGS),defaults,qps100) --scenario $(or $(SCENARIO),all) $(if $(PLOT),--plot $(PLOT)) $(if $(OUT),--out $(OUT)) \
		$(if $(SIDES),--sides $(SIDES))

bench-failover: binaries ## a replica killed: how long DRIVERS (5) wait, one leader against sharded replicas, ROUNDS (3)
	$(UV) run python -m bench.failover --drivers $(or $(DRIVERS),5) --rounds $(or $(ROUNDS),3)

soak: binaries ## Sidecarless alone through waves of CLAIMS (1000) claims for MINUTES (10); RSS at start and end
	$(UV) run python -m bench.soak --claims $(or $(CLAIMS),1000) --minutes $(or $(MINUTES),10)

crash: binaries ## only the crash-anywhere suite (SCENARIOS=provision,snapshot picks operations); figures in bench/results/crash.json
	SIDECARLESS_CRASH_SCENARIOS=$(SCENARIOS) SIDECARLESS_CRASH_REPORT=bench/results/crash.json $(UV) run pytest tests/e2e/test_crash_anywhere.py -s -q

bench-memory: binaries ## memory at SIZES (1000,5000,10000) volumes, each with a claim and a snapshot: the sidecars, Sidecarless, 3 sharded replicas
	$(UV) run python -m bench.memory_curve --sizes $(or $(SIZES),1000,5000,10000) --drivers $(or $(DRIVERS),1)

bench-pods: binaries ## resizer memory with PODS Pods (default 5000): Sidecarless beside external-resizer
	$(UV) run python -m bench.pods_memory --pods $(or $(PODS),5000)

bench-wire: binaries ## kube-apiserver CPU for the same reads and watched writes in JSON and in protobuf
	$(UV) run python -m bench.wire_format

chart-docs: setup ## regenerate charts/sidecarless/README.md from the documented values
	$(UV) run python tools/chart_readme.py

demo-down: setup ## stop a demo left running with KEEP=1
	$(UV) run python -m devcluster down --dir $${SIDECARLESS_CACHE:-$$HOME/.cache/sidecarless}/clusters/demo

lint: setup ## ruff, ruff format --check, mypy --strict, the import layers (import-linter), hadolint
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy
	$(UV) run lint-imports
	$(UV) run hadolint --failure-threshold info Dockerfile

binaries: setup ## build (or find cached) Kubernetes, etcd, containerd, runc, CNI plugins, pause, promtool and the CSI drivers
	$(UV) run python -m devcluster build

test: lint setup ## the whole suite: lint, then unit, csi, cluster, e2e and node tests on local clusters
	$(UV) run python -m devcluster build --sidecars=without
	$(UV) run pytest

test-unit: setup ## only the pure unit tests (no cluster, no drivers)
	$(UV) run pytest tests/unit

cluster: binaries ## start a local cluster in ~/.cache/sidecarless/clusters/default and leave it running (NODES=2: real kubelet nodes)
	$(UV) run python -m devcluster up $(if $(NODES),--real-nodes $(NODES))

cluster-down: setup ## stop the cluster `make cluster` started (by PID)
	$(UV) run python -m devcluster down

cluster-status: setup ## show the local cluster's processes
	$(UV) run python -m devcluster status

gen: setup ## regenerate the generated protobuf code from the pinned protos (CSI, kubelet plugin registration)
	$(UV) run python tools/gen_csi_proto.py

gen-check: setup ## fail if the generated protobuf code is stale
	$(UV) run python tools/gen_csi_proto.py --check
