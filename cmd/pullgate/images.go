package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/rewrite"
)

const imagesUsage = `usage: pullgate images [--normalize] [FILE...]

Lists the container images in Kubernetes manifests, YAML or JSON (helm template, kubectl get -o yaml): one per
line, each once, in the order first seen across the files. Standard input is read when no FILE is given and
for a FILE of "-". On any error nothing is listed and the exit status is 1, so that

  helm template ... | pullgate images | xargs pullgate scan

never scans half a list.

flags:
`

// runImages is `pullgate images [--normalize] [FILE...]`: the container images in Kubernetes YAML, one per line.
func runImages(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	set := commandFlags("pullgate images", imagesUsage, stderr)
	normalize := set.Bool("normalize", false, `print references fully qualified ("nginx" as docker.io/library/nginx:latest)`)
	if err := set.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	files := set.Args()
	if len(files) == 0 {
		files = []string{"-"}
	}
	var list []string
	seen := map[string]bool{}
	for _, name := range files {
		images, err := imagesOf(name, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate images: %v\n", err)
			return 1
		}
		for _, img := range images {
			if *normalize {
				ref, err := names.ParseReference(img)
				if err != nil { // rewrite.Images lists only references that parse
					fmt.Fprintf(stderr, "pullgate images: %s: %v\n", name, err)
					return 1
				}
				img = ref.String()
			}
			if !seen[img] {
				seen[img] = true
				list = append(list, img)
			}
		}
	}
	w := bufio.NewWriter(stdout)
	for _, img := range list {
		fmt.Fprintln(w, img)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(stderr, "pullgate images: writing: %v\n", err)
		return 1
	}
	return 0
}

// imagesOf returns the images in the file called name, or in stdin when name is "-". Errors name the file.
func imagesOf(name string, stdin io.Reader) ([]string, error) {
	if name == "-" {
		images, err := rewrite.Images(stdin)
		if err != nil {
			return nil, fmt.Errorf("standard input: %w", err)
		}
		return images, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	images, err := rewrite.Images(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return images, nil
}
