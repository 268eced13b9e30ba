// Command sheep is the sheepfs daemon and admin tool: `sheep daemon` runs a
// node; `sheep cluster|node|vdi ...` manage the cluster through any node.
package main

import (
	"os"

	"github.com/sheepfs/sheepfs/cli"
)

func main() { os.Exit(cli.Main("sheep", &cli.Sheep{}, os.Args[1:], os.Stdout)) }
