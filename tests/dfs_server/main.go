// Command dfs runs the FairOS-DFS server from its published Go module.
//
// Without arguments it starts the in-memory development server (`dfs dev`),
// which is what sovrfs's tests and `make dfs-dev` use; with arguments it
// behaves exactly like upstream's `dfs` command.
package main

import (
	"os"

	"github.com/fairdatasociety/fairOS-dfs/cmd/dfs/cmd"
)

func main() {
	if len(os.Args) < 2 {
		os.Args = append(os.Args, "dev")
	}
	cmd.Execute()
}
