package server

import (
	"slices"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// changeKeys carries out one step of a key roll on this node (cmd is an
// AdminKey* request, arg its key line or key ID) and rewrites the node's
// key file. The new set takes effect at the next handshake on every port,
// and at once for gossip. Steps are idempotent: a roll that is run again
// after a failure midway changes nothing that is done.
func (n *Node) changeKeys(cmd, arg string) (proto.KeyInfo, error) {
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	ks := n.cfg.Keys
	list := ks.All()
	find := func(id string) int {
		return slices.IndexFunc(list, func(k *auth.Key) bool { return k.ID() == id })
	}
	var next []*auth.Key
	switch cmd {
	case proto.AdminKeyInfo:
	case proto.AdminKeyInstall:
		k, err := auth.ParseLine(arg)
		if err != nil {
			return proto.KeyInfo{}, err
		}
		if !k.IsCluster() {
			return proto.KeyInfo{}, errs.E(errs.Invalid, "a node needs a cluster key, not a client key")
		}
		if find(k.ID()) < 0 {
			if len(list) >= 4 {
				return proto.KeyInfo{}, errs.E(errs.Invalid, "node %s holds %d keys already: drop one first", n.id, len(list))
			}
			next = append(slices.Clone(list), k)
		}
	case proto.AdminKeyUse:
		i := find(arg)
		if i < 0 {
			return proto.KeyInfo{}, errs.E(errs.NotFound, "node %s does not hold key %s: install it first", n.id, arg)
		}
		if i > 0 {
			next = append([]*auth.Key{list[i]}, slices.Delete(slices.Clone(list), i, i+1)...)
		}
	case proto.AdminKeyDrop:
		i := find(arg)
		switch {
		case i == 0:
			return proto.KeyInfo{}, errs.E(errs.Invalid, "key %s is the one node %s uses: use another first", arg, n.id)
		case i > 0:
			next = slices.Delete(slices.Clone(list), i, i+1)
		}
	default:
		return proto.KeyInfo{}, errs.E(errs.Invalid, "unknown key command %q", cmd)
	}
	if next != nil {
		ks.Set(next)
		if err := ks.Save(); err != nil {
			ks.Set(list)
			return proto.KeyInfo{}, err
		}
		n.log.Warn().Str("step", cmd).Strs("keys", keyIDs(next)).Str("file", ks.Source()).Msg("cluster keys changed")
		list = next
	}
	return proto.KeyInfo{Node: n.id, Keys: keyIDs(list)}, nil
}

func keyIDs(list []*auth.Key) []string {
	out := make([]string, len(list))
	for i, k := range list {
		out[i] = k.ID()
	}
	return out
}
