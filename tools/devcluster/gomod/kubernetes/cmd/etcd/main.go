// Command etcd runs the etcd server at the version k8s.io/kubernetes pins, so the
// local cluster's datastore matches the release it serves.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
