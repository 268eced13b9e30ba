package cli

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// ClusterKeyCmd groups the key commands.
type ClusterKeyCmd struct {
	Info   KeyInfoCmd   `cmd:"" help:"List each node's keys (IDs), the one in use first."`
	Rotate KeyRotateCmd `cmd:"" help:"Roll the cluster key in FILE (from sheep keygen) through the running cluster: every node accepts it, then uses it, then drops the old ones. Give clients the new key file first (they read it again when it changes)."`
}

// KeyInfoCmd lists the nodes' keys.
type KeyInfoCmd struct{}

// Run prints the keys of every node.
func (KeyInfoCmd) Run(g *Globals) error {
	nodes, err := g.keyNodes(false)
	if err != nil {
		return err
	}
	var infos []proto.KeyInfo
	for _, n := range nodes {
		var ki proto.KeyInfo
		if err := g.adminAt(n.Addr, auth.RoleClient, proto.AdminRequest{Cmd: proto.AdminKeyInfo}, &ki); err != nil {
			ki = proto.KeyInfo{Node: n.ID, Keys: []string{"(" + err.Error() + ")"}}
		}
		infos = append(infos, ki)
	}
	if g.JSON {
		return g.printJSON(infos)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tKEY IN USE\tALSO ACCEPTED")
	for _, ki := range infos {
		use, also := "-", "-"
		if len(ki.Keys) > 0 {
			use = ki.Keys[0]
		}
		if len(ki.Keys) > 1 {
			also = strings.Join(ki.Keys[1:], ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ki.Node, use, also)
	}
	return tw.Flush()
}

// KeyRotateCmd rolls a new key through the cluster.
type KeyRotateCmd struct {
	File string `arg:"" help:"The new cluster key (sheep keygen > FILE)." type:"existingfile"`
}

// Run carries out the roll: install on every node, then use on every
// node, then drop the others on every node. Every step is idempotent, so
// running the command again after a failure resumes it.
func (c *KeyRotateCmd) Run(g *Globals) error {
	nk, err := auth.Load(c.File)
	if err != nil {
		return err
	}
	if !nk.IsCluster() || len(nk.All()) != 1 {
		return errs.E(errs.Invalid, "%s must hold exactly one cluster key (sheep keygen > %s)", c.File, c.File)
	}
	key := nk.Current()
	if !g.keys.IsCluster() {
		return errs.E(errs.Denied, "a key roll needs the cluster key in use; %s holds a client key", g.keys.Source())
	}
	// This command talks to nodes that present either key meanwhile.
	if !slices.ContainsFunc(g.keys.All(), func(k *auth.Key) bool { return k.ID() == key.ID() }) {
		g.keys.Set(append(g.keys.All(), key))
	}
	nodes, err := g.keyNodes(true)
	if err != nil {
		return err
	}
	step := func(what string, req func(proto.KeyInfo) []proto.AdminRequest) error {
		for _, n := range nodes {
			var ki proto.KeyInfo
			if err := g.adminAt(n.Addr, auth.RolePeer, proto.AdminRequest{Cmd: proto.AdminKeyInfo}, &ki); err != nil {
				return errs.E(errs.KindOf(err), "%s on node %s: %w (run the command again to resume)", what, n.ID, err)
			}
			for _, r := range req(ki) {
				if err := g.adminAt(n.Addr, auth.RolePeer, r, &ki); err != nil {
					return errs.E(errs.KindOf(err), "%s on node %s: %w (run the command again to resume)", what, n.ID, err)
				}
			}
			if !g.JSON {
				fmt.Fprintf(g.out, "%-8s %-12s keys %s\n", what, n.ID, strings.Join(ki.Keys, ","))
			}
		}
		return nil
	}
	if err := step("accept", func(proto.KeyInfo) []proto.AdminRequest {
		return []proto.AdminRequest{{Cmd: proto.AdminKeyInstall, Name: key.Line()}}
	}); err != nil {
		return err
	}
	if err := step("use", func(proto.KeyInfo) []proto.AdminRequest {
		return []proto.AdminRequest{{Cmd: proto.AdminKeyUse, Name: key.ID()}}
	}); err != nil {
		return err
	}
	if err := step("drop", func(ki proto.KeyInfo) []proto.AdminRequest {
		var out []proto.AdminRequest
		for _, id := range ki.Keys {
			if id != key.ID() {
				out = append(out, proto.AdminRequest{Cmd: proto.AdminKeyDrop, Name: id})
			}
		}
		return out
	}); err != nil {
		return err
	}
	if !g.JSON {
		fmt.Fprintf(g.out, "every node uses key %s now; clients need %s (a client key: sheep keygen --client --key-file %s)\n", key.ID(), c.File, c.File)
	}
	return nil
}

// keyNodes returns the cluster's members; with allUp, an error unless
// every one is up (a roll must reach every node, or the one it missed
// could not talk to the others afterwards).
func (g *Globals) keyNodes(allUp bool) ([]proto.NodeInfo, error) {
	var nodes []proto.NodeInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminNodeList}, &nodes); err != nil {
		return nil, err
	}
	if allUp {
		for _, n := range nodes {
			if n.State != "up" {
				return nil, errs.E(errs.NotReady, "node %s is %s: a key roll needs every member up", n.ID, n.State)
			}
		}
	}
	return nodes, nil
}
