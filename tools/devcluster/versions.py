"""Pinned versions of everything the local cluster builds from the Go module proxy."""

KUBERNETES = "v1.36.3"  # with etcd v3.6.8, the version this release's go.mod pins
CSI_TEST = "v4.2.0"  # the last csi-test release with cmd/mock-driver (CSI spec v1.3.0)
SNAPSHOTTER_CLIENT = "v8.7.0"
EXTERNAL_RESIZER = (
    "v2.3.0"  # the real sidecar, for benchmarks side by side  # external-snapshotter/client/v8: the VolumeSnapshot CRDs
)
# csi-driver-host-path is not built: this workplace's module proxy refuses every version
# of github.com/kubernetes-csi/csi-driver-host-path (HTTP 403). See docs/devcluster.md.

CSI_TEST_MODULE = "github.com/kubernetes-csi/csi-test/v4"
EXTERNAL_RESIZER_MODULE = "github.com/kubernetes-csi/external-resizer/v2"
SNAPSHOTTER_CLIENT_MODULE = "github.com/kubernetes-csi/external-snapshotter/client/v8"
