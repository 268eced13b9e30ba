package cli

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// TestCompletion runs the bash completion script in bash and completes a
// few command lines with it.
func TestCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	parser, err := kong.New(&Sheep{}, kong.Name("sheep"), kong.Vars{"version": "test"})
	if err != nil {
		t.Fatal(err)
	}
	var script bytes.Buffer
	if err := writeCompletion(&script, parser.Model.Node, "bash"); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"sheep cluster he":           "health",
		"sheep --addr h:1 vdi sn":    "snapshot snapshots",
		"sheep vdi create --cop":     "--copies",
		"sheep node md ":             "info plug unplug --help --addr --timeout --json --key-file --version",
		"sheep daemon --li":          "--listen",
		"sheep nosuchcommand --jso":  "--json",
		"sheep cluster key rotate x": "",
	}
	for line, want := range cases {
		words := strings.Split(line, " ")
		prog := script.String() + "\nCOMP_WORDS=(" + strings.Join(quoteAll(words), " ") + ")\nCOMP_CWORD=" +
			strconv.Itoa(len(words)-1) + "\n_sheep_complete\necho \"${COMPREPLY[*]}\"\n"
		out, err := exec.Command("bash", "-c", prog).CombinedOutput()
		if err != nil {
			t.Fatalf("%q: bash: %v\n%s", line, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("completing %q: %q, want %q", line, got, want)
		}
	}
	var zsh bytes.Buffer
	if err := writeCompletion(&zsh, parser.Model.Node, "zsh"); err != nil || !strings.HasPrefix(zsh.String(), "#compdef sheep\n") {
		t.Errorf("zsh script: %v\n%s", err, zsh.String())
	}
}

func quoteAll(ws []string) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = "'" + w + "'"
	}
	return out
}

// TestEveryCommandHasHelp: every command a user runs has a detailed help
// with an example (kong shows it in COMMAND --help).
func TestEveryCommandHasHelp(t *testing.T) {
	parser, err := kong.New(&Sheep{}, kong.Name("sheep"), kong.Vars{"version": "test"})
	if err != nil {
		t.Fatal(err)
	}
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		leaf := true
		for _, c := range n.Children {
			if c.Type == kong.CommandNode && !c.Hidden {
				leaf = false
				walk(c)
			}
		}
		if !leaf || n.Type != kong.CommandNode {
			return
		}
		hp, ok := n.Target.Addr().Interface().(kong.HelpProvider)
		if !ok {
			t.Errorf("%s has no detailed help", n.FullPath())
			return
		}
		if !strings.Contains(hp.Help(), "\n  sheep ") && !strings.Contains(hp.Help(), "\n  source ") {
			t.Errorf("%s: its help has no example", n.FullPath())
		}
	}
	walk(parser.Model.Node)
	if _, ok := any(&Sheepfs{}).(kong.HelpProvider); !ok {
		t.Errorf("sheepfs has no detailed help")
	}
}
