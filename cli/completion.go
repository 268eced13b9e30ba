package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/alecthomas/kong"
)

// CompletionCmd prints a shell completion script.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh" help:"bash or zsh."`
}

// Help is the detailed help.
func (c *CompletionCmd) Help() string {
	return `Load it in the running shell, or install it for every new one:

  source <(sheep completion bash)
  sheep completion bash > /etc/bash_completion.d/sheep
  sheep completion zsh > "${fpath[1]}/_sheep"    # or source it from ~/.zshrc`
}

// Run prints the script for the shell.
func (c *CompletionCmd) Run(k *kong.Context, g *Globals) error {
	return writeCompletion(g.out, k.Model.Node, c.Shell)
}

// writeCompletion writes a completion script for app's commands and flags.
// The script is static: the words offered after each command path are its
// subcommands and the flags of it and its parents (hidden ones left out).
// zsh runs it through bashcompinit.
func writeCompletion(w io.Writer, app *kong.Node, shell string) error {
	name := app.Name
	fn := "_" + strings.NewReplacer("-", "_", ".", "_").Replace(name) + "_complete"
	var b strings.Builder
	if shell == "zsh" {
		fmt.Fprintf(&b, "#compdef %s\nautoload -U +X bashcompinit && bashcompinit\n", name)
	}
	var paths []string
	words := map[string][]string{}
	var walk func(n *kong.Node, path string, flags []string)
	walk = func(n *kong.Node, path string, flags []string) {
		for _, f := range n.Flags {
			if !f.Hidden {
				flags = append(flags, "--"+f.Name)
			}
		}
		var ws []string
		for _, c := range n.Children {
			if c.Hidden || c.Type != kong.CommandNode {
				continue
			}
			ws = append(ws, c.Name)
			walk(c, path+" "+c.Name, flags)
		}
		sort.Strings(ws)
		words[path] = append(ws, flags...)
		paths = append(paths, path)
	}
	walk(app, "", nil)
	sort.Strings(paths)

	fmt.Fprintf(&b, "%s() {\n", fn)
	b.WriteString("\tlocal cur=${COMP_WORDS[COMP_CWORD]} path= w i\n")
	b.WriteString("\tfor ((i = 1; i < COMP_CWORD; i++)); do\n")
	b.WriteString("\t\tw=${COMP_WORDS[i]}\n")
	b.WriteString("\t\tcase \"$path $w\" in\n")
	var cmds []string
	for _, p := range paths {
		if p != "" {
			cmds = append(cmds, fmt.Sprintf("%q", p))
		}
	}
	if len(cmds) > 0 {
		fmt.Fprintf(&b, "\t\t%s) path=\"$path $w\" ;;\n", strings.Join(cmds, "|"))
	}
	b.WriteString("\t\tesac\n\tdone\n")
	b.WriteString("\tlocal words=\n\tcase \"$path\" in\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "\t%q) words=%q ;;\n", p, strings.Join(words[p], " "))
	}
	b.WriteString("\tesac\n")
	b.WriteString("\tCOMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n}\n")
	fmt.Fprintf(&b, "complete -o default -F %s %s\n", fn, name)
	_, err := io.WriteString(w, b.String())
	return err
}
