// Command sheepfs mounts a sheep cluster as a filesystem: VDIs are files
// under vdi/, cluster status under cluster/ and node/.
package main

import (
	"os"

	"github.com/sheepfs/sheepfs/cli"
)

func main() { os.Exit(cli.Main("sheepfs", &cli.Sheepfs{}, os.Args[1:], os.Stdout)) }
